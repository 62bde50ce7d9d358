"""Delivery: how a manager's operation reaches the processes that need it.

The manager turns every cluster-wide call (broadcast, send to an id, a room or
a user, disconnect, join, leave) and every change of its own connections into
an :class:`Op` and hands it to :meth:`Delivery.deliver`; the backend brings
it to every process of the cluster (or to the one named in ``to``), where the
manager applies it. (``deliver``, not ``publish``: that is the manager's
send to a room.) The manager never knows which backend is in use.

- :class:`~sanic_ws_ext.delivery.local.LocalDelivery`: one process.
- :class:`~sanic_ws_ext.delivery.relay.WorkerRelay`: the workers of one
  machine, over Unix sockets made by the main process (the default under
  ``sanic --workers N``).
- :class:`~sanic_ws_ext.delivery.backplane.RedisBackplane`: many machines,
  through Redis pub/sub; wraps one of the above for the machine's own workers.

Rules every backend keeps:

- ``deliver`` applies the op in this process first, synchronously, then
  carries it to the others; it never waits on another process.
- Ops from one process reach each other process in the order published, once.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple, Protocol

__all__ = [
    "NO_EVENTS",
    "Delivery",
    "DeliveryEvents",
    "LinkState",
    "Op",
    "OpKind",
]


class OpKind(IntEnum):
    # Messages to connections.
    BROADCAST = 1
    SEND = 2  # target: connection id
    ROOM_SEND = 3  # target: room
    USER_SEND = 4  # target: user
    DISCONNECT = 5  # target: connection id
    # Requests to the process that holds the connection (target: id; payload: room).
    JOIN = 6
    LEAVE = 7
    # 8 to 11 were the per-connection replica (CONN_UP, CONN_DOWN,
    # ROOM_JOINED, ROOM_LEFT), retired: nothing is replicated per connection.
    # Membership of the cluster.
    HELLO = 12  # a process started: payload JSON {"life", "pid", "machine"}
    # SYNC, reason "request": JSON {"life", "rooms"}: send me your part of
    # these rooms' presence (without "rooms": introduce yourself); else JSON
    # {"life", "room", "v", ...}: a part of that answer, or {"life"}: who I am.
    SYNC = 13
    BEAT = 14  # the sender is alive: payload "<life> <sample JSON>"
    BYE = 15  # the sender stops: payload its life
    # Presence: a process's changes to one room, per interval (target: the
    # room, routed like ROOM_SEND; JSON {"life", "room", "v", "p", ...}).
    PRESENCE = 16
    # A cluster-wide question and its answers (JSON {"id", ...}).
    QUERY = 17
    REPLY = 18
    # History rooms (sanic_ws_ext.sequencer); target: room, reason: request id.
    SEQUENCE = 19  # to the room's sequencer: number, keep and publish payload
    FETCH = 20  # to the room's sequencer: JSON {"since", "limit", "join"}
    HISTORY = 21  # the answer to either: JSON header, newline, framed entries
    # Requests to clients (sanic_ws_ext.requests); reason: the request's ref.
    ASK = 22  # target: connection id; payload: the envelope; code: timeout (s)
    ANSWER = 23  # to the asker; target: connection id; code 0: payload is the
    # reply as JSON {"ok", "data"|"error"}; code 1: the connection is gone
    # Close every connection of a user (target: user; code, reason: the close).
    USER_DISCONNECT = 24


class Op(NamedTuple):
    """One operation, in a form any backend can carry.

    ``payload`` is the message body (UTF-8 JSON for envelopes), not a frame:
    framing happens once in each receiving process. ``origin`` is the name of
    the process that published it. A named tuple: ops are made and read
    hundreds of thousands of times a second on the relay's hot path.

    The four sends (BROADCAST, SEND, ROOM_SEND, USER_SEND) may be
    ``volatile`` (skipped for a receiver that is behind) and carry a key in
    ``reason`` (a newer frame of the same key replaces an unsent one).
    """

    kind: OpKind
    payload: bytes = b""
    binary: bool = False
    target: str = ""
    exclude: frozenset[str] = frozenset()
    code: int = 1000
    reason: str = ""
    origin: str = ""
    volatile: bool = False


class LinkState(StrEnum):
    """A link to an external service (Redis), as health checks see it."""

    #: Publishing and subscribed.
    CONNECTED = "connected"
    #: Not connected (also before the first connection); ops are buffered.
    RECONNECTING = "reconnecting"
    #: Not connected and the buffer overflowed: ops are being dropped.
    DOWN = "down"


class DeliveryEvents(Protocol):
    """What a backend reports, to the object the manager gives it at
    :meth:`Delivery.start` (not the manager itself)."""

    def gap(self, peer: str) -> None:
        """Ops for ``peer`` had to be dropped: it needs this process's state."""

    def missed(self, peer: str) -> None:
        """Ops from ``peer`` were missed: this process needs its state."""

    def link(self, state: LinkState) -> None:
        """The link to the external service changed state."""


class _NoEvents:
    def gap(self, peer: str) -> None:
        pass

    def missed(self, peer: str) -> None:
        pass

    def link(self, state: LinkState) -> None:
        pass


#: Events nobody listens to (a backend started on its own, in tests).
NO_EVENTS: DeliveryEvents = _NoEvents()


class Delivery(Protocol):
    """What a delivery backend provides to the manager."""

    name: str
    #: Whether other processes can exist (False for one process alone).
    clustered: bool

    @property
    def link_state(self) -> LinkState | None:
        """The state of the link to an external service; None without one."""

    async def start(
        self, apply: Callable[[Op], None], events: DeliveryEvents = NO_EVENTS
    ) -> None:
        """Begin delivering ops published anywhere in the cluster to ``apply``,
        and reporting gaps, misses and link changes to ``events``."""

    def deliver(
        self, op: Op, to: str | None = None, record: bytes | None = None
    ) -> None:
        """Apply ``op`` here, then carry it to every process (or only ``to``).

        ``record`` is ``frame_record(encode_op(op))`` when the caller already
        made it (a wrapping backend), so the op is encoded once per process.
        """

    async def stop(self) -> None:
        """Stop delivering; publishing after this is an error."""

    def interest(self, room: str, wanted: bool) -> None:
        """This process now has (``wanted``) or no longer has members of ``room``.

        A backend that routes by interest receives a room's publications only
        while some local connection is in it.
        """

    async def ready(self, room: str) -> None:
        """Return once publications to ``room`` reach this process (bounded)."""

    def hears(self, peer: str) -> bool:
        """Whether ops from ``peer`` can reach us now (False while a link is down).

        The manager does not take a peer's silence for death while it cannot
        hear that peer.
        """

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for health checks and stats."""
