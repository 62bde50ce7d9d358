"""Handlers, the manager's calls and bad input, against a real server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from sanic import Blueprint, Request, Sanic, json
from sanic_ext import Extend
from websockets.frames import Opcode

from sanic_ws_ext import (
    Accept,
    Connection,
    Envelope,
    ErrorCode,
    MessageError,
    WSExtension,
    WSHandlers,
)
from sanic_ws_ext.testing import LiveServer, WSTestClient, serve

from . import chat_module
from .conftest import units
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]


class Recorder:
    """What the server-side hooks saw, with an event to await each kind."""

    def __init__(self) -> None:
        self.disconnected: list[Connection] = []
        self.errors: list[tuple[str, Exception]] = []
        self.changed = asyncio.Event()

    async def wait(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()

    def note(self) -> None:
        self.changed.set()


def build(make_app: AppFactory, **config: Any) -> tuple[Sanic[Any, Any], Recorder]:
    app = make_app(**config)
    Extend(app).register(WSExtension)
    rec = Recorder()
    root = WSHandlers(app)
    bp = Blueprint("room")
    room = WSHandlers(bp)
    app.blueprint(bp)
    app.blueprint(chat_module.bp)
    order: list[str] = []

    @root.verify
    async def identify(request: Request) -> Accept | None:
        user = request.args.get("user")
        return Accept(user=user, meta={"via": "query"}) if user else None

    @root.on_connect
    async def welcome(conn: Connection) -> None:
        await conn.send("welcome", {"id": conn.id, "worker": conn.worker})

    @root.on_message
    async def every(conn: Connection, msg: Envelope | bytes) -> None:
        order.append("any:" + (msg.type if isinstance(msg, Envelope) else "binary"))

    @room.on("order")
    async def report_order(conn: Connection, msg: Envelope) -> None:
        order.append("typed:order")
        await conn.send("order", list(order))
        order.clear()

    @room.on("whoami")
    async def whoami(conn: Connection, msg: Envelope) -> None:
        await conn.send(
            "you",
            {
                "id": conn.id,
                "user": conn.user,
                "meta": conn.meta,
                "remote": conn.remote,
                "headers": conn.headers,
                "worker": conn.worker,
                "connected_at": conn.connected_at,
            },
        )

    @room.on("seq")
    async def seq(conn: Connection, msg: Envelope) -> None:
        await asyncio.sleep(0)  # a handler that awaits must not reorder
        conn.meta.setdefault("seq", []).append(msg.data)
        if msg.data == "end":
            await conn.send("seq", conn.meta["seq"])

    @room.on("boom")
    async def boom(conn: Connection, msg: Envelope) -> None:
        raise RuntimeError("handler bug")

    @room.on("refuse")
    async def refuse(conn: Connection, msg: Envelope) -> None:
        raise MessageError("not_allowed", "you may not")

    @room.on_binary
    async def echo_bytes(conn: Connection, data: bytes) -> None:
        await conn.send(raw=data[::-1])

    @root.on_error
    async def on_error(conn: Connection, exc: Exception) -> None:
        rec.errors.append((conn.id, exc))
        rec.note()

    @root.on_disconnect
    async def gone(conn: Connection) -> None:
        rec.disconnected.append(conn)
        rec.note()

    @app.post("/notify")
    async def notify(request: Request) -> Any:
        body = request.json
        ws = request.app.ctx.ws
        if body["kind"] == "send":
            await ws.send(body["to"], "note", body["data"])
        elif body["kind"] == "broadcast":
            await ws.broadcast("note", body["data"], exclude=body.get("exclude", []))
        elif body["kind"] == "binary":
            await ws.broadcast(raw=bytes(body["data"], "utf-8"))
        elif body["kind"] == "text":
            await ws.send(body["to"], raw=body["data"])
        elif body["kind"] == "disconnect":
            await ws.disconnect(body["to"], body["code"], body["reason"])
        return json({"count": await ws.count()})

    return app, rec


async def connect(
    server: LiveServer, query: str = "", **kw: Any
) -> tuple[WSTestClient, str]:
    client = await WSTestClient.connect(server.ws_url() + query, **kw)
    welcome = await client.expect("welcome")
    return client, welcome.data["id"]


async def post(server: LiveServer, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.post(server.url("/notify"), json=body)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


async def test_handlers_from_app_blueprints_and_modules(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        a, a_id = await connect(server)
        b, _ = await connect(server)
        # Catch-all runs before typed handlers, for every message.
        await a.send("order")
        assert (await a.expect("order")).data == ["any:order", "typed:order"]
        # A handler from another module's blueprint, broadcasting with exclude.
        await a.send("chat.say", "hello")
        said = await b.expect("chat.said")
        assert said.data == {"from": a_id, "text": "hello"}
        assert isinstance(said.timestamp, int)
        await a.send("order")
        assert (await a.expect("order")).data == [
            "any:chat.say",
            "any:order",
            "typed:order",
        ]
        await a.close()
        await b.close()


async def test_connection_metadata(make_app: AppFactory) -> None:
    app, _ = build(make_app, WS_KEEP_HEADERS=["x-trace", "user-agent"])
    async with serve(app) as server:
        client, conn_id = await connect(
            server, "?user=alice", headers={"X-Trace": "t-1", "X-Secret": "s"}
        )
        await client.send("whoami")
        you = (await client.expect("you")).data
        # 32 hex characters: this process's key (8), then 96 random bits.
        assert you["id"] == conn_id and re.fullmatch("[0-9a-f]{32}", conn_id)
        assert conn_id[:8] == app.ctx.ws._membership.key
        assert you["user"] == "alice"
        assert you["meta"] == {"via": "query"}
        assert you["remote"] == "127.0.0.1"
        assert you["headers"]["x-trace"] == "t-1"
        assert "x-secret" not in you["headers"]
        assert you["worker"] == "main"
        conn = app.ctx.ws.get(conn_id)
        assert conn is not None and conn.user == "alice"
        assert abs(you["connected_at"] - conn.connected_at) < 1e-6
        await client.close()


async def test_send_broadcast_exclude_count(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        clients = [await connect(server) for _ in range(3)]
        (a, a_id), (b, b_id), (c, c_id) = clients
        assert (await post(server, {"kind": "send", "to": b_id, "data": 1}))[
            "count"
        ] == 3
        assert (await b.expect("note")).data == 1
        await post(server, {"kind": "broadcast", "data": 2, "exclude": [a_id]})
        assert (await b.expect("note")).data == 2
        assert (await c.expect("note")).data == 2
        # a got nothing: the next note it sees is the one after.
        await post(server, {"kind": "send", "to": a_id, "data": 3})
        assert (await a.expect("note")).data == 3
        await post(server, {"kind": "text", "to": c_id, "data": "plain text"})
        assert await c.connection.recv() == "plain text"
        # Unknown ids are ignored, not errors.
        await post(server, {"kind": "send", "to": "nobody", "data": 4})
        assert await app.ctx.ws.count() == 3
        for client, _ in clients:
            await client.close()


async def test_binary_frames(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        a, _ = await connect(server)
        b, _ = await connect(server)
        await a.send_raw(b"\x00\x01\x02")
        assert await a.recv() == b"\x02\x01\x00"
        await post(server, {"kind": "binary", "data": "bytes to all"})
        assert await a.recv() == b"bytes to all"
        assert await b.recv() == b"bytes to all"
        await a.send("order")
        assert (await a.expect("order")).data == [
            "any:binary",
            "any:order",
            "typed:order",
        ]
        await a.close()
        await b.close()


async def test_disconnect_by_id(make_app: AppFactory) -> None:
    app, rec = build(make_app)
    async with serve(app) as server:
        a, a_id = await connect(server)
        b, _ = await connect(server)
        await post(
            server, {"kind": "disconnect", "to": a_id, "code": 4001, "reason": "kicked"}
        )
        assert await a.wait_closed() == (4001, "kicked")
        await rec.wait(lambda: len(rec.disconnected) == 1)
        gone = rec.disconnected[0]
        assert (gone.id, gone.close_code, gone.close_reason) == (a_id, 4001, "kicked")
        assert app.ctx.ws.get(a_id) is None
        assert await app.ctx.ws.count() == 1
        await b.send("order")
        await b.expect("order")
        await b.close()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", ErrorCode.INVALID_JSON),
        ('["a list"]', ErrorCode.INVALID_ENVELOPE),
        ('{"data": 1}', ErrorCode.INVALID_ENVELOPE),
        ('{"type": 7}', ErrorCode.INVALID_ENVELOPE),
    ],
)
async def test_bad_input_gets_error_frame(
    make_app: AppFactory, raw: str, code: str
) -> None:
    app, rec = build(make_app)
    async with serve(app) as server:
        a, a_id = await connect(server)
        b, _ = await connect(server)
        await a.send_raw(raw)
        error = await a.recv()
        assert isinstance(error, Envelope) and error.type == "error"
        assert error.data["code"] == code and error.data["reason"]
        await rec.wait(lambda: len(rec.errors) == 1)
        conn_id, exc = rec.errors[0]
        assert conn_id == a_id and isinstance(exc, MessageError) and exc.code == code
        # The connection, other clients and the server carry on.
        await a.send("order")
        await a.expect("order")
        await b.send("order")
        await b.expect("order")
        c, _ = await connect(server)
        await c.close()
        await a.close()
        await b.close()


async def test_failing_handler_reaches_error_hook_only(make_app: AppFactory) -> None:
    app, rec = build(make_app)
    async with serve(app) as server:
        a, a_id = await connect(server)
        await a.send("boom")
        error = await a.expect("error")
        assert error.data == {
            "code": ErrorCode.HANDLER_ERROR,
            "reason": "internal error",
        }
        await rec.wait(lambda: len(rec.errors) == 1)
        assert isinstance(rec.errors[0][1], RuntimeError)
        await a.send("refuse")
        error = await a.expect("error")
        assert error.data == {"code": "not_allowed", "reason": "you may not"}
        await a.send("order")
        assert "typed:order" in (await a.expect("order")).data
        assert app.ctx.ws.get(a_id) is not None
        await a.close()


async def test_messages_of_one_connection_run_in_order(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        a, _ = await connect(server)
        n = 300
        for i in range(n):
            await a.send("seq", i)
        await a.send("seq", "end")
        assert (await a.expect("seq")).data == [*range(n), "end"]
        await a.close()


async def test_broadcasts_from_one_sender_arrive_in_order(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        a, _ = await connect(server)
        b, _ = await connect(server)
        n = 300
        for i in range(n):
            await a.send("chat.say", i)
        got = [(await b.expect("chat.said")).data["text"] for _ in range(n)]
        assert got == list(range(n))
        await a.close()
        await b.close()


async def test_oversize_message_closes_1009(make_app: AppFactory) -> None:
    app, rec = build(make_app, WS_MAX_MESSAGE_SIZE=1024)
    async with serve(app) as server:
        a, a_id = await connect(server)
        b, _ = await connect(server)
        await a.send_raw("x" * 2048)
        assert app.ctx.ws.get(a_id) is not None
        code, _ = await a.wait_closed()
        assert code == 1009
        await rec.wait(lambda: len(rec.disconnected) == 1)
        assert (rec.disconnected[0].id, rec.disconnected[0].close_code) == (a_id, 1009)
        await b.send("order")
        await b.expect("order")
        await b.close()


async def test_invalid_utf8_closes_1007(make_app: AppFactory) -> None:
    app, rec = build(make_app)
    async with serve(app) as server:
        raw = await RawClient.connect(server.host, server.port)
        await raw.read_frame()  # welcome
        raw.send_frame(Opcode.TEXT, b'{"type": "\xff\xfe"}')
        close, _ = await raw.read_until_close()
        assert close.code == 1007
        await rec.wait(lambda: len(rec.disconnected) == 1)
        assert rec.disconnected[0].close_code == 1007
        raw.close_socket()


async def test_fragmented_message_is_reassembled(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        raw = await RawClient.connect(server.host, server.port)
        await raw.read_frame()  # welcome
        raw.send_frame(Opcode.TEXT, b'{"type": "or', fin=False)
        raw.send_frame(Opcode.CONT, b'der", "data"', fin=False)
        raw.send_frame(Opcode.CONT, b": null}")
        frame = await raw.read_frame()
        assert b'"type":"order"' in frame.data
        raw.close_socket()


async def test_unhandled_type_and_binary_get_error_frames(make_app: AppFactory) -> None:
    """Without a catch-all handler, a type nobody handles is answered, not dropped."""
    app = make_app()
    Extend(app).register(WSExtension)
    handlers = WSHandlers(app)

    @handlers.on("known")
    async def known(conn: Connection, msg: Envelope) -> None:
        await conn.send("known", msg.data)

    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        await client.send("unknown.type")
        error = await client.expect("error")
        assert error.data["code"] == ErrorCode.UNKNOWN_TYPE
        assert "unknown.type" in error.data["reason"]
        await client.send_raw(b"bytes")
        error = await client.expect("error")
        assert error.data["code"] == ErrorCode.UNKNOWN_TYPE
        await client.send("known", 1)
        assert (await client.expect("known")).data == 1


async def test_a_task_reading_with_the_test_client_ends_when_cancelled(
    make_app: AppFactory,
) -> None:
    """A message that arrives as its reader is cancelled does not keep the
    reader going (Python 3.11's ``wait_for`` returned it and dropped the
    cancellation: a reader could not be stopped while messages flowed)."""
    app = make_app()
    Extend(app).register(WSExtension)
    handlers = WSHandlers(app)

    @handlers.on("burst")
    async def burst(conn: Connection, msg: Envelope) -> None:
        for i in range(30):
            await conn.send("n", i)

    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        await client.send("burst")
        got = [(await client.expect("n")).data]
        for _ in range(300):  # bounded: each pass reads or cancels one
            if len(got) == 30:
                break
            reader = asyncio.ensure_future(client.recv())
            # The reader waits in recv; then a message is there for it.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            waiting = reader.cancel()
            await asyncio.wait({reader}, timeout=units(5))
            assert reader.done()
            if waiting:
                assert reader.cancelled(), "the cancelled reader went on"
            else:
                message = reader.result()
                assert isinstance(message, Envelope)
                got.append(message.data)
        assert got == list(range(30))


async def test_one_send_per_target_with_raw_as_an_option(
    make_app: AppFactory,
) -> None:
    """An envelope or ``raw=``, never both; the old ``_raw`` twins still work,
    with a DeprecationWarning naming the new call."""
    app = make_app()
    Extend(app).register(WSExtension)
    chat = WSHandlers(app)
    chat.room("r", client_join=True)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        ws = app.ctx.ws
        await client.join("r")
        (conn_id,) = ws.connections
        await ws.send(conn_id, raw="text as it is")
        await ws.broadcast(raw=b"\x01")
        await ws.publish("r", raw="to the room")
        frames = [await client.connection.recv() for _ in range(3)]
        assert frames == ["text as it is", b"\x01", "to the room"]
        with pytest.raises(TypeError, match="raw= is sent as it is"):
            await ws.broadcast("t", raw="both")
        with pytest.raises(TypeError, match="needs a type"):
            await ws.broadcast()
        with pytest.warns(DeprecationWarning, match=r"ws.send\(conn_id, raw=payload\)"):
            await ws.send_raw(conn_id, "old")
        with pytest.warns(DeprecationWarning, match=r"conn.send\(raw=payload\)"):
            await ws.get(conn_id).send_raw("older")
