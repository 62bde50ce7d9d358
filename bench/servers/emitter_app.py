"""One worker on the Redis backplane whose "go" is sent by an emitter.

`sanic bench.servers.emitter_app:app` with ``SANIC_WS_BACKPLANE`` and
``SANIC_WS_REDIS_CHANNEL`` set: a client's ``go`` (``{"k"}``) is pushed to
the Redis list ``<channel>:go``, where bench/emitter.py's emitter process
waits for it and broadcasts the K messages itself. With
``BENCH_HANDLER_GO=1`` the handler broadcasts them instead.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis.asyncio as aioredis
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, WSExtension, WSHandlers

app = Sanic("bench_emitter")
app.config.MOTD = False
Extend(app).register(WSExtension)
handlers = WSHandlers(app)
HANDLER_GO = os.environ.get("BENCH_HANDLER_GO") == "1"
PAD = "x" * 40


@app.before_server_start
async def connect(app: Sanic[Any, Any]) -> None:
    app.ctx.redis = aioredis.Redis.from_url(app.config.WS_BACKPLANE)


@app.after_server_stop
async def disconnect(app: Sanic[Any, Any]) -> None:
    await app.ctx.redis.aclose()


@handlers.on("go")
async def go(conn: Connection, msg: Envelope) -> None:
    k = int(msg.data["k"])
    if HANDLER_GO:  # the comparison: this worker broadcasts, as bench.servers.ours
        broadcast = conn.manager.broadcast
        for i in range(k):
            await broadcast("tick", {"t": time.time() * 1000, "i": i, "pad": PAD})
        return
    await app.ctx.redis.rpush(f"{app.config.WS_REDIS_CHANNEL}:go", k)
