"""The churn test's server: `sanic tests.apps.churn:app --single-process`.

Clients name themselves with ``?user=``; everyone but "observer" joins room
"churn" (so presence events flow between churners), and each churner's
disconnect handler counts it gone. ``/ticker/start`` starts
a steady broadcast of numbered ticks, ``/ticker/stop`` ends it and returns
how many went out; ``/state`` shows what the manager holds, the event loop's
tasks, the live connection objects and the process's RSS.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import Accept, Connection, WSExtension, WSHandlers
from sanic_ws_ext.wire import Wire

app = Sanic("churn")
app.config.WS_PING_INTERVAL = None
Extend(app).register(WSExtension)
handlers = WSHandlers(app)
handlers.room("churn", presence="full")
ticker: dict[str, Any] = {}
#: Connections whose disconnect handlers have run: the manager's last step
#: for a connection (it leaves ``ws.connections`` before that).
gone = {"count": 0}


@handlers.verify
async def identify(request: Request) -> Accept:
    return Accept(user=request.args.get("user", "anonymous"))


@handlers.on_connect
async def on_connect(conn: Connection) -> None:
    if conn.user != "observer":
        await conn.join("churn")


@handlers.on_disconnect
async def on_disconnect(conn: Connection) -> None:
    gone["count"] += 1


@app.get("/health")
async def health(request: Request) -> JSONResponse:
    return json({"ok": True})


@app.post("/ticker/start")
async def start(request: Request) -> JSONResponse:
    stop = asyncio.Event()

    async def tick() -> int:
        sent = 0
        while not stop.is_set():
            await request.app.ctx.ws.broadcast("tick", sent)
            sent += 1
            await asyncio.sleep(0.001)  # a steady trickle, not a busy loop
        return sent

    ticker.update(stop=stop, task=asyncio.get_running_loop().create_task(tick()))
    return json({"ok": True})


@app.post("/ticker/stop")
async def stop(request: Request) -> JSONResponse:
    ticker["stop"].set()
    sent = await ticker.pop("task")
    await request.app.ctx.ws.broadcast("done", sent)
    return json({"sent": sent})


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@app.get("/state")
async def state(request: Request) -> JSONResponse:
    ws = request.app.ctx.ws
    gc.collect()
    # WS_GC_FREEZE froze every survivor as the collection ended, out of
    # get_objects()'s sight: thawed, they are counted (the next full
    # collection freezes them again).
    gc.unfreeze()
    objects = gc.get_objects()
    return json(
        {
            "connections": len(ws.connections),
            "disconnected": gone["count"],
            "count": await ws.count(),
            "rooms": await ws.rooms(),
            "users": await ws.users(),
            "members": [m.id for m in await ws.members("churn")],
            "tasks": len(asyncio.all_tasks()),
            "live_connections": sum(type(o) is Connection for o in objects),
            "live_protocols": sum(type(o) is Wire for o in objects),
            "rss_kb": rss_kb(),
        }
    )
