"""Across machines through Redis, next to the relay on one machine.

    python bench/backplane.py [--rounds 5] [--burst 200000] [--rate 10000]
                              [--redis redis://127.0.0.1:6379/0]

Two spawned processes each round, one sender and one receiver:

- ``relay``: two workers of one machine, the real
  :class:`~sanic_ws_ext.delivery.relay.WorkerRelay` over Unix sockets;
- ``redis``: two machines of one worker each (distinct node ids), the real
  :class:`~sanic_ws_ext.delivery.backplane.RedisBackplane` through Redis
  pub/sub (the machine's own delivery is local).

The sender publishes broadcast ops with a ~100-byte envelope; the receiver
applies each one (counting it and reading the send time stamped in its
payload). Burst: as fast as the sender can publish. Paced: a fixed rate,
latency from the stamp to the receiver's apply. Backends interleave round by
round; every round checks that nothing was lost. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import uuid
from typing import Any

import uvloop
from opload import Receiver, send

from sanic_ws_ext.delivery import Delivery
from sanic_ws_ext.delivery.backplane import RedisBackplane
from sanic_ws_ext.delivery.local import LocalDelivery
from sanic_ws_ext.delivery.relay import RelayInboxes, WorkerRelay, make_inboxes

BACKENDS = ("relay", "redis")


def make_delivery(
    backend: str, slot: int, inboxes: RelayInboxes, url: str, channel: str
) -> tuple[Delivery, str]:
    if backend == "relay":
        name = f"Sanic-Server-{slot}-0"
        return WorkerRelay(inboxes, name), name
    name = f"node{slot}/Sanic-Server-0-0"
    delivery = RedisBackplane(
        url,
        LocalDelivery(),
        node=f"node{slot}",
        process=name,
        channel=channel,
        max_publish=1 << 20,
        buffer=64 << 20,
        beat=60.0,  # no manager here to beat: keep the deafness check asleep
    )
    return delivery, name


def worker(*args: Any) -> None:
    """A spawned process's entry point, on its own uvloop."""
    uvloop.run(_worker(*args))


async def _worker(
    backend: str,
    slot: int,
    inboxes: RelayInboxes,
    url: str,
    channel: str,
    mode: str,
    count: int,
    rate: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    delivery, name = make_delivery(backend, slot, inboxes, url, channel)
    receiver = Receiver(name, mode, count)
    await delivery.start(receiver.apply)
    ready.release()
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    if slot == 0:
        await send(delivery.deliver, name, mode, count, rate)
        if isinstance(delivery, RedisBackplane):
            await delivery.drain(60)
            results.put((slot, "sent", delivery.status()["lost"]))
        else:
            results.put((slot, "sent", 0))
        if isinstance(delivery, WorkerRelay):
            await delivery.stop(drain_timeout=60)
        else:
            await delivery.stop()
        return
    results.put((slot, *await receiver.result()))
    await delivery.stop()


def run_round(
    backend: str, url: str, mode: str, count: int, rate: int
) -> tuple[Any, ...]:
    ctx = mp.get_context("spawn")
    inboxes = make_inboxes(2)
    channel = f"bench-{uuid.uuid4().hex[:8]}"
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.Queue()
    procs = []
    for i in range(2):
        args = (backend, i, inboxes, url, channel, mode, count, rate, ready, go)
        procs.append(ctx.Process(target=worker, args=(*args, results)))
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
    sent = next(r for r in out if r[1] == "sent")
    assert sent[2] == 0, f"{backend}: the sender dropped {sent[2]} ops"
    return next(r for r in out if r[1] != "sent")


def fmt(values: list[float], unit: str, digits: int = 0) -> str:
    med = statistics.median(values)
    low, high = min(values), max(values)
    return f"{med:,.{digits}f} {unit} ({low:,.{digits}f} - {high:,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--paced-seconds", type=float, default=2.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    paced_count = int(args.rate * args.paced_seconds)
    burst: dict[str, list[float]] = {b: [] for b in BACKENDS}
    p50: dict[str, list[float]] = {b: [] for b in BACKENDS}
    p99: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for r in range(args.rounds):
        for backend in BACKENDS:  # interleaved, round by round
            res = run_round(backend, args.redis, "burst", args.burst, args.rate)
            assert res[2] == args.burst, f"{backend} lost messages: {res}"
            burst[backend].append(res[3])
            res = run_round(backend, args.redis, "paced", paced_count, args.rate)
            assert res[2] == paced_count, f"{backend} lost messages: {res}"
            p50[backend].append(res[3])
            p99[backend].append(res[4])
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(
        f"sender -> receiver, 2 processes on {mp.cpu_count()} cores,"
        f" {args.rounds} rounds; medians (range)"
    )
    print(f"| backend | burst of {args.burst:,} | paced {args.rate:,}/s p50 | p99 |")
    print("| --- | --- | --- | --- |")
    for backend in BACKENDS:
        print(
            f"| {backend} | {fmt(burst[backend], 'msg/s')} |"
            f" {fmt(p50[backend], 'ms', 3)} | {fmt(p99[backend], 'ms', 3)} |"
        )


if __name__ == "__main__":
    main()
