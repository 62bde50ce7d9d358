"""Small builders shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, WSExtension, WSHandlers
from sanic_ws_ext.testing import time_unit

AppFactory = Callable[..., Sanic[Any, Any]]


def ws_app(
    make_app: AppFactory, **config: Any
) -> tuple[Sanic[Any, Any], WSHandlers, asyncio.Queue[Connection]]:
    """An app with the extension and a queue of connections as they close."""
    app = make_app(**config)
    Extend(app).register(WSExtension)
    handlers = WSHandlers(app)
    gone: asyncio.Queue[Connection] = asyncio.Queue()

    @handlers.on_disconnect
    async def on_gone(conn: Connection) -> None:
        gone.put_nowait(conn)

    return app, handlers, gone


async def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Poll ``condition`` (no event to await) until it holds; fail after
    ``seconds`` test time units."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds * time_unit()
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (state of another process or replicated: no event to
    await) until it holds; fail after 10 test time units."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * time_unit()
    while not await check():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)
