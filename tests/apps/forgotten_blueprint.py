"""An app whose handlers sit on a blueprint it never registered.

`sanic tests.apps.forgotten_blueprint:app` must refuse to start, naming the
blueprint: otherwise the handlers would silently never run.
"""

from __future__ import annotations

from sanic import Blueprint, Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, WSExtension, WSHandlers

app = Sanic("forgotten_blueprint")
Extend(app).register(WSExtension)

bp = Blueprint("forgotten_chat")
chat = WSHandlers(bp)  # app.blueprint(bp) is missing


@chat.on("chat.send")
async def relay(conn: Connection, msg: Envelope) -> None:
    await conn.manager.broadcast("chat.message", msg.data)
