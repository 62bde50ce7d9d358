"""HTTP routes that look at and talk to the websocket side."""

from __future__ import annotations

from sanic import Blueprint, Request, json
from sanic.response import JSONResponse

bp = Blueprint("admin", url_prefix="/admin")


@bp.get("/stats")
async def stats(request: Request) -> JSONResponse:
    ws = request.app.ctx.ws  # the same answers on every worker
    return json(
        {
            "connections": await ws.count(),
            "rooms": await ws.rooms(),
            "users": await ws.users(),
            "workers": await ws.workers(),
        }
    )


@bp.post("/announce")
async def announce(request: Request) -> JSONResponse:
    await request.app.ctx.ws.publish("general", "announcement", request.json)
    return json({"ok": True})
