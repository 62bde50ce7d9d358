"""History rooms: publications per second, recovery at once, memory per message.

    python bench/history.py [--workers 4] [--tasks 1,16] [--seconds 3] [--rounds 3]
                            [--recovery 1000] [--missed 100] [--memory 100000]
                            [--redis]

A real `sanic --workers N` (bench/servers/history_app.py). One client per
worker asks its worker to publish into one room for a few seconds from
``tasks`` concurrent tasks, each awaiting every ``publish``: with one task,
a history room's publish waits for the sequencer's answer (a relay round
trip from the other workers), so this is its worst case; more tasks
pipeline. One member of the room reads everything and must get every
publication. Rounds alternate plain and history rooms.

With ``--redis``: two machines of ``workers / 2`` each over a private
``redis-server`` (Redis numbers and keeps history rooms); the member and the
recovering clients are on the first; memory is then Redis's (see
bench/redis_history.py) and not measured here.

Recovery (``--recovery N``, 0 to skip): a room gets ``--missed`` publications
after a position; then N clients (``bench/recoveryclient.mjs``, Node, at most
100 handshakes in flight) connect at once and each joins with that position
as ``since``: each must get exactly the missed ones, in order, and
``recovered: true``. Reported: the time from the first connect until the last
client caught up, per-client times, the largest event-loop stall of any
worker over the run (each worker's sampler, bench/servers/history_app.py),
and the workers' CPU (user + system, /proc).

Memory (``--memory M``, 0 to skip): the resident memory of all workers before
and after M publications (~80-byte payloads) kept by one room of 100,000
(the most a room may keep), per kept publication. It counts what the store
holds and what Python's allocator kept from the publishing: an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sanic_ws_ext.testing import SanicProcess, WSTestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import cpu_seconds
from peers import fmt

from tests.redisproc import RedisServer

BENCH = Path(__file__).resolve().parent
APP = "bench.servers.history_app:app"


async def workers_covered(server: SanicProcess, n: int) -> list[WSTestClient]:
    by_worker: dict[str, WSTestClient] = {}
    spare = []
    while len(by_worker) < n:
        client = await WSTestClient.connect(server.ws_url())
        worker = (await client.expect("welcome")).data["worker"]
        if worker in by_worker:
            spare.append(client)
        else:
            by_worker[worker] = client
    for client in spare:
        await client.close()
    return list(by_worker.values())


async def one_round(
    server: SanicProcess,
    publishers: list[WSTestClient],
    room: str,
    tasks: int,
    seconds: float,
    pids: list[int],
) -> tuple[float, float, float]:
    """Publications per second; the servers' CPU per publication (us); the
    reading member's CPU as a share of the round (near 1: it was the limit)."""
    async with await WSTestClient.connect(server.ws_url()) as member:
        await member.expect("welcome")
        await member.join(room, resume=False)
        got = 0
        target: int | None = None
        complete = asyncio.Event()

        async def read() -> None:  # the member keeps up, or it is dropped (1008)
            nonlocal got
            while True:
                await member.expect("m", 60)
                got += 1
                if target is not None and got >= target:
                    complete.set()

        reader = asyncio.ensure_future(read())
        cpu, mine, start = cpu_seconds(pids), time.process_time(), time.monotonic()
        for client in publishers:
            await client.send(
                "bench.run", {"room": room, "tasks": tasks, "seconds": seconds}
            )
        made = 0
        for client in publishers:
            made += (await client.expect("bench.done", seconds + 60)).data
        target = made
        if got >= made:
            complete.set()
        await asyncio.wait_for(complete.wait(), 60)
        cpu_us = (cpu_seconds(pids) - cpu) * 1e6 / made
        member_share = (time.process_time() - mine) / (time.monotonic() - start)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        assert got == made, f"the member got {got} of {made}"
        return made / seconds, cpu_us, member_share


async def probe(workers: list[WSTestClient]) -> list[dict[str, Any]]:
    """Each worker's pid, RSS and largest loop stall since its last probe."""
    out = []
    for client in workers:
        await client.send("bench.probe")
        out.append((await client.expect("bench.probed", 60)).data)
    return out


