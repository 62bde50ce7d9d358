"""Many nodes: interest routing against one channel (issue 15, point 4).

    python bench/nodes.py [--rounds 3] [--nodes 8] [--rate 400] [--seconds 4]
    python bench/nodes.py --smoke      # seconds: fails if a message was lost

Each node is one ``sanic bench.servers.nodes_app --single-process``: one
process per node, so a node's CPU is one PID's and Redis has one subscriber
per node, as a machine of one worker would (``--workers 1`` would add an idle
main process and a relay with nobody to relay to). Node ``i`` has ``--own``
rooms of its own and shares room ``s{i}`` with node ``i + 1`` (a ring: every
shared room on exactly 2 nodes), ``--members`` clients in each room on each
of its nodes. One Node client (``bench/nodesclient.mjs``) holds every
connection; publishers are room members, time-stamping each message, and
every member (sender included) must get every message: a phase with a
message missing or twice is reported, and fails ``--smoke``.

Designs, all in one run, interleaved round by round (the order rotates):

- ``before``: the code before interest routing (commit 5b7bee7: every op to
  every process over one channel), over one Redis;
- ``after``: today's code over one Redis;
- ``cluster``: today's code over a Redis Cluster of three masters;
- ``before-cluster``: 5b7bee7 over the same cluster (plain pub/sub, which
  the cluster forwards to every node);
- ``two``: today's code, the same rooms, clients and messages on 2 nodes
  (node ``i``'s rooms on node ``i mod 2``: every shared room still on 2
  nodes, over one Redis): what a node does per delivered message should not
  grow from 2 nodes to 8;
- ``one``: today's code, every room and client on one node (over one
  Redis): no message crosses nodes, the floor of node CPU per delivered
  message.

``--base REF`` adds ``base`` and ``base-cluster``: today's designs (one
Redis, the cluster) run on the package of commit ``REF`` (``BENCH_BASE=<dir>``
for a checkout of it), to measure a change of today's code against the code
before it in the same run, e.g. ``--base main --only after cluster``.

``BENCH_BEFORE=<dir>``: a checkout of 5b7bee7 (``git worktree add <dir>
5b7bee7``), as for ``bench/peers.py``; without it the package is extracted
from git (``git archive``) into a temporary directory. Its nodes run with
that directory as their working directory (``python -m sanic`` puts it first
on ``sys.path``); each node says which package it runs, and the bench checks.

Two phases per design: ``pairs`` publishes only to the shared rooms (every
room on 2 nodes: the issue's target), ``mixed`` to all rooms in turn. With
``--presence``, a third, ``presence``: the shared rooms have full presence
and each message also changes its sender's presence metadata, for designs
on today's package or ``--base`` (5b7bee7 had no presence to declare); it
adds presence ops published per second and how many peers applied each one
(counted in ``nodes_app``). Per phase, from counters read before and after
it:

- Redis messages per publish: messages Redis delivered to subscribers over
  ``PUBLISH`` + ``SPUBLISH`` commands. Publishes are Redis's own count
  (``INFO commandstats``, summed over masters). Deliveries are counted where
  they arrive: every node counts each pub/sub message its subscribers read
  (``nodes_app`` wraps the backplane's receive, before it drops its own or
  others' rooms); the Redis servers are private to the run, so the nodes are
  all their subscribers. On a cluster, plain publishes also cross the bus:
  bus messages per publish come from ``CLUSTER INFO``.
- Redis CPU: CPU time of the ``redis-server`` processes started here, from
  /proc, per room message the clients published (and idle, per second).
- Node CPU per delivered message: the nodes' CPU time over the phase, over
  the messages the clients received; and the same less what the nodes spent
  idle for as long (measured for ``idle`` seconds before the phases, no
  traffic: beats, heartbeats, pings), which grows with the number of nodes,
  not with messages.
- Latency: from the publisher's stamp to each member's arrival (one client
  process, one clock); p50 and p99 over every delivery.

Redis servers run on free ports with ``--save '' --appendonly no`` in
temporary directories and are ended by PID, as every node (its process
group). The machine's Redis at 6379 is not used. Loopback only; every wait
is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from sanic_ws_ext.testing import SanicProcess  # noqa: E402
from tests.rediscluster import RedisCluster  # noqa: E402
from tests.redisproc import RedisServer  # noqa: E402

#: The last commit before interest routing.
BEFORE_COMMIT = "5b7bee7"
DESIGNS = ["before", "after", "cluster", "before-cluster", "two", "one"]
#: With ``--base REF``: today's designs on one Redis and on the cluster, run
#: on the package of another commit (``base``, ``base-cluster``).
BASE_DESIGNS = ["base", "base-cluster"]
#: What --smoke runs: both designs and both kinds of Redis, in seconds.
SMOKE_DESIGNS = ["before", "after", "cluster"]
PHASES = ["pairs", "mixed"]
#: With ``--presence`` (designs on today's package and base only): the shared
#: rooms have full presence, and each message also changes its sender's.
PRESENCE_PHASE = "presence"
TICKS = os.sysconf("SC_CLK_TCK")

Figures = dict[str, Any]


class BenchError(RuntimeError):
    """A design could not be measured: what failed, and what was seen."""


def cpu_of(pid: int) -> float:
    """CPU seconds of ``pid``'s threads, from /proc.

    The time on CPU in each thread's ``schedstat``, in nanoseconds: the
    utime + stime of ``stat`` count 10 ms ticks, too coarse for a phase of a
    few seconds (``stat`` is the fallback where schedstats are off).
    """
    try:
        return (
            sum(
                int(task.joinpath("schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass(frozen=True)
class Sizes:
    nodes: int
    own: int  # rooms of each node's own
    members: int  # clients per room per node
    rate: int  # room messages per second, the whole cluster
    seconds: float  # per phase
    settle: float  # after every client is in its room
    idle: float  # then measured with no traffic

    def count(self, design: str) -> int:
        return {"one": 1, "two": 2}.get(design, self.nodes)

    def layout(self, nodes: int) -> list[tuple[int, str]]:
        """(node, room) of every room side: ``nodes`` 1 puts all on node 0."""
        sides = []
        for i in range(self.nodes):
            sides += [(i, f"o{i}-{j}") for j in range(self.own)]
            sides += [(i, f"s{i}"), ((i + 1) % self.nodes, f"s{i}")]
        return [(node % nodes, room) for node, room in sides]

    def rooms(self, phase: str) -> list[str]:
        shared = [f"s{i}" for i in range(self.nodes)]
        if phase in ("pairs", PRESENCE_PHASE):
            return shared
        # Interleaved, so each stretch of the phase touches every node.
        own = [f"o{i}-{j}" for j in range(self.own) for i in range(self.nodes)]
        return shared + own


class Redis:
    """The Redis servers of one kind, started here: one, or a cluster."""

    def __init__(self, cluster: bool) -> None:
        self.cluster = cluster
        self.single = None if cluster else RedisServer()
        self.many = RedisCluster(masters=3) if cluster else None
        self.clients: list[aioredis.Redis] = []

    @property
    def url(self) -> str:
        if self.many is not None:
            return self.many.url
        assert self.single is not None
        return self.single.url

    def servers(self) -> list[RedisServer]:
        return self.many.nodes if self.many is not None else [self.single]  # type: ignore[list-item]

    async def __aenter__(self) -> Redis:
        if self.many is not None:
            await self.many.__aenter__()
        else:
            assert self.single is not None
            await self.single.__aenter__()
        self.clients = [aioredis.Redis(port=s.port) for s in self.servers()]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for client in self.clients:
            await client.aclose()
        if self.many is not None:
            await self.many.__aexit__(*exc)
        elif self.single is not None:
            await self.single.__aexit__(*exc)

    async def figures(self) -> Figures:
        """Publishes taken, bus messages sent and CPU seconds, summed."""
        publishes = bus = 0
        for client in self.clients:
            stats = await client.info("commandstats")
            for command in ("publish", "spublish"):
                publishes += stats.get(f"cmdstat_{command}", {}).get("calls", 0)
            if self.cluster:
                info = await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                text = info.decode() if isinstance(info, bytes) else str(info)
                for line in text.split():
                    key, _, value = line.partition(":")
                    if key in (
                        "cluster_stats_messages_publish_sent",
                        "cluster_stats_messages_publishshard_sent",
                    ):
                        bus += int(value)
        cpu = 0.0
        for server in self.servers():
            assert server.proc is not None
            cpu += cpu_of(server.proc.pid)
        return {"publishes": publishes, "bus": bus, "cpu": cpu}


class Client:
    """``node bench/nodesclient.mjs``: a command in, one JSON line back."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed on exit)

    async def __aenter__(self) -> Client:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(BENCH / "nodesclient.mjs"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
            cwd=BENCH,
        )
        return self

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_of(self.proc.pid)

    async def call(self, command: Figures, timeout: float) -> Figures:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(command) + "\n").encode())
        await proc.stdin.drain()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            raise BenchError(f"client: no answer to {command['cmd']}") from None
        if not line:
            self.log.seek(0)
            raise BenchError(f"client exited: {self.log.read()[-3000:]!r}")
        answer: Figures = json.loads(line)
        if "error" in answer:
            raise BenchError(f"client, {command['cmd']}: {answer['error']}")
        return answer

    async def __aexit__(self, *exc: Any) -> None:
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                assert proc.stdin is not None
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # it closes its sockets and exits
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()  # by PID: our child
                    await proc.wait()
        finally:
            self.log.close()


