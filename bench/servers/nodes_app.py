"""The node of bench/nodes.py: `sanic nodes_app:app --single-process`.

Runs on today's package and on the one before interest routing (5b7bee7,
``BENCH_BEFORE``): it uses only what both have. A client names its room in
the query string (``/ws?room=r3``), is joined to it in ``on_connect`` (on
today's code the join returns once Redis confirmed the room's subscription)
and then sent ``welcome``. A ``pub`` envelope ``{"room": r, ...}`` is
published to room ``r`` as ``msg`` with the same data, time stamp included.

With ``BENCH_PRESENCE=1`` (today's package only), the shared rooms ``s{i}``
have full presence, and a ``pub`` with ``"presence": true`` first changes
the sender's presence metadata (its entry leaves and joins again: one
presence change per message, batched per interval and room by each node).
Presence ops published and applied are counted, by wrapping the outbox and
the tracker (``presence_out``, ``presence_in``).

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
#: Presence ops this process published, and peers' presence ops it applied.
PRESENCE: collections.Counter[str] = collections.Counter()

if os.environ.get("BENCH_PRESENCE"):
    handlers.room("s{i}", presence="full")


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


def _count_presence() -> None:
    from sanic_ws_ext.outbox import Outbox
    from sanic_ws_ext.tracker import Tracker

    publish, apply = Outbox.presence, Tracker.apply_presence

    @functools.wraps(publish)
    def published(
        self: Outbox, payload: bytes, to: str | None, kind: str, *rest: Any
    ) -> None:
        if kind == "presence":
            PRESENCE["out"] += 1
        publish(self, payload, to, kind, *rest)

    @functools.wraps(apply)
    def applied(self: Tracker, origin: str, batch: dict[str, Any]) -> None:
        PRESENCE["in"] += 1
        apply(self, origin, batch)

    Outbox.presence = published  # type: ignore[method-assign,assignment]
    Tracker.apply_presence = applied  # type: ignore[method-assign]


if os.environ.get("BENCH_PRESENCE"):
    _count_presence()


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
    if msg.data.get("presence"):
        await conn.update_presence({"n": msg.data["n"]})
    await conn.manager.publish(msg.data["room"], "msg", msg.data)


@app.get("/bench/node")
async def node(request: Request) -> JSONResponse:
    found: dict[str, Any] = {
        "pid": os.getpid(),
        "package": PACKAGE,
        "redis_in": dict(REDIS_IN),
        "presence": dict(PRESENCE),
        "status": app.ctx.ws.status(),
    }
    return json(found)
