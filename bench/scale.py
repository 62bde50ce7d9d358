"""Cluster scale (issue 14): presence and membership at tens of thousands.

    python bench/scale.py [--rounds 3] [--members 10000] [--concurrency 100]
    python bench/scale.py --smoke      # seconds: checks nothing is lost

Two nodes of two workers each (``sanic bench.servers.scale_app:app --workers
2``, ``WS_BACKPLANE`` on the machine's Redis with a channel of their own per
run), nothing pinned: on two cores the servers, Redis and the load clients
share both. The load client is ``bench/scaleclient.mjs`` (Node, raw sockets),
one process per node. With ``--members M``: ``big`` has M members, 2M
connections in all, every one in a room ``small:{n}`` of 100; both rooms
with full presence unless said otherwise.

1. Convergence: node A with its M connections (2M/3 of them in ``big``),
   then node B starts empty and its first members (a tenth of its share of
   ``big``) join ``big``: the time from starting B until its workers'
   ``count()`` and ``members("big")`` are whole, and each worker with a
   member of ``big`` holds its whole table (a node holds only the rooms it
   has members of, asking the others for their parts; polled every 50 ms on
   each worker's figures port).
2. Kill: node B gets its M connections (the rest of ``big``), then ``kill
   -9`` of A's worker that holds half of ``big`` (the load client places
   them: a connection that lands on a worker whose share is full is opened
   again). On the survivors: the largest event-loop stall after the kill
   (their lag samplers), the presence frames of ``big`` each surviving member
   got (every one counted; a sample of ~200 read whole, counted until their
   view of ``big`` is right), members closed (1008 by the servers' counters,
   any close by the client), and the time until every sampled view and every
   survivor's table is right.
3. Reconnect storm: a fresh cluster; M connections open at once (at most
   ``--concurrency`` handshakes in flight per node: Sanic's listen backlog is
   100) into ``big``, until all have their ``presence.state``; against the
   same M into no room, until all are welcomed. Order alternates by round.
4. Memory: a fresh cluster per presence mode (``big`` and ``small:{n}`` full,
   then off): each worker's RSS with no connection, then with M on node A,
   then with M more on node B (on each node half in ``big``, all in small
   rooms: 1.5 presence entries per connection when full). A's connections
   cost B's workers only what presence replicates, and B follows none of
   A's rooms in step 1: KB per remote connection is B's growth over M; KB
   per local one is A's growth, less its remote share, over its own.

Every figure is a median (range) over rounds, with the servers' CPU seconds
(user + system, from /proc) over the same span. Every wait is bounded; every
process started here is ended by PID (SanicProcess: its process group).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from sanic_ws_ext.testing import SanicProcess  # noqa: E402

APP = "bench.servers.scale_app:app"
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
TICKS = os.sysconf("SC_CLK_TCK")
#: BENCH_TRACE=1: the workers time their presence and delivery calls, and
#: the kill scenario prints each survivor's slowest.
TRACE = os.environ.get("BENCH_TRACE") == "1"
#: BENCH_SPY=<dir>: py-spy (if installed) samples each survivor for 5 s from
#: the kill on, into <dir>/<pid>.txt (collapsed stacks), to tell what a
#: stall is made of.
SPY = os.environ.get("BENCH_SPY")
#: BENCH_PERF=<dir>: perf (``/usr/bin/perf``) records each survivor's
#: thread for 5 s from the kill on, kernel included, at 2 kHz, into
#: <dir>/<pid>.data: what py-spy cannot see (uvloop's C code, the TCP path
#: of a loopback write), with timestamps that tell one tick from the next.
PERF = os.environ.get("BENCH_PERF")


async def spy(pid: int) -> asyncio.subprocess.Process:
    assert SPY is not None
    return await asyncio.create_subprocess_exec(
        "py-spy", "record", "--pid", str(pid), "--duration", "5", "--rate", "500",
        "--format", "raw", "--output", f"{SPY}/{pid}.txt", "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def perf(pid: int) -> asyncio.subprocess.Process:
    assert PERF is not None
    return await asyncio.create_subprocess_exec(
        "perf", "record", "-F", "2000", "-g", "-p", str(pid),
        "-o", f"{PERF}/{pid}.data", "--", "sleep", "5",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


#: Tracked members that survive the kill (read whole): about this many.
SAMPLE = 200

Figures = dict[str, Any]


class ScaleError(RuntimeError):
    """A scenario could not finish: what was waited for, and what was seen."""


@dataclass(frozen=True)
class Sizes:
    members: int  # of big
    concurrency: int  # handshakes in flight per node
    group: int = 100  # members of each small room
    pause: float = 1.0  # settling pauses, seconds

    @property
    def total(self) -> int:
        return 2 * self.members

    @property
    def track(self) -> int:
        """Every how many members of big a connection is tracked."""
        return max(1, self.members // (2 * SAMPLE))

    def timeout(self, connections: int) -> float:
        """Seconds to allow for opening ``connections`` (generous: a bound)."""
        return 60 + connections / 50


async def until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    limit: float,
    every: float = 0.05,
    seen: Callable[[], str] | None = None,
) -> float:
    """Poll ``check`` until it holds; the seconds it took. Raises at ``limit``."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > limit:
            raise ScaleError(
                f"{what}: not within {limit:.0f}s" + (f"; {seen()}" if seen else "")
            )
        await asyncio.sleep(every)  # other processes: nothing to await