class Node(SanicProcess):
    """A node, ended with SIGKILL to its process group (by PID).

    A graceful stop took ~5 s per design on this machine and is not what is
    measured; the log is still checked for tracebacks, as SanicProcess does.
    """

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.log.seek(0)
            log = self.log.read().decode(errors="replace")
            if exc is None and "Traceback" in log:
                raise BenchError(f"a node logged a traceback:\n{log[-6000:]}")
        finally:
            self._kill()
            self.log.close()


async def node_figures(port: int) -> Figures:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), 10
    )
    try:
        writer.write(
            b"GET /bench/node HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"node on {port}: {head[:80]!r}")
    found: Figures = json.loads(body)
    return found


@asynccontextmanager
async def nodes(
    count: int, url: str, channel: str, package: Path, presence: bool = False
) -> AsyncIterator[list[Node]]:
    """``count`` nodes on ``url`` running the package in ``package``."""
    env = {
        "PYTHONPATH": str(BENCH / "servers"),
        "SANIC_WS_BACKPLANE": url,
        "SANIC_WS_REDIS_CHANNEL": channel,
    }
    if presence:
        env["BENCH_PRESENCE"] = "1"
    if package != ROOT:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # a checkout of before stays as it was
    procs = [
        Node("nodes_app:app", "--single-process", env=env, cwd=package)
        for _ in range(count)
    ]
    async with AsyncExitStack() as stack:
        started = await asyncio.gather(
            *(stack.enter_async_context(p) for p in procs), return_exceptions=True
        )
        for result in started:
            if isinstance(result, BaseException):
                raise result
        for proc in procs:
            seen = (await node_figures(proc.port))["package"]
            if seen != str(package / "sanic_ws_ext"):  # both resolved
                raise BenchError(f"a node runs {seen}, not {package}")
        yield procs


async def snapshot(
    redis: Redis, procs: Sequence[SanicProcess], client: Client
) -> Figures:
    found = await asyncio.gather(*(node_figures(p.port) for p in procs))
    return {
        "redis": await redis.figures(),
        "node_cpu": sum(cpu_of(p.pid) for p in procs),
        "client_cpu": client.cpu(),
        "delivered": sum(sum(f["redis_in"].values()) for f in found),
        "missed": sum(f["status"]["delivery"].get("missed", 0) for f in found),
        "lost": sum(f["status"]["delivery"].get("lost", 0) for f in found),
        "presence_out": sum(f.get("presence", {}).get("out", 0) for f in found),
        "presence_in": sum(f.get("presence", {}).get("in", 0) for f in found),
        "at": time.monotonic(),
    }


async def spy(pid: int, seconds: float, output: Path) -> asyncio.subprocess.Process:
    """py-spy sampling ``pid`` for ``seconds``, into ``output`` (collapsed stacks)."""
    return await asyncio.create_subprocess_exec(
        sys.executable.rsplit("/", 1)[0] + "/py-spy", "record", "--pid", str(pid),
        "--duration", str(max(1, round(seconds))), "--rate", "250",
        "--format", "raw", "--output", str(output), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def measure(
    design: str,
    sizes: Sizes,
    redis: Redis,
    package: Path,
    run_id: str,
    profile: Path | None = None,
    presence: bool = False,
) -> dict[str, Figures]:
    """One design: start its nodes, fill the rooms, run each phase."""
    count = sizes.count(design)
    presence = presence and not design.startswith("before")
    async with (
        nodes(count, redis.url, f"nodes-{run_id}", package, presence) as procs,
        Client() as client,
    ):
        groups = [
            {"url": procs[node].ws_url(), "room": room, "n": sizes.members}
            for node, room in sizes.layout(count)
        ]
        await client.call({"cmd": "open", "groups": groups, "timeout": 60}, 70)
        # Let start-up chatter end (hellos, state swaps, the first beats),
        # then measure the nodes idle: beats and timers, which every
        # delivered message below also pays a share of.
        await asyncio.sleep(sizes.settle)
        first = await snapshot(redis, procs, client)
        await asyncio.sleep(sizes.idle)
        last = await snapshot(redis, procs, client)
        span = last["at"] - first["at"]
        idle = {
            "node": (last["node_cpu"] - first["node_cpu"]) / span,
            "redis": (last["redis"]["cpu"] - first["redis"]["cpu"]) / span,
        }
        out: dict[str, Figures] = {}
        for phase in PHASES + ([PRESENCE_PHASE] if presence else []):
            n = max(1, int(sizes.rate * sizes.seconds))
            first = await snapshot(redis, procs, client)
            spying = None
            if profile is not None:  # node 0, for the phase
                name = f"{run_id.split('-', 1)[1]}-{phase}.txt"
                spying = await spy(procs[0].pid, sizes.seconds, profile / name)
            result = await client.call(
                {
                    "cmd": "run",
                    "phase": f"{run_id}-{phase}",
                    "rooms": sizes.rooms(phase),
                    "rate": sizes.rate,
                    "count": n,
                    "timeout": sizes.seconds + 30,
                    "presence": phase == PRESENCE_PHASE,
                },
                sizes.seconds + 40,
            )
            last = await snapshot(redis, procs, client)
            if spying is not None:
                await asyncio.wait_for(spying.wait(), 30)
            out[phase] = figures(first, last, result, idle)
        return out


def figures(
    first: Figures, last: Figures, result: Figures, idle: dict[str, float]
) -> Figures:
    def d(key: str, sub: str | None = None) -> float:
        if sub is not None:
            return float(last[key][sub] - first[key][sub])
        return float(last[key] - first[key])

    publishes = max(1.0, d("redis", "publishes"))
    sent = result["sent"]
    return {
        **result,
        "lost": result["missing"] + result["duplicates"],
        "node_errors": d("missed") + d("lost"),
        "per_publish": d("delivered") / publishes,
        "per_message": d("delivered") / sent,
        "publishes_per_message": publishes / sent,
        "bus_per_publish": d("redis", "bus") / publishes,
        "redis_us": d("redis", "cpu") / sent * 1e6,
        "node_us": d("node_cpu") / max(1, result["received"]) * 1e6,
        # Less what the nodes spend idle (beats, timers) over as long.
        "node_busy_us": (d("node_cpu") - idle["node"] * d("at"))
        / max(1, result["received"])
        * 1e6,
        "node_idle_ms": idle["node"] * 1000,  # CPU ms per second, all nodes
        "redis_idle_ms": idle["redis"] * 1000,
        "client_share": d("client_cpu") / max(1e-9, d("at")),
        # Presence ops: published per second (all nodes), and applied by a
        # peer per op published (how far each travels).
        "presence_per_s": d("presence_out") / max(1e-9, d("at")),
        "presence_fanout": d("presence_in") / max(1.0, d("presence_out")),
    }


def before_package(
    stack: contextlib.ExitStack,
    commit: str = BEFORE_COMMIT,
    variable: str = "BENCH_BEFORE",
) -> Path | None:
    """The directory holding ``commit``'s ``sanic_ws_ext``, or None."""
    given = os.environ.get(variable)
    if given:
        path = Path(given)
        if not (path / "sanic_ws_ext").is_dir():
            sys.exit(f"{variable}={given} holds no sanic_ws_ext")
        return path.resolve()
    out = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "sanic_ws_ext"],
        capture_output=True,
        timeout=60,
    )
    if out.returncode:
        return None  # a shallow clone: the designs of before are left out
    where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="before-")))
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        tar.extractall(where, filter="data")
    return where


