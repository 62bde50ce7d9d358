"""An app for multi-worker tests: `sanic tests.apps.cluster:app --workers 4`.

Clients drive the manager through messages; every reply names the worker.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import (
    Accept,
    Connection,
    Envelope,
    RequestError,
    WSExtension,
    WSHandlers,
)

app = Sanic("cluster")
app.config.WS_RELAY_BEAT = float(os.environ.get("TEST_RELAY_BEAT", "0.5"))
for key in ("WS_PEER_SUSPECT", "WS_PEER_TIMEOUT"):
    if f"TEST_{key}" in os.environ:
        app.config[key] = float(os.environ[f"TEST_{key}"])
Extend(app).register(WSExtension)
handlers = WSHandlers(app)
handlers.room("lobby", presence="full", expose_ids=True)
handlers.room("watch", presence="full", expose_ids=True)
handlers.room("big:{name}", presence="full")
handlers.room("counted:{name}", presence="counts")


@handlers.verify
async def identify(request: Request) -> Accept:
    return Accept(user=request.args.get("user"))


@handlers.on_connect
async def welcome(conn: Connection) -> None:
    await conn.send(
        "welcome", {"id": conn.id, "worker": conn.worker, "pid": os.getpid()}
    )


@handlers.on("do")
async def do(conn: Connection, msg: Envelope) -> None:
    """``{"op": name, ...args}``: one manager call, answered with "done"."""
    ws = conn.manager
    args: dict[str, Any] = msg.data
    op = args["op"]
    result: Any = None
    # Volatile and keyed sends travel as flags of the op (issue 18).
    volatile: bool = args.get("volatile", False)
    key: str | None = args.get("key")
    if op == "broadcast":
        await ws.broadcast(
            "b",
            args["data"],
            exclude=args.get("exclude", ()),
            volatile=volatile,
            key=key,
        )
    elif op == "burst":
        # No yield of its own: awaiting the sends paces it to its readers.
        for i in range(args["n"]):
            await ws.broadcast("burst", {"from": conn.id, "i": i})
    elif op == "paced":
        # Spread over time, so a fault can land in the middle of it.
        for i in range(args["n"]):
            await ws.broadcast("burst", {"from": conn.id, "i": i})
            if i % 10 == 9:
                await asyncio.sleep(args["pause"])
    elif op == "send":
        await ws.send(args["to"], "direct", args["data"], volatile=volatile, key=key)
    elif op == "send_user":
        await ws.send_user(args["user"], "for_user", args["data"])
    elif op == "join":
        await ws.join(args.get("id", conn.id), args["room"])
    elif op == "leave":
        await ws.leave(args.get("id", conn.id), args["room"])
    elif op == "publish":
        await ws.publish(args["room"], "room", args["data"])
    elif op == "disconnect":
        await ws.disconnect(args["to"], 4000, "kicked")
    elif op == "disconnect_user":
        await ws.disconnect_user(args["user"], 4401, "logged out")
    elif op == "members":
        result = sorted(m.id for m in await ws.members(args["room"]))
    elif op == "count":
        result = await ws.count()
    elif op == "users":
        result = await ws.users()
    elif op == "status":
        result = ws.status()
    elif op == "request":
        # Ask a connection on any worker; the reply comes back here.
        try:
            answer = await ws.request(
                args["to"], "question", args.get("data"), timeout=args["timeout"]
            )
            result = {"data": answer}
        except RequestError as exc:
            result = {"error": type(exc).__name__, "code": getattr(exc, "code", None)}
    elif op == "block":
        # A handler that blocks the event loop (a sync call by mistake).
        time.sleep(args["seconds"])  # noqa: ASYNC251 (the point of this op)
    await conn.send("done", {"op": op, "result": result, "worker": conn.worker})


@app.get("/health")
async def health(request: Request) -> JSONResponse:
    return json(
        {
            "worker": os.environ.get("SANIC_WORKER_NAME"),
            "backplane": request.app.ctx.ws.backplane_state,
        }
    )


@app.post("/broadcast")
async def broadcast(request: Request) -> JSONResponse:
    await request.app.ctx.ws.broadcast("b", request.json)
    return json({"worker": os.environ.get("SANIC_WORKER_NAME")})


@app.post("/later")
async def later(request: Request) -> JSONResponse:
    """Broadcast from a background task, after this response."""

    async def announce() -> None:
        await request.app.ctx.ws.broadcast("b", request.json)

    request.app.add_task(announce())
    return json({"worker": os.environ.get("SANIC_WORKER_NAME")})


@app.post("/restart")
async def restart(request: Request) -> JSONResponse:
    request.app.m.restart(request.json["worker"])
    return json({"ok": True})
