"""Issue 13: defects found by review and a conformance run, one test each.

Each test failed before its fix. Waits are on events or on polled conditions
bounded in time; none relies on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from typing import Any

from sanic import Sanic
from websockets.frames import Close, Frame, Opcode

from sanic_ws_ext import Connection, Envelope, WSHandlers
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import until, ws_app
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]


# 1. A message of the allowed size could not be sent back: its frame header
# put it past WS_MAX_BACKPRESSURE (equal by default) before a byte was written.
async def test_largest_allowed_message_echoes(make_app: AppFactory) -> None:
    app, handlers, gone = ws_app(make_app)
    size = app.config.WS_MAX_MESSAGE_SIZE
    assert size == app.config.WS_MAX_BACKPRESSURE  # the defaults, as shipped

    @handlers.on_binary
    async def echo(conn: Connection, data: bytes) -> None:
        await conn.send(raw=data)

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
        payload = bytes(range(256)) * (size // 256)
        await client.send_raw(payload)
        assert await client.recv(units(10)) == payload
        await client.close()
        assert (await asyncio.wait_for(gone.get(), units(5))).close_code == 1000


# 2. RFC 6455, 5.4: a close between a message's fragments is answered with
# the same close (Autobahn 7.1.5), not 1002; the unfinished message is dropped.
async def test_close_between_fragments_is_echoed(make_app: AppFactory) -> None:
    app, handlers, gone = ws_app(make_app)
    seen: list[Any] = []

    @handlers.on_message
    async def record(conn: Connection, msg: Envelope | bytes) -> None:
        seen.append(msg)

    async with serve(app) as server:
        raw = await RawClient.connect(server.host, server.port)
        raw.writer.write(
            b"".join(
                frame.serialize(mask=True)
                for frame in (
                    Frame(Opcode.TEXT, b'{"type": "x", ', fin=False),
                    Frame(Opcode.CLOSE, Close(1000, "").serialize()),
                    Frame(Opcode.CONT, b'"data": 1}'),
                )
            )
        )
        close, before = await raw.read_until_close()
        assert (close.code, before) == (1000, [])
        dropped = await asyncio.wait_for(gone.get(), units(5))
        assert dropped.close_code == 1000
        assert seen == []
        raw.close_socket()


# 3. A client that left while its room guard awaited stayed in the
# manager's client-room map for ever.
async def test_leaving_while_the_room_guard_awaits_leaks_nothing(
    make_app: AppFactory,
) -> None:
    app, handlers, gone = ws_app(make_app, WS_PING_INTERVAL=None)
    asked = asyncio.Event()
    answer = asyncio.Event()

    @handlers.on_join
    async def slow_guard(conn: Connection, room: str) -> bool:
        asked.set()
        await answer.wait()  # a database lookup, say
        return True

    async with serve(app) as server:
        manager = app.ctx.ws
        client = await WSTestClient.connect(server.ws_url())
        await client.send("room.join", {"room": "lobby"})
        await asyncio.wait_for(asked.wait(), units(5))
        (conn,) = manager.connections.values()
        await client.close()
        await until(lambda: not manager.connections)
        answer.set()
        # Disconnect handlers run after the join in the same queue: once they
        # ran, the join is over.
        assert (await asyncio.wait_for(gone.get(), units(5))) is conn
        assert conn._client_rooms is None
        assert conn.rooms == set()
        assert await manager.members("lobby") == []


# 4. WS_MAX_QUEUE counted messages only: a slow handler let a client park
# 64 messages of any size. The inbox is bounded in bytes too.
async def test_inbox_is_bounded_in_bytes(make_app: AppFactory) -> None:
    limit = 64 * 1024
    app, handlers, gone = ws_app(
        make_app, WS_MAX_QUEUE_BYTES=limit, WS_PING_INTERVAL=None
    )
    release = asyncio.Event()
    got: list[int] = []

    @handlers.on_binary
    async def slow(conn: Connection, data: bytes) -> None:
        await release.wait()
        got.append(data[0])

    async with serve(app) as server:
        raw = await RawClient.connect(server.host, server.port)
        count, size = 60, 16 * 1024  # under WS_MAX_QUEUE (64) in number
        for i in range(count):
            raw.send_frame(Opcode.BINARY, bytes([i]) * size)
        (conn,) = app.ctx.ws.connections.values()
        await until(lambda: conn._wire.reading_paused)
        # Paused: nothing more is read. What one read already brought
        # (uvloop reads at most 256 KiB at a time) may still be queued.
        assert conn._mailbox is not None
        items = conn._mailbox.items
        parked = sum(len(item) for item in items if isinstance(item, bytes))
        assert parked <= limit + 256 * 1024 + size
        assert parked < count * size
        release.set()
        await until(lambda: len(got) == count)
        assert got == list(range(count))  # nothing lost, in order
        await until(lambda: conn._mailbox is None)  # drained: nothing kept
        raw.send_frame(Opcode.CLOSE, Close(1000, "").serialize())
        await asyncio.wait_for(gone.get(), units(5))
        raw.close_socket()


# 5a. A handler that never returns made a zombie: inbox full, reading paused,
# skipped by the heartbeat for ever. WS_HANDLER_TIMEOUT bounds it.
def watched_app(
    make_app: AppFactory,
) -> tuple[Sanic[Any, Any], WSHandlers, asyncio.Queue[Connection]]:
    """Handlers bounded by a short WS_HANDLER_TIMEOUT, checked often."""
    return ws_app(
        make_app,
        WS_HANDLER_TIMEOUT=units(0.3),
        WS_RELAY_BEAT=units(0.1),
        WS_PING_INTERVAL=None,
    )


async def test_stuck_handler_is_cancelled_and_its_connection_closed(
    make_app: AppFactory,
) -> None:
    app, handlers, gone = watched_app(make_app)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @handlers.on("hang")
    async def hang(conn: Connection, msg: Envelope) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @handlers.on("echo")
    async def echo(conn: Connection, msg: Envelope) -> None:
        await conn.send("echo", msg.data)

    async with serve(app) as server:
        stuck = await WSTestClient.connect(server.ws_url())
        bystander = await WSTestClient.connect(server.ws_url())
        await stuck.send("hang")
        await asyncio.wait_for(started.wait(), units(5))
        for i in range(3):  # queued behind the stuck handler, then dropped
            await stuck.send("echo", i)
        assert await stuck.wait_closed(units(10)) == (1011, "handler timeout")
        assert cancelled.is_set()
        dropped = await asyncio.wait_for(gone.get(), units(5))
        assert (dropped.close_code, dropped.close_reason) == (1011, "handler timeout")
        await bystander.send("echo", "still here")
        assert (await bystander.expect("echo")).data == "still here"
        await bystander.close()


# 5b. While reading is paused the peer's pongs cannot be read; a peer that
# went silent must still be found out.
async def test_silent_peer_found_while_reading_is_paused(
    make_app: AppFactory,
) -> None:
    app, handlers, gone = ws_app(
        make_app,
        WS_MAX_QUEUE=2,
        WS_PING_INTERVAL=units(0.2),
        WS_PING_TIMEOUT=units(0.2),
        WS_HANDLER_TIMEOUT=None,
    )
    release = asyncio.Event()

    @handlers.on("work")
    async def work(conn: Connection, msg: Envelope) -> None:
        await release.wait()

    async with serve(app) as server:
        # A raw client never answers pings: as silent as a vanished peer.
        raw = await RawClient.connect(server.host, server.port)
        for _ in range(3):
            raw.send_frame(Opcode.TEXT, b'{"type": "work"}')
        (conn,) = app.ctx.ws.connections.values()
        await until(lambda: conn._wire.reading_paused)
        await until(lambda: not app.ctx.ws.connections)
        assert (conn.close_code, conn.close_reason) == (1011, "ping timeout")
        release.set()
        await asyncio.wait_for(gone.get(), units(5))
        raw.close_socket()


# 7. Shutdown cancelled stuck handlers without awaiting them: their finally
# blocks ran after delivery had stopped, and publishing there failed.
async def test_shutdown_awaits_the_handlers_it_cancels(make_app: AppFactory) -> None:
    app, handlers, _ = ws_app(
        make_app, WS_CLOSE_TIMEOUT=units(0.2), WS_HANDLER_TIMEOUT=None
    )
    stuck = asyncio.Event()
    outcome: list[str] = []

    @handlers.on_disconnect
    async def slow_goodbye(conn: Connection) -> None:
        try:
            stuck.set()
            await asyncio.Event().wait()
        finally:
            try:
                await conn.manager.broadcast("bye", conn.id)
                outcome.append("published")
            except RuntimeError as exc:
                outcome.append(f"failed: {exc}")

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
        await client.close()
        await asyncio.wait_for(stuck.wait(), units(5))
    assert outcome == ["published"]


async def test_shutdown_cancels_backplane_hooks(make_app: AppFactory) -> None:
    """A hook still running at shutdown is cancelled and awaited."""
    app, handlers, _ = ws_app(
        make_app,
        WS_BACKPLANE="redis://127.0.0.1:6379/0",
        WS_REDIS_CHANNEL=f"hooks-{os.getpid()}",
        WS_CLOSE_TIMEOUT=units(1),
    )
    running = asyncio.Event()
    outcome: list[str] = []

    @handlers.on_backplane
    async def slow_hook(manager: Any, state: str) -> None:
        running.set()  # "connected", once Redis answers
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async with serve(app):
        await asyncio.wait_for(running.wait(), units(10))
        manager = app.ctx.ws
    assert outcome == ["cancelled"]
    assert not manager._hook_tasks


# Smaller: a 426 must carry Upgrade, and Connection must list it (RFC 9110).
async def test_426_names_the_upgrade(make_app: AppFactory) -> None:
    app, _, _ = ws_app(make_app)
    async with serve(app) as server:
        head = await _raw_get(server.port, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
    assert status.split()[1] == "426"
    assert headers["upgrade"] == "websocket"
    assert "upgrade" in headers["connection"].lower().split(", ")


async def _raw_get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), units(5)))[:-4]
    finally:
        writer.close()
        await writer.wait_closed()


# Review of issue 14: the watchdog threw away the disconnect marker queued
# behind a stuck handler, so on_disconnect never ran.
async def test_a_client_gone_behind_a_stuck_handler_still_gets_on_disconnect(
    make_app: AppFactory,
) -> None:
    app, handlers, gone = watched_app(make_app)
    started = asyncio.Event()

    @handlers.on("hang")
    async def hang(conn: Connection, msg: Envelope) -> None:
        started.set()
        await asyncio.Event().wait()

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
        await client.send("hang")
        await asyncio.wait_for(started.wait(), units(5))
        await client.close()  # the tab closes while the handler hangs
        await until(lambda: not app.ctx.ws.connections)
        # The watchdog cancels the handler; the disconnect handlers run after.
        dropped = await asyncio.wait_for(gone.get(), units(10))
        assert dropped.close_code == 1000


# Review of issue 14: with TLS in the server, the SSL layer keeps reading the
# socket while we are paused, so the kernel's unread count stays at 0 and a
# live client looked silent (closed 1011 "ping timeout").
async def test_a_paused_tls_connection_is_presumed_alive(
    make_app: AppFactory, tmp_path: Any
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await made.wait() == 0
    app, handlers, _ = ws_app(
        make_app, WS_MAX_QUEUE=2, WS_PING_INTERVAL=None, WS_HANDLER_TIMEOUT=None
    )
    release = asyncio.Event()

    @handlers.on("work")
    async def work(conn: Connection, msg: Envelope) -> None:
        await release.wait()

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context()
    client_tls.check_hostname = False
    client_tls.verify_mode = ssl.CERT_NONE
    async with serve(app, ssl=server_tls) as server:
        client = await WSTestClient.connect(server.ws_url(), ssl=client_tls)
        for _ in range(3):
            await client.send("work")
        (conn,) = app.ctx.ws.connections.values()
        await until(lambda: conn._wire.reading_paused)
        # Asked twice with nothing new in the kernel: a plain socket would
        # now look silent; TLS says nothing about the peer, so: alive.
        assert conn._wire.heard_while_paused()
        assert conn._wire.heard_while_paused()
        release.set()
        await client.close()
