"""From one emitter process to C clients, next to the same fan-out from a handler.

    python bench/emitter.py [--clients 1000] [--k 1000] [--rounds 3]

``emitter``: one Sanic worker on the Redis backplane (pinned to core 0) holds
the C connections; the load client (core 1) sends one trigger, which the
worker pushes to a Redis list; a separate plain process waiting on it (an
:class:`~sanic_ws_ext.Emitter`, not pinned) broadcasts K messages of ~100
bytes through Redis, as fast as it can queue them. The client counts C*K
frames: delivered messages/s from the trigger to the last frame, latency from
the time stamped in each message, and the worker's CPU per delivered message
(``bench/measure.py``). The emitter process reports its own send rate and CPU.

``handler``: the same worker and clients, the K broadcasts made by the worker's
own handler (``ours`` of bench/fanout.py on the Redis backplane): what the
emitter's route through Redis costs. Both interleave round by round; every run
checks that nothing was lost. Loopback only; the shared Redis at
``BENCH_REDIS`` (127.0.0.1:6379), each run on a channel of its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from fanout import DEFAULT_CLIENT, busy
from measure import run_load
from peers import PY, REDIS, fmt, load_client, serving

PAD = "x" * 40
KINDS = ("emitter", "handler")


async def _emit(channel: str, limit: float) -> None:
    """The emitter process: wait for the trigger, broadcast K, report."""
    import redis.asyncio as aioredis

    from sanic_ws_ext import Emitter

    r = aioredis.Redis.from_url(REDIS)
    try:
        async with Emitter(REDIS, channel=channel) as em:
            print(json.dumps({"phase": "ready"}), flush=True)
            popped = await r.blpop([f"{channel}:go"], timeout=limit)
            if popped is None:
                sys.exit("emitter: no trigger came")
            k = int(popped[1])
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(k):
                await em.broadcast(
                    "tick", {"t": time.time() * 1000, "i": i, "pad": PAD}
                )
            queued = time.perf_counter() - t0
            assert await em.flush(limit)
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - c0
            status = em.status()
            print(
                json.dumps(
                    {
                        "sent": k,
                        "queued_s": queued,
                        "seconds": seconds,
                        "cpu_s": cpu,
                        "redis_messages": status["published"],
                        "lost": status["lost"],
                    }
                ),
                flush=True,
            )
    finally:
        await r.aclose()


def run_one(kind: str, clients: int, k: int) -> dict[str, Any]:
    timeout = 60 + clients * k // 20_000
    server = "ours-redis-emitter" if kind == "emitter" else "ours-redis-handler"
    with serving(server) as served:
        emitter: subprocess.Popen[str] | None = None
        if kind == "emitter":
            emitter = subprocess.Popen(
                [PY, __file__, "--emit", served.channel, "--limit", str(timeout)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert emitter.stdout is not None
            ready = emitter.stdout.readline()  # connected, waiting on the list
            assert "ready" in ready, f"emitter did not start: {ready!r}"
        options = ["--k", str(k), "--timeout", str(timeout)]
        try:
            command = load_client(served, clients, *options, client=DEFAULT_CLIENT)
            result = run_load(server, command, served.pids, limit=timeout + 60)
            if emitter is not None:
                out, _ = emitter.communicate(timeout=timeout)
                result["emitter"] = json.loads(out.strip().splitlines()[-1])
        finally:
            if emitter is not None and emitter.poll() is None:
                emitter.kill()  # the process this run started
                emitter.wait()
    if result["received"] != result["expected"]:
        print(f"  {kind}: only {result['received']}/{result['expected']}")
    return result


def run(clients: int, k: int, rounds: int) -> list[str]:
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for r in range(rounds):
        for kind in KINDS:
            results[kind].append(run_one(kind, clients, k))
        print(f"emitter: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    lines = [
        f"One Sanic worker on Redis, C = {clients} clients, K = {k} broadcasts of"
        f" ~100 bytes ({clients * k:,} deliveries per run), {rounds} round(s);"
        " medians (range).",
        "",
        "| sender | delivered msg/s | worker CPU us/msg | p50 ms | p99 ms"
        " | client CPU | sender's own msg/s (its CPU) | complete |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        runs = results[kind]
        own = "-"
        if kind == "emitter":
            rates = [x["emitter"]["sent"] / x["emitter"]["seconds"] for x in runs]
            cpus = [1000 * x["emitter"]["cpu_s"] for x in runs]
            own = f"{fmt(rates)} ({fmt(cpus)} ms)"
        complete = sum(x["received"] == x["expected"] for x in runs)
        lines.append(
            f"| {kind} | {fmt([x['rate'] for x in runs])} |"
            f" {fmt([x['cpu_us'] for x in runs], 2)} |"
            f" {fmt([x['p50_ms'] for x in runs], 1)} |"
            f" {fmt([x['p99_ms'] for x in runs], 1)} |"
            f" {fmt([busy(x) for x in runs])}% | {own} | {complete}/{len(runs)} |"
        )
    lost = [
        kind for kind in KINDS for x in results[kind] if x["received"] != x["expected"]
    ]
    if lost:
        print("\n".join(lines))
        sys.exit(f"lost messages in: {lost}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--emit", metavar="CHANNEL", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=120, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit:
        import uvloop

        uvloop.run(_emit(args.emit, args.limit))
        return
    print("\n".join(run(args.clients, args.k, args.rounds)))


if __name__ == "__main__":
    main()
