"""Delivery inside one process: an op is applied where it is published."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import NO_EVENTS, DeliveryEvents, LinkState, Op

__all__ = ["LocalDelivery"]


class LocalDelivery:
    """The backend for one process (``--single-process``, test clients)."""

    name = "local"
    clustered = False
    link_state: LinkState | None = None

    def __init__(self) -> None:
        self._apply: Callable[[Op], None] | None = None

    async def start(
        self, apply: Callable[[Op], None], events: DeliveryEvents = NO_EVENTS
    ) -> None:
        self._apply = apply

    def deliver(
        self, op: Op, to: str | None = None, record: bytes | None = None
    ) -> None:
        if self._apply is None:
            raise RuntimeError("deliver() before start() or after stop()")
        self._apply(op)

    async def stop(self) -> None:
        self._apply = None

    def interest(self, room: str, wanted: bool) -> None:
        pass  # every process of one machine hears every room

    async def ready(self, room: str) -> None:
        pass

    def hears(self, peer: str) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"name": self.name}
