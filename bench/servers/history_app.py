"""The server of bench/history.py: `sanic bench.servers.history_app:app --workers 4`.

A client's ``bench.run`` makes its worker publish into a room from ``tasks``
concurrent tasks for ``seconds``, each awaiting every publish; the answer
says how many it made. ``bench.publish`` publishes ``n`` messages and answers
the last position; ``bench.probe`` answers the worker's pid, resident memory
and its event loop's largest stall since the last probe (a sampler wakes
every ``LAG_EVERY`` seconds and records how late it woke).
"""

from __future__ import annotations

import asyncio
import os
import resource
from typing import Any

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
# Deep enough to measure memory per stored message.
handlers.room("deep:{id}", client_join=True, history=History(size=100_000))

LAG_EVERY = 0.005
PAGE = os.sysconf("SC_PAGE_SIZE")
#: The largest lateness of the lag sampler since the last probe, in seconds.
worst = [0.0]


@app.after_server_start
async def sample_lag(app: Sanic[Any, Any]) -> None:
    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_EVERY)
            worst[0] = max(worst[0], loop.time() - before - LAG_EVERY)

    app.add_task(sample())


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


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


@handlers.on("bench.publish")
async def publish_n(conn: Connection, msg: Envelope) -> None:
    ws, room, pad = conn.manager, msg.data["room"], "x" * msg.data.get("pad", 40)
    n, tasks = msg.data["n"], msg.data.get("tasks", 1)
    last: list[Any] = [None]

    async def publish(first: int) -> None:
        # Each awaits its publication's position: tasks > 1 pipeline them.
        for i in range(first, n, tasks):
            position = await ws.publish(room, "m", {"i": i, "pad": pad})
            if position is not None and (
                last[0] is None or position.offset > last[0].offset
            ):
                last[0] = position

    await asyncio.gather(*(publish(t) for t in range(tasks)))
    await conn.send("bench.published", last[0].as_dict() if last[0] else None)


@handlers.on("bench.probe")
async def probe(conn: Connection, msg: Envelope) -> None:
    stall, worst[0] = worst[0], 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    await conn.send(
        "bench.probed",
        {"pid": os.getpid(), "rss": rss(), "peak": peak, "stall_ms": stall * 1000},
    )
