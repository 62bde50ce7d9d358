"""The node of bench/nodes.py: `sanic nodes_app:app --single-process`.

Runs on today's package and on the one before interest routing (5b7bee7,
``BENCH_BEFORE``): it uses only what both have. A client names its room in
the query string (``/ws?room=r3``), is joined to it in ``on_connect`` (on
today's code the join returns once Redis confirmed the room's subscription)
and then sent ``welcome``. A ``pub`` envelope ``{"room": r, ...}`` is
published to room ``r`` as ``msg`` with the same data, time stamp included.

``GET /bench/node`` answers this process's figures: which package it runs
(so the bench can check that ``BENCH_BEFORE`` took), ``ws.status()``, and
every message Redis delivered to it, by channel kind (``all``, ``to``,
``room``). Those are counted by wrapping ``RedisBackplane._receive``, which
both versions call once for every pub/sub message their subscribers read,
before deciding to drop it (their own, a room nobody here is in): the
``received`` of ``status()`` leaves those out, and Redis keeps no count of
what it writes to subscribers.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

import sanic_ws_ext
from sanic_ws_ext import Accept, Connection, Envelope, WSExtension, WSHandlers
from sanic_ws_ext.delivery.backplane import RedisBackplane

app = Sanic("bench_nodes")
app.config.MOTD = False
Extend(app).register(WSExtension)
handlers = WSHandlers(app)

#: Where the package this node runs lives.
PACKAGE = os.path.dirname(os.path.realpath(sanic_ws_ext.__file__))
#: Messages Redis delivered to this process, by the channel's kind.
REDIS_IN: collections.Counter[str] = collections.Counter()


def _count_receive() -> None:
    inner = RedisBackplane._receive

    @functools.wraps(inner)
    def counted(self: RedisBackplane, channel: bytes, data: bytes) -> None:
        # <prefix>:all, <prefix>:to:<process>, <prefix>:room:<room>
        kind = channel.split(b":", 2)[1].decode(errors="replace")
        REDIS_IN[kind] += 1
        inner(self, channel, data)

    RedisBackplane._receive = counted  # type: ignore[method-assign]


_count_receive()


@handlers.verify
async def room_from_query(request: Request) -> Accept:
    return Accept(meta={"room": request.args.get("room")})


@handlers.on_connect
async def join_room(conn: Connection) -> None:
    room = conn.meta["room"]
    if room:
        await conn.join(room)
    await conn.send("welcome", {"pid": os.getpid()})


@handlers.on("pub")
async def pub(conn: Connection, msg: Envelope) -> None:
    await conn.manager.publish(msg.data["room"], "msg", msg.data)


@app.get("/bench/node")
async def node(request: Request) -> JSONResponse:
    found: dict[str, Any] = {
        "pid": os.getpid(),
        "package": PACKAGE,
        "redis_in": dict(REDIS_IN),
        "status": app.ctx.ws.status(),
    }
    return json(found)
