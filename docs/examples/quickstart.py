"""The quickstart app (docs/quickstart.md): a chat, with quickstart.html.

Run it from this folder::

    sanic quickstart:app --dev              # one worker, reloads on change
    sanic quickstart:app --workers 4        # four workers, one server

and open http://127.0.0.1:8000/ (the page is quickstart.html; the websocket
is ``ws://127.0.0.1:8000/ws``). docs/examples/test_quickstart.py tests
it, tests/test_nginx.py runs it behind nginx, tests/test_docs_examples.py
runs two copies joined by Redis.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanic import Request, Sanic, json
from sanic.response import HTTPResponse, JSONResponse, file
from sanic_ext import Extend

from sanic_ws_ext import (
    Connection,
    ConnectionManager,
    Envelope,
    MessageError,
    WSExtension,
    WSHandlers,
)

log = logging.getLogger("quickstart")
PAGE = Path(__file__).with_name("quickstart.html")


@dataclass
class ChatSend:
    """A line of chat: ``{"type": "chat.send", "data": {"text": "hi"}}``."""

    text: str


def create_app(name: str = "quickstart") -> Sanic[Any, Any]:
    """The app: websockets at ``/ws``, a chat page at ``/``, ``/health``."""
    app: Sanic[Any, Any] = Sanic(name)
    Extend(app).register(WSExtension)  # WS_* keys: set them before this line
    chat = WSHandlers(app)

    @chat.on_connect
    async def welcome(conn: Connection) -> None:
        # conn.worker names the process that holds this connection.
        await conn.send("welcome", {"id": conn.id, "worker": conn.worker})

    @chat.on("chat.send")
    async def say(conn: Connection, msg: Envelope[ChatSend]) -> None:
        # msg.data is a ChatSend: data without a string "text" never gets here.
        if not msg.data.text.strip():
            raise MessageError("bad_text", "say something")
        # Reaches every connection, on every worker (and every machine).
        await conn.manager.broadcast(
            "chat.message", {"from": conn.id, "text": msg.data.text}
        )

    @chat.on_disconnect
    async def bye(conn: Connection) -> None:
        await conn.manager.broadcast("chat.left", {"id": conn.id})

    @app.get("/")
    async def page(request: Request) -> HTTPResponse:
        return await file(PAGE)  # quickstart.html: the browser side

    # --8<-- [start:health]
    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        ws = request.app.ctx.ws
        return json(
            {
                "worker": os.environ.get("SANIC_WORKER_NAME", "main"),
                "connections": await ws.count(),  # cluster-wide
                # None, or the Redis link: connected, reconnecting, down.
                "backplane": ws.backplane_state,
            }
        )

    @chat.on_backplane
    async def link_changed(manager: ConnectionManager, state: str) -> None:
        # Only with WS_BACKPLANE = "redis://...": this worker's link to Redis.
        log.warning("redis link is %s", state)

    # --8<-- [end:health]
    return app


app = create_app()
