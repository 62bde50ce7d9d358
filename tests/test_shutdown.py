"""Shutdown sends what was accepted, then 1001, and never hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sanic import Sanic
from sanic_ext import Extend
from websockets.exceptions import ConnectionClosed

from sanic_ws_ext import CloseCode, Connection, WSExtension, WSHandlers
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]


def build(
    make_app: AppFactory, **config: Any
) -> tuple[Sanic[Any, Any], list[Connection]]:
    app = make_app(**config)
    Extend(app).register(WSExtension)
    handlers = WSHandlers(app)
    gone: list[Connection] = []

    @handlers.on_disconnect
    async def on_gone(conn: Connection) -> None:
        await asyncio.sleep(0)  # a hook that awaits still completes
        gone.append(conn)

    return app, gone


async def read_until_closed(client: WSTestClient) -> list[int]:
    seqs: list[int] = []
    try:
        while True:
            message = await client.recv(units(10))
            assert not isinstance(message, bytes)
            seqs.append(message.data)
    except ConnectionClosed:
        return seqs


async def test_accepted_messages_then_1001(make_app: AppFactory) -> None:
    app, gone = build(make_app)
    n = 500
    async with serve(app) as server:
        clients = [await WSTestClient.connect(server.ws_url()) for _ in range(5)]
        readers = [asyncio.create_task(read_until_closed(c)) for c in clients]
        for i in range(n):
            await app.ctx.ws.broadcast("tick", i)
        # Leaving the block stops the server right after the last broadcast.
    # Disconnect hooks have all run by the time shutdown returns.
    assert len(gone) == 5
    assert all(conn.close_code == CloseCode.GOING_AWAY for conn in gone)
    for client, reader in zip(clients, readers, strict=True):
        assert await reader == list(range(n))
        rcvd = client.connection.protocol.close_rcvd
        assert rcvd is not None
        assert (rcvd.code, rcvd.reason) == (1001, "server shutting down")


async def test_unresponsive_client_does_not_hang_shutdown(make_app: AppFactory) -> None:
    close_timeout = units(0.5)
    app, gone = build(make_app, WS_CLOSE_TIMEOUT=close_timeout)
    loop = asyncio.get_running_loop()
    async with serve(app) as server:
        silent = await RawClient.connect(server.host, server.port)  # never replies
        polite = await WSTestClient.connect(server.ws_url())
        started = loop.time()
    elapsed = loop.time() - started
    assert elapsed <= close_timeout + units(1.5)
    assert len(gone) == 2
    assert await polite.wait_closed() == (1001, "server shutting down")
    silent.close_socket()
