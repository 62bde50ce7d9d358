"""A minimal app for subprocess tests: `sanic tests.apps.basic:app`."""

from __future__ import annotations

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, WSExtension, WSHandlers

app = Sanic("basic")
Extend(app).register(WSExtension)
handlers = WSHandlers(app)


@handlers.on_connect
async def welcome(conn: Connection) -> None:
    await conn.send("welcome", {"id": conn.id, "worker": conn.worker})


@handlers.on("echo")
async def echo(conn: Connection, msg: Envelope) -> None:
    await conn.send("echo", msg.data)


@app.get("/health")
async def health(request: Request) -> JSONResponse:
    return json({"ok": True})
