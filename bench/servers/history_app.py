"""The server of bench/history.py: `sanic bench.servers.history_app:app --workers 4`.

A client's ``bench.run`` makes its worker publish into a room from ``tasks``
concurrent tasks for ``seconds``, each awaiting every publish; the answer
says how many it made.
"""

from __future__ import annotations

import asyncio
import os

from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, History, WSExtension, WSHandlers

app = Sanic("history_bench")
# The one reading member is a Python client: let it lag rather than drop it.
app.config.WS_MAX_BACKPRESSURE = 256 << 20
Extend(app).register(WSExtension)
handlers = WSHandlers(app)
handlers.room("history:{id}", client_join=True, history=History(size=1000))
handlers.room("plain:{id}", client_join=True)


@handlers.on_connect
async def welcome(conn: Connection) -> None:
    await conn.send("welcome", {"worker": conn.worker, "pid": os.getpid()})


@handlers.on("bench.run")
async def run(conn: Connection, msg: Envelope) -> None:
    room, tasks, seconds = msg.data["room"], msg.data["tasks"], msg.data["seconds"]
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    made = [0]

    async def publish() -> None:
        ws = conn.manager
        while loop.time() < end:
            await ws.publish(room, "m", made[0])
            made[0] += 1
            if made[0] % 50 == 0:
                await asyncio.sleep(0)  # plain publishes never yield by themselves

    await asyncio.gather(*(publish() for _ in range(tasks)))
    await conn.send("bench.done", made[0])