async def recovery_round(
    server: SanicProcess,
    workers: list[WSTestClient],
    room: str,
    n: int,
    missed: int,
    pids: list[int],
) -> dict[str, Any]:
    async with await WSTestClient.connect(server.ws_url()) as first:
        await first.expect("welcome")
        left_at = (await first.join(room, resume=False))["position"]
    await workers[0].send(
        "bench.publish", {"room": room, "n": missed, "tasks": 8, "pad": 40}
    )
    await workers[0].expect("bench.published", 120)
    await probe(workers)  # the stalls from here on
    cpu = cpu_seconds(pids)
    command = [
        "node", str(BENCH / "recoveryclient.mjs"), "--url", server.ws_url(),
        "--clients", str(n), "--room", room, "--offset", str(left_at["offset"]),
        "--epoch", left_at["epoch"], "--missed", str(missed), "--timeout", "180",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["cpu_s"] = cpu_seconds(pids) - cpu
    result["stall_ms"] = max(p["stall_ms"] for p in await probe(workers))
    return result


async def recovery(
    server: SanicProcess,
    workers: list[WSTestClient],
    args: argparse.Namespace,
    pids: list[int],
) -> None:
    runs = [
        await recovery_round(
            server, workers, f"history:rec-{r}", args.recovery, args.missed, pids
        )
        for r in range(args.rounds)
    ]
    for run in runs:
        print(f"  recovery round: {run}", file=sys.stderr, flush=True)

    def of(key: str, digits: int = 0) -> str:
        return fmt([float(run[key]) for run in runs], digits)

    right = sum(run["caught_up"] == args.recovery for run in runs)
    print(
        f"recovery, {args.recovery} clients x {args.missed} missed, "
        f"{'2 nodes over Redis' if args.redis else f'{args.workers} workers'}: "
        f"all caught up in {of('seconds', 2)} s; per client "
        f"p50 {of('p50_ms')} ms, p99 {of('p99_ms')} ms; largest loop stall "
        f"{of('stall_ms', 1)} ms; workers' CPU {of('cpu_s', 2)} s; "
        f"every client exactly right in {right}/{len(runs)} rounds",
        flush=True,
    )
    if right < len(runs):
        sys.exit("recovery: some client did not get exactly what it missed")


async def memory(
    server: SanicProcess, workers: list[WSTestClient], args: argparse.Namespace
) -> None:
    before = sum(p["rss"] for p in await probe(workers))
    await workers[0].send(
        "bench.publish", {"room": "deep:1", "n": args.memory, "tasks": 16, "pad": 40}
    )
    last = (await workers[0].expect("bench.published", 900)).data
    assert last is not None and last["offset"] == args.memory, last
    after = sum(p["rss"] for p in await probe(workers))
    print(
        f"memory: {args.memory:,} publications kept: workers' RSS "
        f"+{(after - before) / 2**20:,.1f} MiB, "
        f"{(after - before) / args.memory:,.0f} bytes per kept publication",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if args.redis:
            # Two machines of workers/2 each over a private Redis (never the
            # shared one): Redis numbers and keeps the history rooms.
            redis = await stack.enter_async_context(RedisServer())
            env = {
                "SANIC_WS_BACKPLANE": redis.url,
                "SANIC_WS_REDIS_CHANNEL": "bench-history",
            }
            per_node = max(1, args.workers // 2)
            servers = [
                SanicProcess(APP, "--workers", str(per_node), env=env, strict=False)
                for _ in range(2)
            ]
        else:
            per_node = args.workers
            servers = [SanicProcess(APP, "--workers", str(per_node), strict=False)]
        for node in servers:
            await stack.enter_async_context(node)
        server = servers[0]  # the member's, and the recovering clients'
        publishers = []
        for node in servers:
            publishers += await workers_covered(node, per_node)
        where = (
            f"2 nodes x {per_node} workers over Redis"
            if args.redis
            else f"{args.workers} workers"
        )
        pids = [node.pid for node in servers]
        for tasks in args.tasks:
            runs: dict[str, list[tuple[float, float, float]]] = {
                "plain": [],
                "history": [],
            }
            for n in range(args.rounds):
                for kind in ("plain", "history"):
                    room = f"{kind}:{tasks}-{n}"
                    runs[kind].append(
                        await one_round(
                            server, publishers, room, tasks, args.seconds, pids
                        )
                    )
            ratios = [
                h[0] / p[0] for p, h in zip(runs["plain"], runs["history"], strict=True)
            ]
            figures = []
            for kind in ("plain", "history"):
                rate, cpu, share = ([r[i] for r in runs[kind]] for i in range(3))
                figures.append(
                    f"{kind} {fmt(rate)}/s, {fmt(cpu, 1)} us server CPU per"
                    f" publication, member's CPU {fmt([100 * x for x in share])}%"
                )
            print(
                f"{where}, {tasks} task(s) each: {'; '.join(figures)};"
                f" history/plain {fmt(ratios, 2)} (within rounds)",
                flush=True,
            )
        if args.recovery:
            await recovery(server, publishers, args, pids)
        if args.memory and not args.redis:  # with Redis, Redis keeps them
            await memory(server, publishers, args)
        for client in publishers:
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--tasks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16]
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recovery", type=int, default=1000)
    parser.add_argument("--missed", type=int, default=100)
    parser.add_argument("--memory", type=int, default=100_000)
    parser.add_argument(
        "--redis",
        action="store_true",
        help="two nodes over a private Redis: Redis sequences the history rooms",
    )
    asyncio.run(main(parser.parse_args()))
