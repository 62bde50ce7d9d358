"""Keeping long-lived objects out of full garbage collections (``WS_GC_FREEZE``).

CPython 3.11's full collection walks every tracked object, about 0.7 us each
on a 2-core machine, in one go: a worker with 5,000 connections (8 tracked
objects each) stalls its event loop 30 to 40 ms whenever one falls due, and
one falls due when the long-lived objects grew by a quarter, as in a
reconnect wave or a peer's death (bench/scale.py, issue 14). 100,000
connections would be half a second.

So once a worker has started, what startup built is frozen (``gc.freeze``),
and so is what survives each full collection from then on, at the moment it
ends: the next one walks only what came since. Frozen objects are still
freed by reference counting (a closed connection is: the engine drops its
handle, wire.py), so freezing costs nothing but this: a reference cycle
among objects that lived through a full collection is not collected while
they are frozen. Every ``WS_GC_THAW`` seconds they are thawed and collected
once, a stall as long as a full collection was before, so such garbage
stays bounded; without a thaw it is kept for good.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

__all__ = ["Collector"]

log = logging.getLogger("sanic.root.sanic_ws_ext")


class Collector:
    """Freezes what startup built and what each full collection leaves."""

    __slots__ = ("_thaw", "_timer")

    def __init__(self, thaw: float | None) -> None:
        self._thaw = thaw
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Collect startup's garbage, freeze the rest, and keep freezing."""
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._collected)
        self._arm()

    def stop(self) -> None:
        """The server stopped: back to CPython's own collections."""
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gc.unfreeze()

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # Right after a full collection every survivor is in the oldest
        # generation; the younger ones hold only what the collection itself
        # made (finalizers, weakref callbacks). Nothing that was garbage is
        # frozen, and what such code made waits for the thaw at worst.
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()

    def _arm(self) -> None:
        if self._thaw is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._thaw, self.thaw)

    def thaw(self) -> None:
        """Collect everything once (what freezing kept from the collector),
        then freeze the survivors again."""
        start = time.perf_counter()
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        gc.collect()  # its end freezes the survivors (_collected)
        log.debug(
            "gc thaw: %d frozen objects collected in %.1f ms",
            frozen,
            (time.perf_counter() - start) * 1000,
        )
        self._arm()