def _cpu_of(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def http_json(port: int, path: str, timeout: float = 10.0) -> Figures:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), timeout
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ScaleError(f"figures on port {port}: {head[:80]!r}")
    found: Figures = json.loads(body)
    return found


class Node:
    """One ``sanic --workers 2`` of the cluster, and each worker's figures."""

    def __init__(self, name: str, channel: str, presence: str = "full") -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"scale-{name}-"))
        env = {
            "PYTHONPATH": str(ROOT),
            "SANIC_WS_BACKPLANE": REDIS,
            "SANIC_WS_REDIS_CHANNEL": channel,
            "BENCH_FIGURES_DIR": str(self.dir),
            "BENCH_PRESENCE": presence,
            "BENCH_TRACE": "1" if TRACE else "0",
        }
        self.proc = SanicProcess(APP, "--workers", "2", env=env, cwd=ROOT)
        self._cpu: dict[int, float] = {}

    async def __aenter__(self) -> Node:
        await self.proc.__aenter__()
        try:
            await until(
                f"node {self.name}: both workers' figures",
                self._two_workers,
                60,
                seen=lambda: str(sorted(self.ports())),
            )
        except BaseException as exc:
            await self.proc.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _two_workers(self) -> bool:
        return len(self.ports()) == 2

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.proc.__aexit__(exc_type, exc, tb)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def ws_url(self) -> str:
        return self.proc.ws_url()

    def up_at(self) -> float:
        """When the last worker was up (wall clock): its figures file's time."""
        return max(path.stat().st_mtime for path in self.dir.iterdir())

    def ports(self) -> dict[int, int]:
        """Each live worker's pid and figures port."""
        found = {}
        for path in self.dir.iterdir():
            if path.suffix or not path.name.isdigit():
                continue
            pid = int(path.name)
            if _alive(pid):
                found[pid] = int(path.read_text())
        return found

    def pids(self) -> list[int]:
        return sorted(self.ports())

    async def figures(
        self,
        *,
        reset: bool = False,
        light: bool = False,
        only: Collection[int] | None = None,
    ) -> dict[int, Figures]:
        """Each live worker's figures (or those of ``only``; ``light``: the
        cheap ones); one that dies meanwhile is left out."""
        ports = {p: port for p, port in self.ports().items() if not only or p in only}
        path = "/figures" + ("?reset=1" if reset else "?light=1" if light else "")
        answers = await asyncio.gather(
            *(http_json(p, path) for p in ports.values()), return_exceptions=True
        )
        found: dict[int, Figures] = {}
        for pid, answer in zip(ports, answers, strict=True):
            if isinstance(answer, BaseException):
                if _alive(pid):
                    raise ScaleError(f"figures of worker {pid}: {answer!r}")
                continue
            found[pid] = answer
        return found

    def cpu(self, pids: Sequence[int] | None = None) -> float:
        """CPU seconds of the node's processes (or of ``pids``); the dead keep
        what they had when last seen."""
        for pid in [self.proc.pid, *self.ports()]:
            value = _cpu_of(pid)
            if value is not None:
                self._cpu[pid] = value
        chosen = self._cpu if pids is None else {p: self._cpu.get(p, 0) for p in pids}
        return sum(chosen.values())


