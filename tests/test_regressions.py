"""Regressions found by review: each test failed before its fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sanic import Request, Sanic

from sanic_ws_ext import Accept, Connection, Envelope, WSConfig
from sanic_ws_ext.delivery import Op, OpKind
from sanic_ws_ext.delivery.local import LocalDelivery
from sanic_ws_ext.envelope import decode_envelope
from sanic_ws_ext.errors import MessageError
from sanic_ws_ext.handlers import HandlerRegistry
from sanic_ws_ext.manager import ConnectionManager
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import ws_app

AppFactory = Callable[..., Sanic[Any, Any]]
TOKEN = "a-stats-token-long-enough"


# 1. envelope.py: 1e999 decodes to inf without "NaN"/"Infinity" in the text.
@pytest.mark.parametrize(
    "text",
    [
        '{"type": "x", "data": 1e999}',
        '{"type": "x", "data": [-1e400]}',
        '{"type": "x", "data": {"a": 1E999}}',
        '{"type": "x", "data": 2e+0400}',
        '{"type": "x", "data": ' + "9" * 309 + ".5}",  # no exponent at all
    ],
)
def test_overflowing_float_literal_is_refused(text: str) -> None:
    with pytest.raises(MessageError) as refused:
        decode_envelope(text)
    assert refused.value.code == "invalid_json"


# 2. monitoring.py: a non-UTF-8 byte in Authorization (Sanic decodes headers
# with surrogateescape) makes given.encode() raise: 500, not 401.
async def raw_status(port: int, head: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        line = await asyncio.wait_for(reader.readline(), units(5))
        return int(line.split()[1])
    finally:
        writer.close()


async def test_stats_token_with_non_utf8_header_is_401(make_app: AppFactory) -> None:
    app, _, _ = ws_app(make_app, WS_STATS=True, WS_STATS_TOKEN=TOKEN)
    async with serve(app) as server:
        head = (
            b"GET /ws/stats HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer \xff\xfe-not-utf8-at-all\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert await raw_status(server.port, head) == 401


# 3. manager.py _apply_broadcast at 1378d73: frames refused by send_frame (slow
# consumer, closing) were counted as queued. Fixed by fan_out() in 3e2df62:
# passes at HEAD, kept as a regression test.
async def test_broadcast_counts_only_frames_queued(make_app: AppFactory) -> None:
    app, handlers, gone = ws_app(
        make_app, WS_MAX_BACKPRESSURE=4096, WS_PING_INTERVAL=None
    )

    @handlers.on("big")
    async def big(conn: Connection, msg: Envelope) -> None:
        # The first is queued for all (a frame larger than the bound still
        # goes to a client that keeps up); in the same loop pass, the second
        # finds every backlog past the bound.
        await conn.manager.broadcast("big", "x" * 8192)
        await conn.manager.broadcast("big", "x" * 8192)

    async with serve(app) as server:
        clients = [await WSTestClient.connect(server.ws_url()) for _ in range(2)]
        manager = app.ctx.ws
        before = manager._counters.messages_out
        await clients[0].send("big")
        for _ in range(2):
            dropped = await asyncio.wait_for(gone.get(), units(5))
            assert dropped.close_reason == "slow consumer"
        # One frame was queued for each receiver, the second for neither.
        assert manager._counters.messages_out - before == 2


# 4. manager.py BEAT: a peer's sample is stored unchecked; one that is not a
# dict of numbers (hostile or newer peer on Redis) breaks /stats for everyone.
@pytest.mark.parametrize(
    ("sample", "messages_in", "opened"),
    [
        (b"[1, 2]", 0, 0),
        (b'{"messages_in": "many"}', 0, 0),
        # What is sound in a sample is kept; only the bad figure is left out.
        (b'{"messages_in": 5, "opened": NaN}', 5, 0),
        (b'{"messages_in": true, "opened": 7}', 0, 7),
    ],
)
async def test_bad_peer_sample_does_not_break_stats(
    sample: bytes, messages_in: int, opened: int
) -> None:
    manager = ConnectionManager(
        WSConfig.from_mapping({}), HandlerRegistry(), LocalDelivery(), worker="w0"
    )
    await manager._start()
    try:
        manager._applier.apply(Op(OpKind.BEAT, payload=b"life1 " + sample, origin="w1"))
        peer = manager._cluster_stats()["per_worker"][
            "w1"
        ]  # raised on the stored sample
        assert (peer["messages_in"], peer["opened"]) == (messages_in, opened)
    finally:
        await manager._stop()


# 5. endpoint.py: an upgrade whose verify hook finishes after the manager
# stopped (Sanic's graceful shutdown keeps in-flight requests running after
# before_server_stop) is accepted: 101 written, then publish() raises.
async def test_upgrade_finishing_after_stop_is_refused(make_app: AppFactory) -> None:
    app, handlers, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    entered = asyncio.Event()
    release = asyncio.Event()

    @handlers.verify
    async def slow(request: Request) -> Accept:
        entered.set()
        await release.wait()
        return Accept(user="late")

    errors: list[BaseException] = []
    async with serve(app) as server:
        manager = app.ctx.ws
        connecting = asyncio.ensure_future(WSTestClient.connect(server.ws_url()))
        await asyncio.wait_for(entered.wait(), units(5))
        await manager._stop()  # what before_server_stop does
        release.set()
        try:
            client = await asyncio.wait_for(connecting, units(5))
        except Exception as exc:  # refused: what we want
            errors.append(exc)
        else:
            await client.close()
        # The upgrade must be refused (503), not answered 101 by a manager
        # whose delivery is gone (then RuntimeError in accept(), _idle left
        # cleared, and the next stop() waits 2 x WS_CLOSE_TIMEOUT).
        assert errors, "upgraded after the manager stopped"
        assert not manager.connections, list(manager.connections.values())


# 6. endpoint.py:168 (pre-existing): Headers(request.headers.items()) raises
# InvalidHeaderValue for any header value with a character above U+00FF.
# Sanic decodes headers as UTF-8, so a browser cookie holding raw UTF-8
# ("\u20ac") makes every upgrade 500, with a traceback in sanic.error.
async def test_upgrade_with_utf8_cookie_is_accepted(make_app: AppFactory) -> None:
    app, _, _ = ws_app(make_app)
    async with serve(app) as server:
        head = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Cookie: currency=\xe2\x82\xac\r\n\r\n"
        )
        assert await raw_status(server.port, head) == 101


async def test_non_latin1_handshake_header_is_a_400_not_a_500(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app)
    async with serve(app) as server:
        head = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Protocol: chat\xe2\x82\xac\r\n\r\n"
        )
        assert await raw_status(server.port, head) in (101, 400)
