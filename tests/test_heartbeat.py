"""One heartbeat timer closes peers that stop answering, and only those."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sanic import Sanic
from websockets.frames import Opcode

from sanic_ws_ext import CloseCode, Connection
from sanic_ws_ext.testing import serve

from .conftest import units
from .helpers import until, ws_app
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]


def build(make_app: AppFactory) -> tuple[Sanic[Any, Any], asyncio.Queue[Connection]]:
    app, _, gone = ws_app(
        make_app, WS_PING_INTERVAL=units(0.2), WS_PING_TIMEOUT=units(0.2)
    )
    return app, gone


async def test_silent_peer_is_closed_within_the_bound(make_app: AppFactory) -> None:
    app, gone = build(make_app)
    interval = timeout = units(0.2)
    tick = min(interval, timeout) / 5
    async with serve(app) as server:
        loop = asyncio.get_running_loop()
        raw = await RawClient.connect(server.host, server.port)
        started = loop.time()
        ping = await raw.read_frame()
        assert ping.opcode is Opcode.PING
        # Never answer: the server must give up on its own.
        conn = await asyncio.wait_for(gone.get(), units(5))
        elapsed = loop.time() - started
        assert conn.close_code == CloseCode.INTERNAL_ERROR
        assert conn.close_reason == "ping timeout"
        # interval + timeout, plus two sweeps of the shared timer, plus slack
        # for a loaded machine.
        assert elapsed <= interval + timeout + 2 * tick + units(0.5)
        assert app.ctx.ws.get(conn.id) is None
        raw.close_socket()


async def test_answering_peer_stays(make_app: AppFactory) -> None:
    app, gone = build(make_app)
    async with serve(app) as server:
        raw = await RawClient.connect(server.host, server.port)
        (conn_id,) = app.ctx.ws.connections
        for _ in range(4):  # four pings, i.e. well past interval + timeout
            frame = await raw.read_frame(units(5))
            assert frame.opcode is Opcode.PING
            raw.send_frame(Opcode.PONG, bytes(frame.data))
        assert app.ctx.ws.get(conn_id) is not None
        assert gone.empty()
        raw.close_socket()


async def test_busy_peer_is_not_pinged(make_app: AppFactory) -> None:
    """Any frame from the client proves it alive; pings go to silent ones only."""
    app, _ = build(make_app)
    interval = units(0.2)
    async with serve(app) as server:
        busy = await RawClient.connect(server.host, server.port)
        silent = await RawClient.connect(server.host, server.port)

        async def chatter() -> None:
            # Pacing traffic, not synchronization: a frame every quarter interval.
            while True:
                busy.send_frame(Opcode.PONG, b"")
                await asyncio.sleep(interval / 4)

        talking = asyncio.create_task(chatter())
        pings = 0
        while pings < 3:  # past interval + timeout for `busy` several times over
            frame = await silent.read_frame(units(5))
            if frame.opcode is Opcode.PING:
                pings += 1
                silent.send_frame(Opcode.PONG, b"")
        talking.cancel()
        busy.send_frame(Opcode.TEXT, b'{"type": "x"}')
        frame = await busy.read_frame()  # the unknown_type error, no ping before it
        assert frame.opcode is Opcode.TEXT
        busy.close_socket()
        silent.close_socket()


async def test_a_sweep_in_slices_reaches_every_connection(
    make_app: AppFactory, monkeypatch: Any
) -> None:
    """The sweep checks a slice of connections per loop pass (5,000): with
    slices of 2, two answering peers fill the first slice, and the five
    silent ones after them are still each pinged and closed."""
    monkeypatch.setattr("sanic_ws_ext.heartbeat._SWEEP_SLICE", 2)
    app, gone = build(make_app)
    async with serve(app) as server:
        answering = [await RawClient.connect(server.host, server.port) for _ in "ab"]
        pongs = [0, 0]

        async def answer(i: int) -> None:
            while True:
                frame = await answering[i].read_frame(units(5))
                assert frame.opcode is Opcode.PING
                answering[i].send_frame(Opcode.PONG, bytes(frame.data))
                pongs[i] += 1

        answers = [asyncio.create_task(answer(i)) for i in range(2)]
        silent = [await RawClient.connect(server.host, server.port) for _ in range(5)]
        for raw in silent:
            assert (await raw.read_frame(units(5))).opcode is Opcode.PING
        closed = [await asyncio.wait_for(gone.get(), units(5)) for _ in silent]
        assert {c.close_reason for c in closed} == {"ping timeout"}
        seen = min(pongs)
        await until(lambda: min(pongs) >= seen + 2)  # still pinged, still here
        assert not any(task.done() for task in answers)
        for task in answers:
            task.cancel()
        assert len(app.ctx.ws.connections) == 2 and gone.empty()
        for raw in [*silent, *answering]:
            raw.close_socket()
