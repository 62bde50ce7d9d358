"""Publishing: the ops this process sends to the cluster, made in one place.

The manager's API, presence batches, cluster-wide questions and membership
all publish through one :class:`Outbox`, which makes each
:class:`~sanic_ws_ext.delivery.Op` and hands it to the delivery backend.

Rules this module keeps:

- Every op leaves with this process's name as its origin; receivers know who
  spoke from that alone.
- An op for one connection goes only to the process its id names
  (:meth:`Outbox.address`); an id of a process not heard of yet (just
  started) goes to every process, and the holder acts.
- Ops that only other processes need (HELLO, BEAT, BYE, presence) are not
  published by a process alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ujson

from .delivery import Op, OpKind

if TYPE_CHECKING:
    from .cluster import Membership
    from .delivery import Delivery

__all__ = ["Outbox"]

#: The exclusions of a send that excludes nobody: one object, not one per op.
_NO_ONE: frozenset[str] = frozenset()


class Outbox:
    """Makes this process's ops and hands them to the delivery backend."""

    __slots__ = ("delivery", "life", "membership", "worker")

    def __init__(
        self, delivery: Delivery, membership: Membership, *, worker: str, life: str
    ) -> None:
        self.delivery = delivery
        self.membership = membership
        self.worker = worker
        self.life = life

    @property
    def clustered(self) -> bool:
        """Whether other processes can exist to receive ops."""
        return self.delivery.clustered

    def publish(
        self,
        kind: OpKind,
        *,
        target: str = "",
        payload: bytes = b"",
        binary: bool = False,
        exclude: Iterable[str] = (),
        code: int = 1000,
        reason: str = "",
        to: str | None = None,
        volatile: bool = False,
    ) -> None:
        """Publish an op to every process (or only ``to``), this one first."""
        op = Op(
            kind,
            payload,
            binary,
            target,
            frozenset(exclude) if exclude else _NO_ONE,
            code,
            reason,
            self.worker,
            volatile,
        )
        self.delivery.deliver(op, to)

    def address(self, kind: OpKind, conn_id: str, **fields: Any) -> None:
        """Publish an op for one connection to the process that holds it."""
        self.publish(kind, target=conn_id, to=self.membership.route(conn_id), **fields)

    def presence(self, payload: bytes, to: str | None, kind: str, room: str) -> None:
        """The tracker's output (see :data:`~sanic_ws_ext.tracker.Publish`):
        a room's changes go to the processes following it (the room's own
        channel on Redis); answers and introductions to one process;
        requests to one process or all."""
        if not self.clustered:
            return
        if kind == "presence":
            self.publish(OpKind.PRESENCE, target=room, payload=payload)
        elif kind == "request":
            self.publish(OpKind.SYNC, reason="request", payload=payload, to=to)
        else:  # "answer", "hello"
            self.publish(OpKind.SYNC, payload=payload, to=to)

    # -- membership ----------------------------------------------------------------

    def hello(self) -> None:
        """This process started: peers answer with their state."""
        if self.clustered:
            self.publish(OpKind.HELLO, payload=self._introduction())

    def request_sync(self, peer: str) -> None:
        """Ask ``peer`` for its whole state."""
        self.publish(
            OpKind.SYNC, reason="request", payload=self._introduction(), to=peer
        )

    def beat(self, sample: dict[str, Any]) -> None:
        """Say we are alive; our counters ride along (every peer keeps them)."""
        if self.clustered:
            payload = self.life.encode() + b" " + ujson.dumps(sample).encode()
            self.publish(OpKind.BEAT, payload=payload)

    def bye(self) -> None:
        """This process stops: peers drop what it held at once."""
        if self.clustered:
            self.publish(OpKind.BYE, payload=self.life.encode())

    def _introduction(self) -> bytes:
        # The pid and machine let peers on this machine watch our exit.
        return ujson.dumps(
            {"life": self.life, "pid": os.getpid(), "machine": self.membership.machine}
        ).encode()
