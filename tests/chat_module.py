"""Handlers declared in their own module, on their own blueprint."""

from __future__ import annotations

from sanic import Blueprint

from sanic_ws_ext import Connection, Envelope, WSHandlers

bp = Blueprint("chat_module")
chat = WSHandlers(bp)


@chat.on("chat.say")
async def say(conn: Connection, msg: Envelope) -> None:
    await conn.manager.broadcast(
        "chat.said", {"from": conn.id, "text": msg.data}, exclude=[conn.id]
    )
