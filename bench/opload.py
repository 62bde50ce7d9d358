"""Broadcast ops as load for a delivery backend: one sender, counting receivers.

Shared by ``bench/relay.py`` (the relay between N workers) and
``bench/backplane.py`` (relay against Redis). Every op carries the sender's
send time (``time.perf_counter``: CLOCK_MONOTONIC, the same in every process
of the machine) ahead of a ~100-byte envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable

from sanic_ws_ext.delivery import Op, OpKind

BODY = b'{"type":"tick","data":{"text":"' + b"x" * 60 + b'"},"timestamp":0}'
STAMP = struct.Struct("!d")


async def send(
    deliver: Callable[[Op], None], origin: str, mode: str, count: int, rate: int
) -> None:
    """``count`` ops: as fast as possible ("burst"), or ``rate`` per second."""
    loop = asyncio.get_running_loop()

    def one() -> None:
        payload = STAMP.pack(time.perf_counter()) + BODY
        deliver(Op(OpKind.BROADCAST, payload, origin=origin))

    if mode == "burst":
        for i in range(count):
            one()
            if i % 2000 == 1999:
                await asyncio.sleep(0)  # let the backend write a batch
        return
    per_tick, tick = max(1, rate // 1000), 0.001
    sent = 0
    next_at = loop.time()
    while sent < count:
        for _ in range(min(per_tick, count - sent)):
            one()
            sent += 1
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - loop.time()))


class Receiver:
    """Counts the ops not from ``own``; their latencies when paced."""

    def __init__(self, own: str, mode: str, count: int) -> None:
        self.own = own
        self.mode = mode
        self.count = count
        self.received = 0
        self.first_sent = self.last = 0.0
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    def apply(self, op: Op) -> None:
        if op.origin == self.own:
            return
        now = time.perf_counter()
        self.received += 1
        self.last = now
        sent = STAMP.unpack_from(op.payload)[0]
        if self.received == 1:
            # The sender's clock: a receiver may see ops before its own wait
            # for "go" returns, so its own start would be too late.
            self.first_sent = sent
        if self.mode == "paced":
            self.latencies.append(now - sent)
        if self.received == self.count:
            self.done.set()

    async def result(self, timeout: float = 60) -> tuple[str, int, float, float]:
        """Once all arrived (or ``timeout``): ``(mode, received, a, b)``.

        Burst: ``a`` messages/s, ``b`` seconds. Paced: ``a`` p50 and ``b``
        p99 latency, in milliseconds. A shortfall shows in ``received``.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout)
        if self.mode == "burst":
            seconds = self.last - self.first_sent
            return self.mode, self.received, self.received / seconds, seconds
        lat = sorted(self.latencies)
        p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
        return self.mode, self.received, p50 * 1000, p99 * 1000
