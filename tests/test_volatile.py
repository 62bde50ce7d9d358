"""Volatile and keyed sends (issue 18, point 3), against a real server.

A *stalled* client is a raw socket with a tiny receive buffer that reads
nothing until the test says so: what the server sends it piles up in the
server's own buffers, where the rules of volatile and keyed sends apply.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from sanic import Sanic
from websockets.frames import Opcode

from sanic_ws_ext import Connection
from sanic_ws_ext.delivery import Op, OpKind
from sanic_ws_ext.delivery.wire import decode_op, encode_op
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import until, ws_app
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]

LIMIT = 256 * 1024
BODY = "x" * 4000
TICKS = 500  # ~2 MB of volatile ticks: eight times the limit


async def stall(app: Sanic[Any, Any], host: str, port: int) -> tuple[RawClient, Any]:
    """A client that reads nothing, and its connection on the server."""
    known = set(app.ctx.ws.connections)
    client = await RawClient.connect(host, port, rcvbuf=4096)
    await until(lambda: len(set(app.ctx.ws.connections) - known) == 1)
    (conn_id,) = set(app.ctx.ws.connections) - known
    return client, app.ctx.ws.get(conn_id)


async def fill(conn: Connection) -> int:
    """Send ``conn`` 4 KB frames until the kernel takes no more (its send
    buffer grows to a few MB) and more than the volatile backlog waits in
    the server's own; how many."""
    config = conn.manager._config
    for sent in range(1, 5000):  # bounded: 20 MB, past any socket buffer
        await conn.send("fill", {"n": sent, "body": BODY})
        if conn._wire.writing_paused and conn.backlog > config.volatile_backlog:
            return sent
    raise AssertionError("the stalled client's socket never filled")


async def test_volatile_sends_skip_a_client_that_is_behind_and_never_close_it(
    make_app: AppFactory,
) -> None:
    app, _, gone = ws_app(make_app, WS_MAX_BACKPRESSURE=LIMIT, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        stalled, conn = await stall(app, server.host, server.port)
        await fill(conn)
        async with await WSTestClient.connect(server.ws_url()) as reader:
            got: list[int] = []
            progress = asyncio.Event()

            async def read() -> None:
                while len(got) < TICKS:
                    message = await reader.recv(units(30))
                    assert not isinstance(message, bytes)
                    if message.type == "tick":
                        got.append(message.data["i"])
                        progress.set()

            reading = asyncio.ensure_future(read())
            peak = 0
            for i in range(TICKS):
                # The reader keeps up: only the stalled client is behind.
                while i - len(got) > 4:
                    progress.clear()
                    await asyncio.wait_for(progress.wait(), units(30))
                await ws.broadcast("tick", {"i": i, "body": BODY}, volatile=True)
                peak = max(peak, conn.backlog)
            await asyncio.wait_for(reading, units(30))
            assert got == list(range(TICKS))
            # The stalled client got none of them and is still connected.
            assert ws.get(conn.id) is conn and gone.empty()
            assert peak <= ws._config.volatile_backlog + len(BODY) * 2
            assert ws._counters.volatile_skipped >= TICKS
        stalled.close_socket()


async def test_a_keyed_send_replaces_the_one_still_unsent(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app, WS_MAX_BACKPRESSURE=None, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        stalled, conn = await stall(app, server.host, server.port)
        fills = await fill(conn)
        for i in range(100):
            await conn.send("cursor", {"i": i}, key="cursor")
        await ws.send(conn.id, "other", {"i": 0}, key="other")
        await ws.send(conn.id, "other", {"i": 1}, key="other")  # via the manager
        await conn.send("after")
        assert ws._counters.replaced == 100
        seen: list[tuple[str, Any]] = []
        while not seen or seen[-1][0] != "after":  # bounded by the fills sent
            frame = await stalled.read_frame(units(10))
            assert frame.opcode is Opcode.TEXT
            envelope = json.loads(bytes(frame.data))
            seen.append((envelope["type"], envelope["data"]))
            assert len(seen) <= fills + 3
        assert [t for t, _ in seen].count("fill") == fills
        # One frame per key, the latest, where the first one was queued.
        assert seen[fills:] == [
            ("cursor", {"i": 99}),
            ("other", {"i": 1}),
            ("after", None),
        ]
        stalled.close_socket()


async def test_a_key_once_written_is_sent_again(make_app: AppFactory) -> None:
    """Only unsent frames are replaced: a client that keeps up gets every one."""
    app, _, _ = ws_app(make_app)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        (conn_id,) = app.ctx.ws.connections
        for i in range(3):
            await app.ctx.ws.send(conn_id, "cursor", i, key="cursor")
            assert (await client.expect("cursor")).data == i


@pytest.mark.parametrize("key", ["", "k" * 201, 7])
async def test_a_bad_key_is_refused_in_the_senders_code(
    make_app: AppFactory, key: Any
) -> None:
    app, _, _ = ws_app(make_app)
    async with serve(app):
        with pytest.raises(ValueError, match="key must be a string"):
            await app.ctx.ws.broadcast("x", key=key)


def test_volatile_and_key_cross_processes() -> None:
    op = Op(OpKind.ROOM_SEND, b"{}", True, "room", reason="cursor:7", volatile=True)
    assert decode_op(encode_op(op)) == op
    plain = Op(OpKind.BROADCAST, b"{}")
    assert decode_op(encode_op(plain)).volatile is False
