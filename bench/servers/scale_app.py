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
import collections
import contextlib
import functools
import gc
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
    """How late the event loop wakes a 5 ms sleep, and why.

    ``worst`` is the largest lateness by the wall clock: the loop held by
    work, or the process waiting for a core (on two cores shared by four
    workers, Redis and the load clients, the kernel's scheduler alone delays
    a runnable process by tens of ms). ``worst_cpu`` is the largest CPU time
    the loop's thread spent within one late interval: the loop held by work
    of its own, which is what a stall target is about.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_cpu = 0.0
        self.since = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self._resets = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            cpu_before = time.thread_time()
            resets = self._resets
            await asyncio.sleep(TICK)
            if resets != self._resets:
                # Reset within this window: it began before, and holds the
                # work of the request that reset (a full /figures: members()
                # of a 10,000-member room, tens of ms), not the scenario's.
                WINDOW.clear()
                continue
            late = loop.time() - before - TICK
            if late > self.worst:
                self.worst = late
            busy = time.thread_time() - cpu_before
            if busy > self.worst_cpu:
                self.worst_cpu = busy
                WORST_WINDOW[:] = WINDOW
            WINDOW.clear()

    def reset(self) -> None:
        self._resets += 1
        self.worst = 0.0
        self.worst_cpu = 0.0
        WORST_WINDOW.clear()
        self.since = time.monotonic()


lag = LagSampler()

#: With BENCH_TRACE=1: the longest call of each of these, in ms, since the
#: last reset (to tell where a stall comes from; off by default, as wrapping
#: costs a little on every call).
SLOWEST: dict[str, float] = {}


#: With BENCH_TRACE=1: the CPU (ms) of each traced call and collection
#: since the lag sampler's current window began, and the same for the
#: window that set ``worst_cpu``: what the worst stall was made of (the rest
#: of it is untraced work: the event loop's own I/O, other callbacks).
WINDOW: list[tuple[str, float]] = []
WORST_WINDOW: list[tuple[str, float]] = []


def _record(label: str, wall: float, cpu: float) -> None:
    """Keep the longest call of ``label`` by the wall clock, with its CPU."""
    WINDOW.append((label, round(cpu * 1000, 1)))
    if wall * 1000 > SLOWEST.get(label, 0.0):
        SLOWEST[label] = round(wall * 1000, 1)
        SLOWEST[label + ".cpu"] = round(cpu * 1000, 1)


def _trace(owner: Any, name: str) -> None:
    inner = getattr(owner, name)
    label = f"{owner.__name__}.{name}"

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            _record(label, time.perf_counter() - start, time.thread_time() - cpu)

    setattr(owner, name, timed)


def _trace_gc() -> None:
    """The longest garbage collection of each generation, as ``gc.gen<N>``."""
    started = [0.0, 0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter(), time.thread_time()]
            return
        wall, cpu = time.perf_counter() - started[0], time.thread_time() - started[1]
        _record(f"gc.gen{info['generation']}", wall, cpu)

    gc.callbacks.append(callback)


TRACE = os.environ.get("BENCH_TRACE") == "1"
if TRACE:
    _trace_gc()
    from sanic_ws_ext.applier import Applier
    from sanic_ws_ext.cluster import Membership
    from sanic_ws_ext.delivery.backplane import RedisBackplane
    from sanic_ws_ext.heartbeat import Heartbeat
    from sanic_ws_ext.manager import ConnectionManager
    from sanic_ws_ext.telling import Teller
    from sanic_ws_ext.tracker import Tracker
    from sanic_ws_ext.wire import Flusher, Wire

    for owner, name in [
        (RedisBackplane, "_subscriber_read"),
        (Heartbeat, "sweep"),
        (Wire, "resume_writing"),
        (Wire, "data_received"),
        (Tracker, "flush"),
        (Tracker, "_publish_changes"),
        (Tracker, "_tell_members"),
        (Teller, "tell_some"),
        (Tracker, "apply_presence"),
        (Tracker, "apply_answer"),
        (Tracker, "answer"),
        (Tracker, "drop"),
        (Flusher, "flush"),
        (Membership, "drop"),
        (Applier, "apply"),
        (ConnectionManager, "_lost"),
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


async def figures(reset: bool, light: bool = False) -> dict[str, Any]:
    """This worker's figures. ``light``: only what costs nothing to read, for
    polls while a stall is being measured (``members("big")`` builds M
    members, tens of ms of this loop's CPU that the lag sampler would count)."""
    start, cpu = time.perf_counter(), time.thread_time()
    ws = app.ctx.ws
    tracker = ws._tracker
    # Read first: what the figures themselves cost comes after.
    found: dict[str, Any] = {
        "pid": os.getpid(),
        "max_lag_ms": lag.worst * 1000,
        "max_busy_ms": lag.worst_cpu * 1000,
        "lag_since": lag.since,
        "worker": ws._worker,
        "connections": len(ws.connections),
        "table": len(tracker.table),
        "big": tracker.table.count("big")[0],
        # This worker's own members of big: a worker holds big's presence
        # only while it has some.
        "local_big": len(ws._local.rooms.get("big", ())),
        "slow_closed": ws._counters.slow_closed,
        "cpu_s": time.process_time(),
        "slowest_ms": dict(SLOWEST),
        "worst_window_ms": sorted(WORST_WINDOW, key=lambda c: -c[1])[:6],
        "worst_window_calls": collections.Counter(c[0] for c in WORST_WINDOW),
    }
    if not light:
        found.update(
            count=await ws.count(),
            peers=len(ws._membership.peers),
            # members() of a room without presence asks every process: only
            # where it answers from memory.
            members_big=len(await ws.members("big")) if tracker.full("big") else None,
            rss_kb=rss_kb(),
            status=ws.status(),
        )
        if TRACE:
            # What a full collection has to walk (WS_GC_FREEZE: not what
            # was frozen, counted apart).
            objects = gc.get_objects()
            found["gc_objects"] = len(objects)
            found["gc_frozen"] = gc.get_freeze_count()
            kinds = collections.Counter(type(o).__name__ for o in objects)
            found["gc_kinds"] = dict(kinds.most_common(12))
    if reset:
        lag.reset()
        SLOWEST.clear()
    elif TRACE and not light:
        _record("figures", time.perf_counter() - start, time.thread_time() - cpu)
    return found


@app.get("/bench/census")
async def census_route(request: Request) -> JSONResponse:
    """What a full garbage collection walks here, and what it costs: the
    objects the collector tracks, by type, and one ``gc.collect()`` timed
    (a stall of its own: never asked while one is being measured)."""
    objects = gc.get_objects()
    kinds = collections.Counter(type(o).__name__ for o in objects)
    del objects
    start, cpu = time.perf_counter(), time.thread_time()
    gc.collect()
    return json(
        {
            "tracked": sum(kinds.values()),
            "frozen": gc.get_freeze_count(),
            "full_collection_ms": (time.perf_counter() - start) * 1000,
            "full_collection_cpu_ms": (time.thread_time() - cpu) * 1000,
            "kinds": dict(kinds.most_common(40)),
            "connections": len(app.ctx.ws.connections),
        }
    )


@app.get("/bench/figures")
async def figures_route(request: Request) -> JSONResponse:
    args = request.args
    return json(await figures(args.get("reset") == "1", args.get("light") == "1"))


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The same figures on this worker's own port: one request per connection."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        target = head.split(b" ", 2)[1].decode()
        query = parse_qs(urlsplit(target).query)
        found = await figures(query.get("reset") == ["1"], query.get("light") == ["1"])
        body = ujson.dumps(found).encode()
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
