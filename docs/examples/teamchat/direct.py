"""Messages to a user, wherever and however often they are connected."""

from __future__ import annotations

from sanic import Blueprint, Request, json
from sanic.response import JSONResponse

from sanic_ws_ext import Connection, Envelope, MessageError, WSHandlers

bp = Blueprint("direct")
ws = WSHandlers(bp)


# --8<-- [start:dm]
@ws.on("dm.send")
async def direct_message(conn: Connection, msg: Envelope) -> None:
    data = msg.data if isinstance(msg.data, dict) else {}
    to, text = data.get("to"), data.get("text")
    if not isinstance(to, str) or not isinstance(text, str):
        raise MessageError("bad_dm", "data must be {to, text}")
    users = await conn.manager.users()  # {user: connections}, cluster-wide
    if to not in users:
        raise MessageError("offline", f"{to} is not connected")
    # Every connection of both users (other tabs, other devices) gets a copy.
    for user in {to, conn.user}:
        if user is not None:
            await conn.manager.send_user(
                user, "dm.message", {"from": conn.user, "to": to, "text": text}
            )


# --8<-- [end:dm]


@bp.post("/notify/<user:str>")
async def notify(request: Request, user: str) -> JSONResponse:
    """From any HTTP route (or background task): a user's every connection."""
    await request.app.ctx.ws.send_user(user, "notice", request.json)
    return json({"sent": user})