class LoadClient:
    """One ``node bench/scaleclient.mjs``: commands in, one JSON line back each."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed on exit)

    async def __aenter__(self) -> LoadClient:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(BENCH / "scaleclient.mjs"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
            limit=1 << 22,
        )
        return self

    def cpu(self) -> float:
        """The client's own CPU seconds so far."""
        assert self.proc is not None
        return _cpu_of(self.proc.pid) or 0.0

    async def call(self, command: dict[str, Any], timeout: float = 30) -> Figures:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(command) + "\n").encode())
        await proc.stdin.drain()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            raise ScaleError(
                f"client {self.name}: no answer to {command['cmd']} in {timeout:.0f}s"
            ) from None
        if not line:
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace")[-3000:]
            raise ScaleError(f"client {self.name} exited: {tail}")
        answer: Figures = json.loads(line)
        if "error" in answer:
            raise ScaleError(f"client {self.name}, {command['cmd']}: {answer}")
        return answer

    async def open(self, sizes: Sizes, url: str, n: int, **spec: Any) -> Figures:
        limit = sizes.timeout(n)
        command = {
            "cmd": "open",
            "url": url,
            "n": n,
            "concurrency": sizes.concurrency,
            "timeout": limit,
            **spec,
        }
        return await self.call(command, limit + 10)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                assert proc.stdin is not None
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the client destroys its sockets and exits
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()  # by PID: it is our child
                    await proc.wait()
        finally:
            self.log.close()


@asynccontextmanager
async def two_nodes(name: str, presence: str = "full") -> AsyncIterator[list[Node]]:
    """Nodes A and B, started side by side and stopped side by side."""
    nodes = [Node("a", name, presence), Node("b", name, presence)]
    started = await asyncio.gather(
        *(n.__aenter__() for n in nodes), return_exceptions=True
    )
    failed = [r for r in started if isinstance(r, BaseException)]
    if failed:
        await asyncio.gather(
            *(n.__aexit__(type(failed[0]), failed[0], None)
              for n, r in zip(nodes, started, strict=True)
              if not isinstance(r, BaseException)),
            return_exceptions=True,
        )  # fmt: skip
        raise failed[0]
    try:
        yield nodes
    except BaseException as exc:
        await asyncio.gather(
            *(n.__aexit__(type(exc), exc, exc.__traceback__) for n in nodes),
            return_exceptions=True,
        )
        raise
    stopped = await asyncio.gather(
        *(n.__aexit__(None, None, None) for n in nodes), return_exceptions=True
    )
    for result in stopped:
        if isinstance(result, BaseException):
            raise result


def channel() -> str:
    return f"bench-scale-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _small(sizes: Sizes, offset: int) -> dict[str, Any]:
    return {"group": sizes.group, "offset": offset}


async def tables(nodes: Sequence[Node]) -> dict[int, Figures]:
    found: dict[int, Figures] = {}
    for node in nodes:
        found.update(await node.figures())
    return found


async def settled(
    what: str, nodes: Sequence[Node], want: Callable[[Figures], bool], limit: float
) -> float:
    """Wait until every worker of ``nodes`` passes ``want``."""
    last: dict[int, Figures] = {}

    async def check() -> bool:
        nonlocal last
        last = await tables(nodes)
        return all(want(f) for f in last.values())

    def seen() -> str:
        keys = (
            "worker", "connections", "table", "big", "local_big", "count",
            "members_big",
        )  # fmt: skip
        return str(
            {
                pid: {
                    **{k: f[k] for k in keys},
                    "membership": f["status"]["membership"],
                    "delivery": f["status"]["delivery"].get("state"),
                }
                for pid, f in last.items()
            }
        )

    return await until(what, check, limit, every=0.1, seen=seen)


async def quiet(clients: Sequence[LoadClient], limit: float) -> None:
    """Wait until the clients' tracked views stop changing (the join flood ended)."""
    previous: list[Any] = []

    async def check() -> bool:
        nonlocal previous
        now = [await c.call({"cmd": "views"}) for c in clients]
        same = now == previous
        previous = now
        return same

    await until("presence frames to stop", check, limit, every=0.5)


# -- 1 and 2: convergence of a new node, and a worker killed --------------------


