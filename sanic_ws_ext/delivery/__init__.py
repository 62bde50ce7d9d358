"""Delivery: how a manager's operation reaches the process holding the socket.

The manager turns every cluster-wide call (broadcast, send to an id,
disconnect) into an :class:`Op` and publishes it; the delivery backend brings
it to every process that may hold a target connection, where the manager
applies it to its local connections. The manager never knows which backend is
in use.

- :class:`~sanic_ws_ext.delivery.local.LocalDelivery`: one process; an op is
  applied where it was published, at once.

Backends for the workers of one machine and for many machines plug in here
behind the same :class:`Delivery` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ["Delivery", "Op", "OpKind"]


class OpKind(Enum):
    BROADCAST = "broadcast"
    SEND = "send"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation on connections, in a form any backend can carry.

    ``payload`` is the message body (UTF-8 JSON for envelopes), not a frame:
    framing happens once in each receiving process.
    """

    kind: OpKind
    payload: bytes = b""
    binary: bool = False
    target: str | None = None
    exclude: frozenset[str] = frozenset()
    code: int = 1000
    reason: str = ""


class Delivery(Protocol):
    """What a delivery backend provides to the manager."""

    async def start(self, apply: Callable[[Op], None]) -> None:
        """Begin delivering ops published anywhere in the cluster to ``apply``."""

    async def publish(self, op: Op) -> None:
        """Carry ``op`` to every process (this one included) that may need it."""

    async def stop(self) -> None:
        """Stop delivering; publishing after this is an error."""
