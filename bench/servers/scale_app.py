"""The app of bench/scale.py: `sanic bench.servers.scale_app:app --workers 2`.

Rooms: ``big`` and ``small:{n}``, both with the presence of
``BENCH_PRESENCE`` (``full``, the default, or ``off``). A client names its
rooms in the query string (``/ws?room=big&room=small:7``) and is joined to
them in ``on_connect``, then sent ``welcome`` with its worker's pid.

Each worker also measures its event loop: a task sleeps 5 ms in a loop and
keeps the largest overshoot (the longest the loop was held by anything). Its
figures (pid, connections, presence entries, ``count()``, members of
``big``, largest stall, RSS, CPU time) are served as JSON at
``/bench/figures`` (by whichever worker takes the request) and, so that each
worker can be asked on its own, on a port of its own: a worker writes that
port to ``$BENCH_FIGURES_DIR/<pid>`` once it serves. ``?reset=1`` starts a
new stall measurement after answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import ujson
from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import Accept, Connection, WSExtension, WSHandlers

PRESENCE = os.environ.get("BENCH_PRESENCE", "full")
#: The lag sampler's period.
TICK = 0.005

app = Sanic("bench_scale")
app.config.MOTD = False
Extend(app).register(WSExtension)
handlers = WSHandlers(app)
handlers.room("big", presence=PRESENCE)
handlers.room("small:{n}", presence=PRESENCE)


class LagSampler:
    """The largest time the event loop was late to wake a 5 ms sleep."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.since = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK)
            late = loop.time() - before - TICK
            if late > self.worst:
                self.worst = late

    def reset(self) -> None:
        self.worst = 0.0
        self.since = time.monotonic()


lag = LagSampler()

#: With BENCH_TRACE=1: the longest call of each of these, in ms, since the
#: last reset (to tell where a stall comes from; off by default, as wrapping
#: costs a little on every call).
SLOWEST: dict[str, float] = {}


def _trace(owner: Any, name: str) -> None:
    inner = getattr(owner, name)
    label = f"{owner.__name__}.{name}"

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            took = (time.perf_counter() - start) * 1000
            if took > SLOWEST.get(label, 0.0):
                SLOWEST[label] = took

    setattr(owner, name, timed)


if os.environ.get("BENCH_TRACE") == "1":
    from sanic_ws_ext.cluster import Membership
    from sanic_ws_ext.manager import ConnectionManager
    from sanic_ws_ext.tracker import Tracker
    from sanic_ws_ext.wire import Flusher

    for owner, name in [
        (Tracker, "flush"),
        (Tracker, "apply_presence"),
        (Tracker, "apply_sync"),
        (Tracker, "drop"),
        (Flusher, "flush"),
        (Membership, "drop"),
        (ConnectionManager, "apply"),
        (ConnectionManager, "wire_lost"),
    ]:
        _trace(owner, name)


@handlers.verify
async def rooms_from_query(request: Request) -> Accept:
    return Accept(meta={"rooms": request.args.getlist("room", [])})


@handlers.on_connect
async def join_rooms(conn: Connection) -> None:
    for room in conn.meta["rooms"]:
        await conn.join(room)
    await conn.send("welcome", {"pid": os.getpid()})


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def figures(reset: bool) -> dict[str, Any]:
    ws = app.ctx.ws
    tracker = ws.tracker
    found: dict[str, Any] = {
        "pid": os.getpid(),
        "worker": ws.worker,
        "connections": len(ws.connections),
        "table": len(tracker.table),
        "big": tracker.table.count("big")[0],
        "count": await ws.count(),
        "peers": len(ws.membership.peers),
        "slow_closed": ws.counters.slow_closed,
        # members() of a room without presence asks every process: only
        # where it answers from memory.
        "members_big": len(await ws.members("big")) if tracker.full("big") else None,
        "max_lag_ms": lag.worst * 1000,
        "lag_since": lag.since,
        "rss_kb": rss_kb(),
        "cpu_s": time.process_time(),
        "status": ws.status(),
        "slowest_ms": dict(SLOWEST),
    }
    if reset:
        lag.reset()
        SLOWEST.clear()
    return found


@app.get("/bench/figures")
async def figures_route(request: Request) -> JSONResponse:
    return json(await figures(request.args.get("reset") == "1"))


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The same figures on this worker's own port: one request per connection."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        target = head.split(b" ", 2)[1].decode()
        query = parse_qs(urlsplit(target).query)
        body = ujson.dumps(await figures(query.get("reset") == ["1"])).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    except TimeoutError:
        pass
    finally:
        writer.close()


@app.after_server_start
async def start_figures(app: Sanic[Any, Any]) -> None:
    lag.task = asyncio.get_running_loop().create_task(lag.run())
    where = os.environ.get("BENCH_FIGURES_DIR")
    if not where:
        return
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    app.ctx.bench_figures = server
    port = server.sockets[0].getsockname()[1]
    path = Path(where) / str(os.getpid())
    temp = path.with_suffix(".tmp")
    temp.write_text(str(port))
    temp.rename(path)  # whole or absent: the bench polls for it


@app.before_server_stop
async def stop_figures(app: Sanic[Any, Any]) -> None:
    if lag.task is not None:
        lag.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag.task
    server = getattr(app.ctx, "bench_figures", None)
    if server is not None:
        server.close()
