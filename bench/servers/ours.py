"""sanic-ws-ext, every feature on: `sanic bench.servers.ours:app`.

``BENCH_BODY=N``: each tick carries N bytes of chat-like text
(``bench/chattext.py``) instead of the ~40-byte pad; ``SANIC_WS_COMPRESSION=true``
turns permessage-deflate on (the ``ours-deflate`` peer).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, WSExtension, WSHandlers

# bench/ on the path, as for the scripts there: the chat-like text of ticks.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from chattext import bodies, env_size

app = Sanic("bench_ours")
app.config.MOTD = False
Extend(app).register(WSExtension)
handlers = WSHandlers(app)
PAD = "x" * 40
BODIES = bodies(env_size())


@handlers.on("go")
async def go(conn: Connection, msg: Envelope) -> None:
    broadcast = conn.manager.broadcast
    if BODIES:
        for i in range(msg.data["k"]):
            body = BODIES[i % len(BODIES)]
            await broadcast("tick", {"t": time.time() * 1000, "i": i, "body": body})
        return
    for i in range(msg.data["k"]):
        await broadcast("tick", {"t": time.time() * 1000, "i": i, "pad": PAD})


@handlers.on("chat")
async def chat(conn: Connection, msg: Envelope) -> None:
    await conn.manager.broadcast("chat", msg.data)


@handlers.on("add")
async def add(conn: Connection, msg: Envelope) -> int:
    """A request (bench/requests.py): the reply carries the sum."""
    return int(msg.data["a"] + msg.data["b"])


@handlers.on("whoami")
async def whoami(conn: Connection, msg: Envelope) -> dict[str, object]:
    """A request (bench/requests.py): this connection's id and its worker."""
    return {"id": conn.id, "worker": os.getpid()}


@handlers.on("ask_peer")
async def ask_peer(conn: Connection, msg: Envelope) -> object:
    """A request (bench/requests.py): ask the connection ``to``, on whichever
    worker, to ``add``; its answer is the reply."""
    data = msg.data
    return await conn.manager.request(data["to"], "add", {"a": data["a"], "b": 1})


@handlers.on("flood")
async def flood(conn: Connection, msg: Envelope) -> None:
    """A sender in a loop (bench/flood.py): ``n`` broadcasts of ``size``
    bytes with nothing else awaited, then ``flood.end`` to everyone, saying
    which connections of those open at the start were closed, by code."""
    manager = conn.manager
    broadcast = manager.broadcast
    body = "x" * int(msg.data["size"])
    before = manager._counters.slow_closed
    conns = list(manager.connections.values())
    for i in range(int(msg.data["n"])):
        await broadcast("flood", {"i": i, "body": body})
    closed: dict[str, int] = {}
    for each in conns:
        if each.close_code is not None:
            closed[str(each.close_code)] = closed.get(str(each.close_code), 0) + 1
    slow = manager._counters.slow_closed - before
    await broadcast("flood.end", {"closed": closed, "slow_closed": slow})