Results = dict[tuple[str, str], list[Figures]]  # (design, phase): a run each


async def run(
    sizes: Sizes,
    rounds: int,
    designs: list[str],
    before: Path | None,
    base: Path | None = None,
    profile: Path | None = None,
    presence: bool = False,
) -> Results:
    results: Results = {}
    async with Redis(cluster=False) as single, Redis(cluster=True) as cluster:
        for r in range(rounds):
            order = designs[r % len(designs) :] + designs[: r % len(designs)]
            for design in order:
                redis = cluster if design.endswith("cluster") else single
                package = (
                    before
                    if design.startswith("before")
                    else base
                    if design.startswith("base")
                    else ROOT
                )
                assert package is not None
                run_id = f"{os.getpid()}-{r}-{design}"
                started = time.monotonic()
                found = await measure(
                    design, sizes, redis, package, run_id, profile, presence
                )
                took = time.monotonic() - started
                print(f"{design}: {took:.1f} s", file=sys.stderr, flush=True)
                for phase, figs in found.items():
                    results.setdefault((design, phase), []).append(figs)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def fmt(values: list[float], digits: int) -> str:
    """Median (min - max)."""
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f} - {max(values):,.{digits}f})"


#: Two tables per phase: what Redis carried, and what the nodes did.
TABLES = [
    [
        ("Redis msgs per publish", "per_publish", 2),
        ("publishes per room msg", "publishes_per_message", 2),
        ("Redis msgs per room msg", "per_message", 2),
        ("bus msgs per publish", "bus_per_publish", 2),
        ("Redis CPU µs per room msg", "redis_us", 1),
        ("Redis idle, CPU ms/s", "redis_idle_ms", 1),
    ],
    [
        ("node CPU µs per delivered", "node_us", 1),
        ("less idle", "node_busy_us", 1),
        ("nodes idle, CPU ms/s", "node_idle_ms", 0),
        ("p50 ms", "p50", 1),
        ("p99 ms", "p99", 1),
    ],
]


