"""A client that stops reading stalls nobody and costs bounded memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sanic import Sanic

from sanic_ws_ext import CloseCode
from sanic_ws_ext.frames import OP_TEXT, encode_frame
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import ws_app
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]

LIMIT = 256 * 1024
CLIENTS = 100
MESSAGES = 1200
BODY = "x" * 4000  # ~4 KB each: ~4.8 MB in all, past the kernel's own buffers
WINDOW = 40  # messages a reader may lag behind before the sender waits


async def test_stalled_client_is_dropped_others_get_everything(
    make_app: AppFactory,
) -> None:
    app, _, gone = ws_app(make_app, WS_MAX_BACKPRESSURE=LIMIT, WS_PING_INTERVAL=None)

    async with serve(app) as server:
        ws = app.ctx.ws
        stalled = await RawClient.connect(server.host, server.port, rcvbuf=4096)
        (stalled_id,) = ws.connections
        readers = [await WSTestClient.connect(server.ws_url()) for _ in range(CLIENTS)]
        received = [0] * CLIENTS
        progress = asyncio.Event()

        async def read_all(i: int, client: WSTestClient) -> None:
            for expected in range(MESSAGES):
                message = await client.recv(units(30))
                assert not isinstance(message, bytes)
                assert message.data["seq"] == expected  # all of them, in order
                received[i] += 1
                progress.set()

        reading = [asyncio.create_task(read_all(i, c)) for i, c in enumerate(readers)]
        frame_size = len(encode_frame(OP_TEXT, b'{"seq": 0}' + BODY.encode()))
        peak_backlog = 0
        for seq in range(MESSAGES):
            # Pace the sender to the readers, so only the stalled one lags.
            while seq - min(received) > WINDOW:
                progress.clear()
                await progress.wait()
            await ws.broadcast("tick", {"seq": seq, "body": BODY})
            conn = ws.get(stalled_id)
            if conn is not None:
                peak_backlog = max(peak_backlog, conn.backlog)
        await asyncio.gather(*reading)

        dropped = await asyncio.wait_for(gone.get(), units(5))
        assert dropped.id == stalled_id
        assert dropped.close_code == CloseCode.POLICY_VIOLATION
        assert dropped.close_reason == "slow consumer"
        # What the server held for it never passed the bound (plus one frame).
        assert 0 < peak_backlog <= LIMIT + frame_size
        assert received == [MESSAGES] * CLIENTS
        assert len(ws.connections) == CLIENTS
        for client in readers:
            await client.close()
        stalled.close_socket()


async def test_a_fan_out_past_one_passes_budget_reaches_everyone(
    make_app: AppFactory,
) -> None:
    """One event-loop pass writes at most a budget of bytes (4 MiB) and leaves
    the other connections to the next pass: none may be left behind, and
    each one's frames stay in order."""
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    big = "y" * 400_000
    async with serve(app) as server:
        ws = app.ctx.ws
        clients = [await WSTestClient.connect(server.ws_url()) for _ in range(24)]
        # 24 x 400 KB is 9.6 MB: several passes' worth, written across them.
        await ws.broadcast("big", {"body": big})
        await ws.broadcast("after", 1)
        for client in clients:
            first = await client.recv(units(10))
            assert not isinstance(first, bytes)
            assert (first.type, len(first.data["body"])) == ("big", len(big))
            second = await client.recv(units(10))
            assert not isinstance(second, bytes) and second.type == "after"
        # The loop is not left with a flush it thinks is scheduled: more
        # small sends still go out.
        await ws.broadcast("later", 2)
        for client in clients:
            message = await client.recv(units(10))
            assert not isinstance(message, bytes) and message.type == "later"
            await client.close()


async def test_a_sender_in_a_loop_goes_at_its_readers_pace(
    make_app: AppFactory,
) -> None:
    """Issue 18, point 5: a sender that broadcasts megabytes in a loop, with
    no await but its sends, closes none of the clients that keep reading (it
    waits for them), and a client that reads nothing is still dropped."""
    app, _, gone = ws_app(
        make_app,
        WS_MAX_BACKPRESSURE=LIMIT,
        WS_PING_INTERVAL=None,
        WS_DRAIN_TIMEOUT=units(2),
    )
    burst = 2200  # ~4 KB each: ~8.8 MB to each reader, 34 times the limit
    async with serve(app) as server:
        ws = app.ctx.ws
        stalled = await RawClient.connect(server.host, server.port, rcvbuf=4096)
        (stalled_id,) = ws.connections
        readers = [await WSTestClient.connect(server.ws_url()) for _ in range(10)]
        received = [0] * len(readers)

        async def read_all(i: int, client: WSTestClient) -> None:
            for expected in range(burst):
                message = await client.recv(units(30))
                assert not isinstance(message, bytes)
                assert message.data["seq"] == expected  # all of them, in order
                received[i] += 1

        reading = [asyncio.create_task(read_all(i, c)) for i, c in enumerate(readers)]
        for seq in range(burst):  # as a handler would: nothing else awaited
            await ws.broadcast("tick", {"seq": seq, "body": BODY})
        await asyncio.gather(*reading)
        assert received == [burst] * len(readers)
        dropped = await asyncio.wait_for(gone.get(), units(10))
        assert dropped.id == stalled_id
        assert dropped.close_reason == "slow consumer"
        assert len(ws.connections) == len(readers)
        for client in readers:
            await client.close()
        stalled.close_socket()
