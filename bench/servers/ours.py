"""sanic-ws-ext, every feature on: `sanic bench.servers.ours:app`.

``BENCH_BODY=N``: each tick carries N bytes of chat-like text
(``bench/chattext.py``) instead of the ~40-byte pad; ``SANIC_WS_COMPRESSION=true``
turns permessage-deflate on (the ``ours-deflate`` peer).
"""

from __future__ import annotations

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
