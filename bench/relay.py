"""Relay between workers: throughput in bursts and latency when paced.

    python bench/relay.py [--workers 4] [--rounds 5] [--burst 200000] [--rate 10000]
                          [--transport auto|seqpacket|stream]

Runs the real :class:`~sanic_ws_ext.delivery.relay.WorkerRelay` in N spawned
processes (as Sanic spawns workers) over inboxes made by ``make_inboxes``.
Worker 0 publishes broadcast ops with a ~100-byte envelope; every other
worker decodes and applies each op (counting it, and reading the send time
stamped in its payload). Bounded in count and time; loopback only (Unix
sockets). Figures: per receiving worker, median and range over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from typing import Any

import uvloop
from opload import Receiver, send

from sanic_ws_ext.delivery.relay import (
    TRANSPORTS,
    RelayInboxes,
    WorkerRelay,
    choose_transport,
    make_inboxes,
)


def worker(*args: Any) -> None:
    """A spawned process's entry point: one relay on its own uvloop."""
    uvloop.run(_worker(*args))


async def _worker(
    slot: int,
    inboxes: RelayInboxes,
    mode: str,
    count: int,
    rate: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    name = f"Sanic-Server-{slot}-0"
    receiver = Receiver(name, mode, count)
    relay = WorkerRelay(inboxes, name)
    await relay.start(receiver.apply)
    ready.release()
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    if slot == 0:
        start = time.perf_counter()
        await send(relay.deliver, name, mode, count, rate)
        await relay.stop(drain_timeout=60)  # let slow receivers take it all
        results.put((slot, "sent", time.perf_counter() - start))
        return
    results.put((slot, *await receiver.result()))
    await relay.stop()


def run_round(
    workers: int, mode: str, count: int, rate: int, transport: str
) -> list[tuple[Any, ...]]:
    ctx = mp.get_context("spawn")
    inboxes = make_inboxes(workers, transport)
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker, args=(i, inboxes, mode, count, rate, ready, go, results)
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=30)
    go.set()
    out = [results.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return sorted(r for r in out if r[1] != "sent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--paced-seconds", type=float, default=2.0)
    parser.add_argument("--transport", choices=["auto", *TRANSPORTS], default="auto")
    args = parser.parse_args()
    transport = choose_transport(args.transport)
    burst_rates: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    for r in range(args.rounds):
        # Interleave the two scenarios round by round.
        for res in run_round(args.workers, "burst", args.burst, args.rate, transport):
            assert res[2] == args.burst, f"lost messages: {res}"
            burst_rates.append(res[3])
        paced_count = int(args.rate * args.paced_seconds)
        for res in run_round(args.workers, "paced", paced_count, args.rate, transport):
            assert res[2] == paced_count, f"lost messages: {res}"
            p50s.append(res[3])
            p99s.append(res[4])
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def fmt(values: list[float], unit: str, digits: int = 0) -> str:
        med = statistics.median(values)
        low, high = min(values), max(values)
        return (
            f"{med:,.{digits}f} {unit} (range {low:,.{digits}f} - {high:,.{digits}f})"
        )

    print(
        f"relay ({transport}), {args.workers} workers on {mp.cpu_count()} cores,"
        f" {args.rounds} rounds"
    )
    print(
        f"  burst of {args.burst:,}, per receiving worker: {fmt(burst_rates, 'msg/s')}"
    )
    print(f"  paced {args.rate:,} msg/s latency p50: {fmt(p50s, 'ms', 3)}")
    print(f"  paced {args.rate:,} msg/s latency p99: {fmt(p99s, 'ms', 3)}")


if __name__ == "__main__":
    main()
