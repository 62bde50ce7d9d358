"""Regressions: ways a connection could get stuck, or a hook lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sanic import Sanic
from websockets.frames import Close, Opcode

from sanic_ws_ext import Connection, Envelope, ErrorCode
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import ws_app
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]


build = ws_app


def stalled_reader_config() -> dict[str, Any]:
    """No pings and no backlog limit: only the close timer can free the socket."""
    return {
        "WS_PING_INTERVAL": None,
        "WS_CLOSE_TIMEOUT": units(0.5),
        "WS_MAX_BACKPRESSURE": None,
    }


async def _backlogged_raw(
    app: Sanic[Any, Any], host: str, port: int
) -> tuple[RawClient, Connection]:
    """A raw client that does not read, with unsent bytes waiting for it."""
    raw = await RawClient.connect(host, port, rcvbuf=4096)
    (conn,) = app.ctx.ws.connections.values()
    while conn.backlog < 256 * 1024:  # past what the kernel buffers took
        await app.ctx.ws.broadcast(raw=b"x" * 65536)
        await asyncio.sleep(0)  # let the flusher write
    return raw, conn


async def test_eof_from_a_client_that_stopped_reading(make_app: AppFactory) -> None:
    app, _, gone = build(make_app, **stalled_reader_config())
    async with serve(app) as server:
        raw, conn = await _backlogged_raw(app, server.host, server.port)
        raw.writer.write_eof()  # half-close, no close frame
        dropped = await asyncio.wait_for(gone.get(), units(5))
        assert dropped.id == conn.id
        assert app.ctx.ws.get(conn.id) is None
        await app.ctx.ws.disconnect(conn.id)  # a late disconnect is harmless
        raw.close_socket()


async def test_client_close_while_not_reading(make_app: AppFactory) -> None:
    app, _, gone = build(make_app, **stalled_reader_config())
    async with serve(app) as server:
        raw, conn = await _backlogged_raw(app, server.host, server.port)
        raw.send_frame(Opcode.CLOSE, Close(4100, "bye").serialize())
        dropped = await asyncio.wait_for(gone.get(), units(5))
        assert (dropped.id, dropped.close_code, dropped.close_reason) == (
            conn.id,
            4100,
            "bye",
        )
        raw.close_socket()


async def test_slow_handlers_do_not_fail_the_heartbeat(make_app: AppFactory) -> None:
    """Reading pauses while handlers lag; unread pongs are not silence."""
    app, handlers, gone = build(
        make_app,
        WS_PING_INTERVAL=units(0.1),
        WS_PING_TIMEOUT=units(0.1),
        WS_MAX_QUEUE=2,
    )

    @handlers.on("work")
    async def work(conn: Connection, msg: Envelope) -> None:
        await asyncio.sleep(units(0.15))  # slow work, longer than a ping round
        await conn.send("done", msg.data)

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
        for i in range(8):
            await client.send("work", i)
        assert [
            (await client.expect("done", units(10))).data for _ in range(8)
        ] == list(range(8))
        assert gone.empty()
        await client.close()


async def test_cancelled_handler_is_an_error_not_the_end(make_app: AppFactory) -> None:
    app, handlers, gone = build(make_app)
    errors: list[Exception] = []

    @handlers.on("wait")
    async def wait(conn: Connection, msg: Envelope) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        await future

    @handlers.on("ping")
    async def ping(conn: Connection, msg: Envelope) -> None:
        await conn.send("pong")

    @handlers.on_error
    async def on_error(conn: Connection, exc: Exception) -> None:
        errors.append(exc)

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
        await client.send("wait")
        assert (await client.expect("error")).data["code"] == ErrorCode.HANDLER_ERROR
        await client.send("ping")
        await client.expect("pong")
        await client.close()
        dropped = await asyncio.wait_for(gone.get(), units(5))
        assert dropped.close_code == 1000
        assert len(errors) == 1 and isinstance(
            errors[0].__cause__, asyncio.CancelledError
        )


async def test_clients_closed_before_the_apps_own_shutdown(
    make_app: AppFactory,
) -> None:
    app, _, _ = build(make_app)
    open_at_app_shutdown: list[int] = []

    @app.before_server_stop
    async def app_teardown(app: Sanic[Any, Any]) -> None:
        open_at_app_shutdown.append(len(app.ctx.ws.connections))

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
    assert open_at_app_shutdown == [0]
    assert await client.wait_closed() == (1001, "server shutting down")