#: The presence phase's own columns, beside the node table.
PRESENCE_COLUMNS = [
    ("presence ops per s", "presence_per_s", 0),
    ("applied by peers per op", "presence_fanout", 2),
]


def table(results: Results, sizes: Sizes, designs: list[str]) -> list[str]:
    lines = []
    for phase in [*PHASES, PRESENCE_PHASE]:
        rooms = {
            "pairs": "the shared rooms (each on 2 nodes)",
            "mixed": "every room in turn (own and shared)",
            PRESENCE_PHASE: "the shared rooms, with full presence, each message"
            " also changing its sender's presence",
        }[phase]
        had = [d for d in designs if (d, phase) in results]
        if not had:
            continue
        some = results[(had[0], phase)][0]
        lines += [
            f"**{phase}**: {some['sent']:,} room messages at {sizes.rate:,}/s to"
            f" {rooms}; medians (range) over {len(results[(had[0], phase)])}"
            " rounds.",
        ]
        tables = TABLES
        if phase == PRESENCE_PHASE:
            tables = [TABLES[0], TABLES[1] + PRESENCE_COLUMNS]
        for columns in tables:
            lines += [
                "",
                "| design | nodes | " + " | ".join(c for c, _, _ in columns) + " |",
                "| --- | --- |" + " --- |" * len(columns),
            ]
            for design in had:
                runs = results[(design, phase)]
                cells = [fmt([float(f[key] or 0) for f in runs], digits)
                         for _, key, digits in columns]  # fmt: skip
                lines.append(
                    f"| {design} | {sizes.count(design)} | " + " | ".join(cells) + " |"
                )
        lines.append("")
    share = max(f["client_share"] for runs in results.values() for f in runs)
    lines.append(f"The load client used at most {share:.0%} of a core over a phase.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--own", type=int, default=4)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--rate", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--presence",
        action="store_true",
        help="a third phase: the shared rooms with full presence, each message"
        " changing its sender's (designs on today's package and --base only)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=DESIGNS + BASE_DESIGNS,
        default=DESIGNS,
        metavar="DESIGN",
    )
    parser.add_argument(
        "--base",
        metavar="REF",
        help="also run designs base and base-cluster on this commit's package"
        " (or on BENCH_BASE=<dir>, a checkout of it): a change against the"
        " code before it, in one run",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="sample node 0 of every design with py-spy (pip install py-spy) in"
        " each phase, into DIR/<round>-<design>-<phase>.txt (collapsed stacks);"
        " py-spy takes CPU of its own: CPU figures of such a run are not"
        " comparable with others",
    )
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        sizes = Sizes(3, own=1, members=2, rate=100, seconds=0.5, settle=0.3, idle=0.2)
        rounds = 1
        if args.only == DESIGNS:
            args.only = SMOKE_DESIGNS
    else:
        sizes = Sizes(args.nodes, args.own, args.members, args.rate, args.seconds,
                      settle=2.0, idle=1.0)  # fmt: skip
        rounds = args.rounds
    with contextlib.ExitStack() as stack:
        wanted = list(args.only)
        base = None
        if args.base:
            base = before_package(stack, args.base, "BENCH_BASE")
            if base is None:
                sys.exit(f"no {args.base} in this clone")
            wanted += [d for d in BASE_DESIGNS if d not in wanted]
        before = None
        if any(d.startswith("before") for d in wanted):
            before = before_package(stack)
        designs = [d for d in wanted if before or not d.startswith("before")]
        # Server logs printed on a failure go to stderr: stdout is the report.
        with contextlib.redirect_stdout(sys.stderr):
            results = asyncio.run(
                run(sizes, rounds, designs, before, base, args.profile, args.presence)
            )
    lines = [
        f"{sizes.nodes} nodes (one process each), {sizes.own} rooms of each"
        f" node's own and one shared with the next node, {sizes.members} clients"
        f" per room per node; `uptime` at the end: {os.getloadavg()[0]:.2f}"
        f" {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on"
        f" {os.cpu_count()} cores.",
        "",
        *table(results, sizes, designs),
    ]
    if before is None and any(d.startswith("before") for d in wanted):
        lines.append(f"(No {BEFORE_COMMIT} in this clone: `before` left out.)")
    print("\n".join(lines))
    bad = [
        (design, phase, f["lost"], f["node_errors"])
        for (design, phase), runs in results.items()
        for f in runs
        if f["lost"] or f["node_errors"]
    ]
    if bad:
        sys.exit(f"lost, doubled or missed (design, phase, lost, missed): {bad}")


if __name__ == "__main__":
    main()
