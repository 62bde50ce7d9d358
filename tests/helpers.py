"""Small builders shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, WSExtension, WSHandlers

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
