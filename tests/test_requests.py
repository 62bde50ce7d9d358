"""Request and reply, both ways, against a real server in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import ujson
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import (
    ClientGone,
    Connection,
    Envelope,
    MessageError,
    RequestError,
    RequestFailed,
    RequestTimeout,
    WSExtension,
    WSHandlers,
)
from sanic_ws_ext.requests import MAX_ASKS
from sanic_ws_ext.testing import LiveServer, WSTestClient, serve

from .conftest import units

AppFactory = Callable[..., Sanic[Any, Any]]


def build(make_app: AppFactory) -> tuple[Sanic[Any, Any], list[Exception]]:
    app = make_app()
    Extend(app).register(WSExtension)
    h = WSHandlers(app)
    errors: list[Exception] = []

    @h.on_connect
    async def welcome(conn: Connection) -> None:
        await conn.send("welcome", {"id": conn.id})

    @h.on("add")
    async def add(conn: Connection, msg: Envelope) -> int:
        return int(msg.data["a"] + msg.data["b"])

    @h.on("refuse")
    async def refuse(conn: Connection, msg: Envelope) -> None:
        raise MessageError("not_allowed", "you may not")

    @h.on("boom")
    async def boom(conn: Connection, msg: Envelope) -> None:
        raise RuntimeError("handler bug")

    @h.on("nothing")
    async def nothing(conn: Connection, msg: Envelope) -> None:
        return None

    @h.on("unjsonable")
    async def unjsonable(conn: Connection, msg: Envelope) -> object:
        return object()

    @h.on("chatty")
    async def chatty(conn: Connection, msg: Envelope) -> str:
        await conn.send("note", 1)
        await conn.manager.send(conn.id, "note", 2)
        return "done"

    @h.on("ref")
    async def ref(conn: Connection, msg: Envelope) -> str | None:
        return msg.ref

    # Several handlers of one type: the last value other than None wins...
    @h.on("multi")
    async def multi_1(conn: Connection, msg: Envelope) -> int:
        return 1

    @h.on("multi")
    async def multi_2(conn: Connection, msg: Envelope) -> int:
        return 2

    @h.on("multi")
    async def multi_3(conn: Connection, msg: Envelope) -> None:
        await conn.send("multi.ran", 3)

    # ...and the first failure beats any value and stops the rest.
    @h.on("multi_fail")
    async def multi_fail_1(conn: Connection, msg: Envelope) -> int:
        return 1

    @h.on("multi_fail")
    async def multi_fail_2(conn: Connection, msg: Envelope) -> None:
        raise MessageError("first", "the first failure")

    @h.on("multi_fail")
    async def multi_fail_3(conn: Connection, msg: Envelope) -> None:
        await conn.send("multi_fail.ran", 3)
        raise MessageError("second", "not this one")

    @h.on_join
    async def may_join(conn: Connection, room: str) -> bool:
        return room.startswith("open:")

    @h.on("ask_me")
    async def ask_me(conn: Connection, msg: Envelope) -> Any:
        """A handler awaiting a request to its own connection."""
        return await conn.request("question", msg.data, timeout=units(10))

    @h.on("ask")
    async def ask(conn: Connection, msg: Envelope) -> Any:
        """Ask another connection (by id) through the manager."""
        args = msg.data
        try:
            answer = await conn.manager.request(
                args["to"], "question", args.get("data"), timeout=args["timeout"]
            )
        except RequestError as exc:
            return {"error": type(exc).__name__, "code": getattr(exc, "code", None)}
        return {"data": answer}

    @h.on_error
    async def on_error(conn: Connection, exc: Exception) -> None:
        errors.append(exc)

    return app, errors


async def connect(server: LiveServer) -> tuple[WSTestClient, str]:
    client = await WSTestClient.connect(server.ws_url())
    return client, (await client.expect("welcome")).data["id"]


async def raw_reply(client: WSTestClient) -> dict[str, Any]:
    """The next text frame, as JSON (replies carry more than an Envelope)."""
    raw = await asyncio.wait_for(client.connection.recv(), units(5))
    assert isinstance(raw, str)
    decoded: dict[str, Any] = ujson.loads(raw)
    return decoded


async def test_handlers_answer_requests(make_app: AppFactory) -> None:
    app, errors = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            assert await client.request("add", {"a": 2, "b": 3}) == 5
            assert await client.request("nothing") is None
            with pytest.raises(RequestFailed) as refused:
                await client.request("refuse")
            assert (refused.value.code, refused.value.reason) == (
                "not_allowed",
                "you may not",
            )
            with pytest.raises(RequestFailed) as failed:
                await client.request("boom")
            assert failed.value.code == "handler_error"
            with pytest.raises(RequestFailed) as unknown:
                await client.request("no.such.type")
            assert unknown.value.code == "unknown_type"
            with pytest.raises(RequestFailed) as bad_value:
                await client.request("unjsonable")
            assert bad_value.value.code == "handler_error"
            # Replies came instead of error frames: nothing else is waiting.
            await client.send("ref", ref="last")
            reply = await raw_reply(client)
            assert reply["type"] == "reply"
            assert reply["ref"] == "last" and reply["data"] == "last"
            assert reply["ok"] is True and isinstance(reply["timestamp"], int)
    # The error hooks ran as for messages without a ref.
    assert [type(e).__name__ for e in errors] == [
        "MessageError",
        "RuntimeError",
        "MessageError",
        "TypeError",
    ]


async def test_the_wire_format_of_replies(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            await client.send("refuse", ref="r1")
            reply = await raw_reply(client)
            assert reply["type"] == "reply" and reply["ref"] == "r1"
            assert reply["ok"] is False and "data" not in reply
            assert reply["error"] == {"code": "not_allowed", "reason": "you may not"}
            # A refused envelope with a readable ref is answered by a reply.
            await client.send_raw(ujson.dumps({"type": "", "ref": "r2"}))
            reply = await raw_reply(client)
            assert (reply["ref"], reply["ok"]) == ("r2", False)
            assert reply["error"]["code"] == "invalid_envelope"


@pytest.mark.parametrize(
    "ref", [123, "", "x" * 65, None, ["a"], {"a": 1}, True], ids=repr
)
async def test_bad_refs_get_an_error_frame(make_app: AppFactory, ref: Any) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            await client.send_raw(ujson.dumps({"type": "add", "ref": ref}))
            frame = await raw_reply(client)
            assert frame["type"] == "error"
            assert frame["data"]["code"] == "invalid_envelope"
            assert "ref" in frame["data"]["reason"]
            # The longest ref allowed is answered.
            longest = "x" * 64
            await client.send("add", {"a": 1, "b": 1}, ref=longest)
            reply = await raw_reply(client)
            assert (reply["ref"], reply["data"]) == (longest, 2)


async def test_reply_keeps_its_place_after_the_handlers_frames(
    make_app: AppFactory,
) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            await client.send("chatty", ref="c")
            frames = [await raw_reply(client) for _ in range(3)]
            assert [(f["type"], f.get("data")) for f in frames] == [
                ("note", 1),
                ("note", 2),
                ("reply", "done"),
            ]


async def test_no_ref_no_reply(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            await client.send("add", {"a": 1, "b": 1})  # returns 2, unasked
            await client.send("chatty")
            await client.send("nothing", ref="marker")
            frames = [await raw_reply(client) for _ in range(3)]
            assert [f["type"] for f in frames] == ["note", "note", "reply"]
            assert frames[2]["ref"] == "marker"
            # Errors without a ref are error frames, as always.
            await client.send("refuse")
            frame = await raw_reply(client)
            assert frame["type"] == "error"
            assert frame["data"]["code"] == "not_allowed"


async def test_several_handlers_one_reply(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            assert await client.request("multi") == 2
            assert (await client.expect("multi.ran")).data == 3
            with pytest.raises(RequestFailed) as failed:
                await client.request("multi_fail")
            assert failed.value.code == "first"
            # multi_fail_3 never ran: what arrived before the next reply is
            # that request's own frame only.
            assert await client.request("multi") == 2
            assert (await client.recv()).type == "multi.ran"  # type: ignore[union-attr]


async def test_room_join_and_leave_with_a_ref(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            await client.send("room.join", {"room": "open:1"}, ref="j")
            joined, reply = await raw_reply(client), await raw_reply(client)
            assert joined == {**joined, "type": "room.joined"}
            assert joined["data"] == {"room": "open:1"}
            assert reply["ref"] == "j" and reply["ok"] is True
            assert reply["data"] == {"room": "open:1"}
            with pytest.raises(RequestFailed) as refused:
                await client.request("room.join", {"room": "closed"})
            assert refused.value.code == "room_refused"
            with pytest.raises(RequestFailed) as bad:
                await client.request("room.join", {"room": ""})
            assert bad.value.code == "invalid_envelope"
            assert await client.request("room.leave", {"room": "open:1"}) == {
                "room": "open:1"
            }
            assert (await client.expect("room.left")).data == {"room": "open:1"}


async def test_server_asks_its_client(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            # The handler awaits a request to its own connection: the reply
            # must not queue behind the message being handled.
            await client.send("ask_me", {"q": 1}, ref="outer")
            question = await client.expect("question")
            assert question.data == {"q": 1}
            assert isinstance(question.ref, str) and question.ref != "outer"
            await client.reply(question.ref, {"answer": 42})
            reply = await raw_reply(client)
            assert (reply["ref"], reply["data"]) == ("outer", {"answer": 42})
            # A client's refusal reaches the handler as RequestFailed.
            await client.send("ask_me", None, ref="outer2")
            question = await client.expect("question")
            assert question.ref is not None
            await client.reply(question.ref, error=("busy", "try later"))
            reply = await raw_reply(client)
            # The handler let RequestFailed escape: a handler_error reply.
            assert reply["ref"] == "outer2" and reply["ok"] is False
            assert reply["error"]["code"] == "handler_error"


async def test_requests_through_the_manager(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        asker, _ = await connect(server)
        target, target_id = await connect(server)
        async with asker, target:

            async def ask(timeout: float = units(10)) -> Any:
                return await asker.request(
                    "ask",
                    {"to": target_id, "data": "q", "timeout": timeout},
                    timeout=units(20),
                )

            # Answered.
            pending = asyncio.ensure_future(ask())
            question = await target.expect("question")
            assert question.ref is not None
            await target.reply(question.ref, [1, 2])
            assert await pending == {"data": [1, 2]}
            # Refused by the client.
            pending = asyncio.ensure_future(ask())
            question = await target.expect("question")
            assert question.ref is not None
            await target.reply(question.ref, error=("nope", "no"))
            assert await pending == {"error": "RequestFailed", "code": "nope"}
            # A reply with a ref never asked, or a second reply, is dropped.
            await target.reply("never-asked", 1)
            await target.reply(question.ref, 1)
            # Not answered in time; the answer after it is dropped.
            pending = asyncio.ensure_future(ask(timeout=units(0.2)))
            question = await target.expect("question")
            assert await pending == {"error": "RequestTimeout", "code": None}
            assert question.ref is not None
            await target.reply(question.ref, "late")
            assert app.ctx.ws._requests.pending == 0
            # The target goes while asked: the asker knows at once (the
            # timeout would say RequestTimeout, and outlast the test).
            pending = asyncio.ensure_future(ask(timeout=units(600)))
            await target.expect("question")
            await target.close()
            assert await pending == {"error": "ClientGone", "code": None}
            # A connection that is not there fails at once too.
            assert await asker.request(
                "ask", {"to": target_id, "data": 1, "timeout": units(600)}
            ) == {"error": "ClientGone", "code": None}
            assert app.ctx.ws._requests.pending == 0


async def test_malformed_replies_are_refused(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            for reply in (
                {"type": "reply", "ok": True},  # no ref
                {"type": "reply", "ref": "a", "ok": "yes"},
                {"type": "reply", "ref": "a", "ok": False, "error": "no"},
                {"type": "reply", "ref": "a", "ok": False, "error": {"code": 1}},
            ):
                await client.send_raw(ujson.dumps(reply))
                frame = await raw_reply(client)
                assert frame["type"] == "error", reply
                assert frame["data"]["code"] == "invalid_envelope"
            # A reply never reaches the app's handlers.
            await client.reply("unasked", 1)
            assert await client.request("add", {"a": 1, "b": 2}) == 3


async def test_direct_api_errors(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    seen: list[Exception] = []

    h = WSHandlers(app)

    @h.on("direct")
    async def direct(conn: Connection, msg: Envelope) -> None:
        for timeout in (0, -1, float("inf")):
            try:
                await conn.request("q", timeout=timeout)
            except ValueError as exc:
                seen.append(exc)

    async with serve(app) as server:
        client, _ = await connect(server)
        async with client:
            assert await client.request("direct") is None
    assert len(seen) == 3
    with pytest.raises(ValueError, match="reply"):
        h.on("reply")
    assert issubclass(RequestTimeout, TimeoutError)
    assert issubclass(ClientGone, ConnectionError)
    assert MAX_ASKS >= 64


class _Wire:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


class _Conn:
    def __init__(self) -> None:
        self.id = "k" * 8 + "conn"
        self._asks: dict[str, tuple[str, float]] | None = None
        self._wire = _Wire()


class _Route:
    def route(self, conn_id: str) -> str:
        return "here"


class _Outbox:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(self, kind: Any, **fields: Any) -> None:
        self.published.append({"kind": kind, **fields})


async def test_what_a_holder_keeps_per_connection_is_bounded() -> None:
    """Asked by a process whose requests time out, and never answered: the
    holder prunes expired entries and keeps at most MAX_ASKS."""
    from sanic_ws_ext.delivery import Op, OpKind
    from sanic_ws_ext.envelope import Reply
    from sanic_ws_ext.index import LocalIndex
    from sanic_ws_ext.requests import Requests

    local = LocalIndex()
    conn = _Conn()
    local.conns[conn.id] = conn  # type: ignore[assignment]
    outbox = _Outbox()
    requests = Requests(local, _Route(), outbox, worker="here")  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    requests.start(loop)

    def ask(ref: str, timeout: int) -> None:
        requests.on_ask(
            Op(OpKind.ASK, b"{}", False, conn.id, code=timeout, reason=ref, origin="a")
        )

    for i in range(MAX_ASKS * 2):
        ask(f"r{i}", 60)
    assert conn._asks is not None and len(conn._asks) == MAX_ASKS
    assert f"r{MAX_ASKS * 2 - 1}" in conn._asks and "r0" not in conn._asks
    # Expired ones go first: with every entry past its time, one is left.
    conn._asks = {ref: (o, loop.time() - 1) for ref, (o, _) in conn._asks.items()}
    ask("fresh", 60)
    assert list(conn._asks) == ["fresh"]
    assert len(conn._wire.frames) == MAX_ASKS * 2 + 1
    # The reply goes to the asker, once; the closing tells the others.
    ask("other", 60)
    requests.replied(conn, Reply("fresh", True, 1))  # type: ignore[arg-type]
    requests.replied(conn, Reply("fresh", True, 2))  # type: ignore[arg-type]
    requests.lost(conn)  # type: ignore[arg-type]
    answers = [(p["reason"], p["code"], p["to"]) for p in outbox.published]
    assert answers == [("fresh", 0, "a"), ("other", 1, "a")]
    assert conn._asks is None


async def test_ping_is_answered_at_once(make_app: AppFactory) -> None:
    """The browser client's heartbeat: a ``ping`` with a ref is answered
    ``ok: true`` as it arrives, even behind a handler that has not returned,
    and no handler sees it."""
    app = make_app()
    Extend(app).register(WSExtension)
    h = WSHandlers(app)
    release = asyncio.Event()
    seen: list[str] = []

    @h.on_message
    async def every(conn: Connection, msg: Envelope) -> None:
        seen.append(msg.type)
        if msg.type == "hold":
            await release.wait()

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
        async with client:
            await client.send("hold")
            await client.send("ping", ref="hb.1")
            reply = await raw_reply(client)
            assert (reply["ref"], reply["ok"], reply["data"]) == ("hb.1", True, None)
            release.set()
            assert await client.request("after") is None
            assert seen == ["hold", "after"], "handlers never see the heartbeat"

    # An app's own "ping" handler answers it, in its place in the queue.
    app2 = make_app()
    Extend(app2).register(WSExtension)
    h2 = WSHandlers(app2)

    @h2.on("ping")
    async def pong(conn: Connection, msg: Envelope) -> str:
        return "pong"

    async with serve(app2) as server:
        client = await WSTestClient.connect(server.ws_url())
        async with client:
            assert await client.request("ping") == "pong"
