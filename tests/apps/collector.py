"""An app that shows what the garbage collector sees, for WS_GC_FREEZE tests:
`sanic tests.apps.collector:app`."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import Connection, WSExtension, WSHandlers

app = Sanic("collector")
Extend(app).register(WSExtension)
handlers = WSHandlers(app)


@handlers.on_connect
async def welcome(conn: Connection) -> None:
    await conn.send("welcome", {"id": conn.id})


@app.get("/gc")
async def census(request: Request) -> JSONResponse:
    return json(
        {
            "frozen": gc.get_freeze_count(),
            "connections": len(app.ctx.ws.connections),
            "cycle_alive": _cycle is not None and _cycle() is not None,
        }
    )


@app.post("/gc/collect")
async def collect(request: Request) -> JSONResponse:
    gc.collect()
    return json({"frozen": gc.get_freeze_count()})


class _Node:
    def __init__(self) -> None:
        self.me: Any = self  # a reference cycle: only the collector frees it


_cycle: weakref.ref[_Node] | None = None


@app.post("/gc/cycle")
async def make_cycle(request: Request) -> JSONResponse:
    """A cycle that lives through a full collection, then is dropped."""
    global _cycle
    node = _Node()
    _cycle = weakref.ref(node)
    gc.collect()  # it survives, and is frozen as the collection ends
    del node
    return json({"alive": _cycle() is not None})