async def cluster_round(sizes: Sizes, smoke: bool) -> dict[str, float]:
    m, half = sizes.members, sizes.members
    big_a = (2 * m) // 3
    big_b = m - big_a
    out: dict[str, float] = {}
    name = channel()
    async with AsyncExitStack() as stack:
        ca = await stack.enter_async_context(LoadClient("A"))
        cb = await stack.enter_async_context(LoadClient("B"))
        a = await stack.enter_async_context(Node("a", name))
        target, other = a.pids()
        quota = {str(target): m // 2, str(other): big_a - m // 2}
        track = {"track": sizes.track}
        opened = await ca.open(
            sizes, a.ws_url(), big_a, big=True, ready="big", quota=quota,
            **_small(sizes, 0), **track,
        )  # fmt: skip
        await ca.open(sizes, a.ws_url(), half - big_a, **_small(sizes, big_a))
        on_target = int(opened["per_pid"].get(str(target), 0))
        # Each worker holds the rooms it has members of (both have some of
        # big): its table is big plus its own small rooms.
        await settled(
            "node A's tables",
            [a],
            lambda f: f["big"] == big_a and f["count"] == half,
            sizes.timeout(half),
        )

        # 1. Node B starts empty.
        cpu_a = a.cpu()
        start = time.monotonic()
        b = Node("b", name)
        await stack.enter_async_context(b)
        out["b_serving_s"] = time.monotonic() - start
        cpu_b_up = b.cpu()

        # B's first members of big: B follows big from then on (a node holds
        # only the rooms it has members of), asking A for its part.
        first = max(1, big_b // 10)
        firsts = await cb.open(
            sizes, b.ws_url(), first, big=True, ready="big", **_small(sizes, half)
        )
        whole = big_a + first

        async def converged() -> bool:
            fb = await b.figures()
            return (
                all(
                    f["members_big"] == whole and f["count"] == half + first
                    for f in fb.values()
                )
                and all(f["big"] in (0, whole) for f in fb.values())
                and any(f["big"] == whole for f in fb.values())
            )

        await until("node B converging on A", converged, sizes.timeout(half), 0.05)
        # B's workers may converge while the first poll still waits for both
        # to serve: the time from the last one's start is the sharper figure.
        out["convergence_after_up_s"] = max(0.0, time.time() - b.up_at())
        out["convergence_s"] = time.monotonic() - start
        cpu_b = b.cpu()
        out["convergence_cpu_b_s"] = cpu_b
        out["convergence_cpu_b_after_up_s"] = cpu_b - cpu_b_up
        out["convergence_cpu_a_s"] = a.cpu() - cpu_a

        # B's members: the rest of big, then the others. Both of B's workers
        # get half of big: a worker holds big's presence only while it has
        # members of it, and the kernel's accepts can leave one with none.
        halves = (big_b // 2, big_b - big_b // 2)
        shares = dict(zip(b.pids(), halves, strict=True))
        landed = firsts["per_pid"]
        quota_b = {
            str(pid): max(0, share - int(landed.get(str(pid), 0)))
            for pid, share in shares.items()
        }
        await cb.open(
            sizes, b.ws_url(), big_b - first, big=True, ready="big",
            quota=quota_b, **_small(sizes, half + first), **track,
        )  # fmt: skip
        await cb.open(sizes, b.ws_url(), half - big_b, **_small(sizes, half + big_b))
        await settled(
            "every table of big whole",
            [a, b],
            lambda f: f["big"] == m,
            sizes.timeout(sizes.total),
        )
        if smoke or TRACE:
            spread = {**await a.figures(light=True), **await b.figures(light=True)}
            mine = {pid: f["local_big"] for pid, f in spread.items()}
            print(f"  members of big by worker: {mine}", file=sys.stderr, flush=True)
        await quiet([ca, cb], sizes.timeout(sizes.total))
        for client in (ca, cb):
            views = (await client.call({"cmd": "views"}))["views"]
            if views["n"] and (views["min"] != m or views["max"] != m):
                raise ScaleError(f"tracked views of big before the kill: {views}")

        # 2. Kill the worker holding half of big.
        survivors = [other, *b.pids()]
        before = {**await a.figures(reset=True), **await b.figures(reset=True)}
        cpu_before = a.cpu([other]) + b.cpu()
        cpu_clients = ca.cpu() + cb.cpu()
        for client in (ca, cb):
            await client.call({"cmd": "mark"})
        spies = [await spy(pid) for pid in survivors] if SPY else []
        if PERF:
            spies += [await perf(pid) for pid in survivors]
            await asyncio.sleep(0.5)  # perf attaches
        os.kill(target, signal.SIGKILL)
        expect = m - on_target
        query = {"cmd": "report", "dead": target, "expect": expect}

        async def tables_right() -> bool:
            # Never the killed worker: it may answer, or reset, while it dies.
            # Light: a poll must not stall the loops whose stalls are measured.
            figs = {
                **await a.figures(only=[other], light=True),
                **await b.figures(light=True),
            }
            return all(figs[p]["big"] == expect for p in survivors if p in figs)

        async def views_right() -> bool:
            reports = [await c.call(query) for c in (ca, cb)]
            return all(r["tracked_wrong"] == 0 for r in reports)

        # Apart: a client busy reading is slow to answer, and must not delay
        # the servers' figure. The views' times are the client's own stamps.
        tables, _ = await asyncio.gather(
            until("survivors' tables of big", tables_right, 60, every=0.05),
            until("survivors' views of big", views_right, 120, every=0.25),
        )
        await asyncio.sleep(sizes.pause)  # anything still on its way arrives
        reports = [await c.call(query) for c in (ca, cb)]
        for proc in spies:
            await proc.wait()
        after = {
            **await a.figures(only=[other], light=not TRACE),
            **await b.figures(light=not TRACE),
        }
        out["kill_cpu_s"] = a.cpu([other]) + b.cpu() - cpu_before
        out["kill_client_cpu_s"] = ca.cpu() + cb.cpu() - cpu_clients
        out["kill_share"] = on_target / m
        out["kill_stall_ms"] = max(after[p]["max_busy_ms"] for p in survivors)
        out["kill_late_ms"] = max(after[p]["max_lag_ms"] for p in survivors)
        out["kill_slow_closed"] = sum(
            after[p]["slow_closed"] - before[p]["slow_closed"] for p in survivors
        )
        out["kill_client_closed"] = sum(
            sum(r["closed_since_mark"].values()) for r in reports
        )
        out["kill_sample"] = sum(r["tracked"] for r in reports)
        out["kill_frames_sample_max"] = max(
            r["frames_until_right"]["max"] or 0 for r in reports
        )
        out["kill_frames_sample_median"] = _median_of(reports, "frames_until_right")
        out["kill_frames_all_max"] = max(
            r["frames_since_mark"]["max"] or 0 for r in reports
        )
        out["kill_views_right_s"] = (
            max(r["right_ms"]["max"] or 0 for r in reports) / 1e3
        )
        out["kill_tables_right_s"] = tables
        out["kill_survivors"] = sum(r["survivors"] for r in reports)
        out["kill_client_mb"] = sum(r["bytes_since_mark"] for r in reports) / 1e6
        if smoke or TRACE:
            print(f"  kill: {reports}", file=sys.stderr, flush=True)
        if TRACE:
            for pid in survivors:
                slowest = after[pid]["slowest_ms"]
                objects = (after[pid].get("gc_objects"), after[pid].get("gc_kinds"))
                stall = after[pid]["max_busy_ms"]
                window = after[pid]["worst_window_ms"], after[pid]["worst_window_calls"]
                print(
                    f"  kill: {pid} stall {stall:.1f} ms, of it traced {window};"
                    f" gc objects {objects}, frozen {after[pid].get('gc_frozen')}"
                    f" slowest {slowest}",
                    file=sys.stderr,
                    flush=True,
                )
        for client in (ca, cb):
            await client.call({"cmd": "close"})
    return out


def _median_of(reports: list[Figures], key: str) -> float:
    """The median of two halves' medians, weighted by their sizes (near enough)."""
    parts = [(r[key]["median"], r[key]["n"]) for r in reports if r[key]["n"]]
    if not parts:
        return 0.0
    total = sum(n for _, n in parts)
    return float(sum(v * n for v, n in parts) / total)


# -- 3: the reconnect storm -----------------------------------------------------------


async def storm_round(sizes: Sizes, first: str) -> dict[str, float]:
    out: dict[str, float] = {}
    name = channel()
    each = sizes.members // 2
    async with AsyncExitStack() as stack:
        ca = await stack.enter_async_context(LoadClient("A"))
        cb = await stack.enter_async_context(LoadClient("B"))
        nodes = await stack.enter_async_context(two_nodes(name))
        a, b = nodes
        await asyncio.sleep(sizes.pause)  # both nodes have met
        order = ["big", "none"] if first == "big" else ["none", "big"]
        for variant in order:
            spec: dict[str, Any] = (
                {"big": True, "ready": "big"} if variant == "big" else {}
            )
            cpu = a.cpu() + b.cpu()
            cpu_clients = ca.cpu() + cb.cpu()
            results = await asyncio.gather(
                ca.open(sizes, a.ws_url(), each, **spec),
                cb.open(sizes, b.ws_url(), sizes.members - each, **spec),
            )
            out[f"storm_{variant}_s"] = max(r["ready_ms"] for r in results) / 1e3
            out[f"storm_{variant}_cpu_s"] = a.cpu() + b.cpu() - cpu
            out[f"storm_{variant}_client_cpu_s"] = ca.cpu() + cb.cpu() - cpu_clients
            out[f"storm_{variant}_mb"] = sum(r["bytes"] for r in results) / 1e6
            out["storm_retries"] = out.get("storm_retries", 0) + sum(
                r["failures"] for r in results
            )
            for client in (ca, cb):
                await client.call({"cmd": "close"})
            await settled(
                "every connection gone",
                nodes,
                lambda f: f["connections"] == 0 and f["table"] == 0,
                sizes.timeout(sizes.members),
            )
            await asyncio.sleep(sizes.pause)  # the disconnect work is over
    out["storm_ratio"] = out["storm_big_s"] / out["storm_none_s"]
    return out


# -- 4: memory -----------------------------------------------------------------------


async def memory_round(sizes: Sizes, presence: str) -> dict[str, float]:
    out: dict[str, float] = {}
    name = channel()
    m = sizes.members
    full = presence == "full"
    big: dict[str, Any] = {"big": True, "ready": "big" if full else None}
    # Each node: M connections, half of them in big (big is M, as above),
    # every one in a small room: in full mode, 1.5 entries per connection,
    # held by the workers with members of their rooms.
    async with AsyncExitStack() as stack:
        ca = await stack.enter_async_context(LoadClient("A"))
        cb = await stack.enter_async_context(LoadClient("B"))
        nodes = await stack.enter_async_context(two_nodes(name, presence))
        a, b = nodes
        # Imports done, both nodes met, memory at rest.
        await asyncio.sleep(2 * sizes.pause)
        base = await tables(nodes)

        async def fill(client: LoadClient, node: Node, at: int) -> dict[int, Figures]:
            await client.open(sizes, node.ws_url(), m // 2, **big, **_small(sizes, at))
            await client.open(
                sizes, node.ws_url(), m - m // 2, **_small(sizes, at + m // 2)
            )
            # Big's table is whole on every worker with members of it (none
            # on B's workers in step 1: they follow none of A's rooms).
            want = (m // 2) * (1 + at // m) if full else 0
            count = m + at
            await settled(
                "every view of the connections",
                nodes,
                lambda f: f["count"] == count and f["big"] in (0, want),
                sizes.timeout(m),
            )
            await asyncio.sleep(sizes.pause)
            return await tables(nodes)

        step1 = await fill(ca, a, 0)
        step2 = await fill(cb, b, m)
        a_pids, b_pids = a.pids(), b.pids()
        for client in (ca, cb):
            await client.call({"cmd": "close"})

    def grew(pid: int, at: dict[int, Figures]) -> float:
        return float(at[pid]["rss_kb"] - base[pid]["rss_kb"])

    # B's workers hold only remote connections after step 1.
    remote = [grew(p, step1) / m for p in b_pids]
    per_remote = sum(remote) / len(remote)
    local = []
    for pid in a_pids:
        mine = step1[pid]["connections"]
        others = m - mine
        local.append((grew(pid, step1) - per_remote * others) / max(1, mine))
    out[f"mem_{presence}_remote_kb"] = per_remote
    out[f"mem_{presence}_local_kb"] = sum(local) / len(local)
    for label, at in (("0", base), ("1", step1), ("2", step2)):
        rss = [f["rss_kb"] / 1024 for f in at.values()]
        out[f"mem_{presence}_rss{label}_mb"] = sum(rss) / len(rss)
    return out


# -- the report ----------------------------------------------------------------------


def fmt(values: list[float], digits: int = 0) -> str:
    """Median (min - max)."""
    values = sorted(values)
    mid = len(values) // 2
    med = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({values[0]:,.{digits}f} - {values[-1]:,.{digits}f})"


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


ROWS: list[tuple[str, str, int, str]] = [
    # (key, what, digits, target)
    ("b_serving_s", "1. node B serving (both workers), s", 2, ""),
    ("convergence_s", "1. B's first members hold big whole, s", 2, ""),
    ("convergence_after_up_s", "1. same, from B's last worker up, s", 2, ""),
    ("convergence_cpu_b_s", "1. CPU of B from its start to converged, s", 2, ""),
    ("convergence_cpu_b_after_up_s", "1. of which after its workers were up, s", 2,
     ""),
    ("convergence_cpu_a_s", "1. CPU of A meanwhile, s", 2, ""),
    ("kill_share", "2. share of big on the killed worker", 2, "~0.5"),
    ("kill_stall_ms", "2. survivors' largest loop stall after the kill (the"
     " loop's own CPU in one 5 ms tick), ms", 1, "<= 50"),
    ("kill_late_ms", "2. same by the wall clock (incl. waiting for a core), ms",
     1, ""),
    ("kill_frames_sample_max", "2. presence frames per survivor (sample, until"
     " right), max", 0, "<= 3"),
    ("kill_frames_sample_median", "2. same, median", 1, "<= 3"),
    ("kill_frames_all_max", "2. presence frames per survivor (all, kill + until"
     " right + 1 s), max", 0, "<= 3"),
    ("kill_slow_closed", "2. survivors closed 1008 (servers' counters)", 0, "0"),
    ("kill_client_closed", "2. survivors closed, any code (client)", 0, "0"),
    ("kill_views_right_s", "2. every sampled view right, s after the kill", 2, ""),
    ("kill_tables_right_s", "2. every survivor's table right, s", 2, ""),
    ("kill_client_mb", "2. bytes the clients read from the kill on, MB", 0, ""),
    ("kill_cpu_s", "2. survivors' CPU from the kill to +1 s after right, s", 2, ""),
    ("kill_client_cpu_s", "2. clients' CPU over the same span, s", 2, ""),
    ("storm_big_s", "3. storm into big: all connected with their state, s", 2, ""),
    ("storm_none_s", "3. storm into no room: all connected, s", 2, ""),
    ("storm_ratio", "3. big / no room", 2, "<= 2"),
    ("storm_big_cpu_s", "3. servers' CPU, storm into big, s", 2, ""),
    ("storm_none_cpu_s", "3. servers' CPU, storm into no room, s", 2, ""),
    ("storm_big_client_cpu_s", "3. clients' CPU, storm into big, s", 2, ""),
    ("storm_none_client_cpu_s", "3. clients' CPU, storm into no room, s", 2, ""),
    ("storm_big_mb", "3. bytes the clients read, storm into big, MB", 0, ""),
    ("storm_none_mb", "3. bytes the clients read, storm into no room, MB", 0, ""),
    ("storm_retries", "3. handshakes retried (both storms)", 0, ""),
    ("mem_full_local_kb", "4. presence full: KB per local connection", 1, ""),
    ("mem_full_remote_kb", "4. presence full: KB per remote connection", 2, ""),
    ("mem_off_local_kb", "4. presence off: KB per local connection", 1, ""),
    ("mem_off_remote_kb", "4. presence off: KB per remote connection", 2, "~0"),
    ("mem_full_rss0_mb", "4. full: RSS per worker at 0 / M / 2M connections, MB",
     0, ""),
    ("mem_off_rss0_mb", "4. off: RSS per worker at 0 / M / 2M connections, MB", 0,
     ""),
]  # fmt: skip


def verdict(key: str, value: float) -> str:
    checks: dict[str, Callable[[float], bool]] = {
        "kill_stall_ms": lambda v: v <= 50,
        "kill_frames_sample_max": lambda v: v <= 3,
        "kill_frames_sample_median": lambda v: v <= 3,
        "kill_frames_all_max": lambda v: v <= 3,
        "kill_slow_closed": lambda v: v == 0,
        "kill_client_closed": lambda v: v == 0,
        "storm_ratio": lambda v: v <= 2,
        "mem_off_remote_kb": lambda v: v <= 0.1,
    }
    check = checks.get(key)
    if check is None:
        return ""
    return "met" if check(value) else "**not met**"


def table(
    results: dict[str, list[float]], sizes: Sizes, rounds: int, *, smoke: bool = False
) -> list[str]:
    if smoke:
        return [
            "Smoke run: it checked that every connection came, every view and"
            " table came right and no member was lost; at this size the figures"
            " mean nothing.",
            "",
            "| figure | value |",
            "| --- | --- |",
            *(
                f"| {what} | {fmt(results[key], digits)} |"
                for key, what, digits, _ in ROWS
                if results.get(key)
            ),
        ]
    out = [
        f"Cluster scale: 2 nodes x 2 workers over Redis; big = {sizes.members:,}"
        f" members, {sizes.total:,} connections, rooms of {sizes.group};"
        f" {sizes.concurrency} handshakes in flight per node; {rounds} round(s),"
        " medians (range).",
        "",
        "| figure | value | target | |",
        "| --- | --- | --- | --- |",
    ]
    for key, what, digits, target in ROWS:
        values = results.get(key)
        if not values:
            continue
        if key.endswith("rss0_mb"):
            mode = key.split("_")[1]
            steps = [results.get(f"mem_{mode}_rss{i}_mb", []) for i in range(3)]
            shown = " / ".join(fmt(s, digits) for s in steps if s)
            out.append(f"| {what} | {shown} | | |")
            continue
        out.append(
            f"| {what} | {fmt(values, digits)} | {target} |"
            f" {verdict(key, median(values)) if target else ''} |"
        )
    load = " / ".join(f"{x:.1f}" for x in (*LOAD, *os.getloadavg()[:1]))
    out += ["", f"Load average (1 min) at the start / at the end: {load}."]
    return out


SCENARIOS = ("cluster", "storm", "memory")
#: The 1-minute load average when the run started (others may share the CPU).
LOAD = os.getloadavg()[:1]


async def run(
    sizes: Sizes, rounds: int, scenarios: Sequence[str], *, smoke: bool = False
) -> list[str]:
    results: dict[str, list[float]] = {}

    def keep(found: dict[str, float]) -> None:
        print(f"  {found}", file=sys.stderr, flush=True)
        for key, value in found.items():
            results.setdefault(key, []).append(value)

    if smoke:
        # Nothing is measured: both at once, to keep CI's smoke run short.
        found = await asyncio.gather(
            cluster_round(sizes, smoke), storm_round(sizes, "big")
        )
        for one in found:
            keep(one)
        lost = smoke_check(results)
        if lost:
            raise ScaleError(f"smoke: members lost: {lost}")
        return table(results, sizes, 1, smoke=True)
    failed: list[str] = []

    async def attempt(what: str, scenario: Awaitable[dict[str, float]]) -> None:
        # A scenario that fails (a bound passed) is reported, not fatal: the
        # other rounds still count, and the table says what failed and why.
        try:
            keep(await scenario)
        except ScaleError as exc:
            failed.append(f"{what}: {str(exc)[:2000]}")
            print(f"scale: {failed[-1]}", file=sys.stderr, flush=True)

    for r in range(rounds):
        if "cluster" in scenarios:
            await attempt(f"round {r + 1}, cluster", cluster_round(sizes, smoke))
        if "storm" in scenarios:
            first = "big" if r % 2 == 0 else "none"
            await attempt(f"round {r + 1}, storm", storm_round(sizes, first))
        if "memory" in scenarios:
            for presence in ("full", "off"):
                await attempt(
                    f"round {r + 1}, memory {presence}", memory_round(sizes, presence)
                )
        print(f"scale: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    lines = table(results, sizes, rounds)
    if failed:
        lines += ["", "Failed (left out of the figures above):", ""]
        lines += [f"- {line}" for line in failed]
    return lines


def smoke_check(results: dict[str, list[float]]) -> list[str]:
    """What ``--smoke`` requires beyond what the run checked as it went (every
    connection ready, every table and view right, or it raised): no member
    closed by the kill of another's worker."""
    return [
        f"{key} = {results[key]}"
        for key in ("kill_slow_closed", "kill_client_closed")
        if any(results.get(key, [1]))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, default=SCENARIOS, metavar="NAME"
    )
    args = parser.parse_args()
    # Each load client holds one node's connections: raise our limit to the
    # hard one (children inherit it), and say so if it cannot be enough.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.smoke:
        sizes = Sizes(members=60, concurrency=20, group=10, pause=0.2)
        with contextlib.redirect_stdout(sys.stderr):
            lines = asyncio.run(run(sizes, 1, ["cluster", "storm"], smoke=True))
        print("\n".join(lines))
        return
    sizes = Sizes(members=args.members, concurrency=args.concurrency)
    if sizes.members + 1000 > hard:
        sys.exit(f"RLIMIT_NOFILE {hard} is too low for {sizes.members:,} per node")
    # Server logs printed on a failure go to stderr: stdout is the report.
    with contextlib.redirect_stdout(sys.stderr):
        lines = asyncio.run(run(sizes, args.rounds, args.only))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
