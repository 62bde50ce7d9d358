"""This process's connections, and who of them is in which room or user.

Pure bookkeeping, no I/O. The indexes hold each connection's
:class:`~sanic_ws_ext.wire.Wire`, the object a fan-out writes to, so sending
to a room or a user walks one set without a lookup per receiver.

Rules this module keeps:

- A connection is indexed from its upgrade until its socket is gone, and no
  longer: :meth:`LocalIndex.remove` takes it out of every room and user set.
- ``Connection.rooms`` and the room index always agree; a key whose set
  empties is deleted, so the indexes hold only rooms and users present here.
- The receiver tuples (:meth:`LocalIndex.everyone`, :meth:`LocalIndex.of`)
  are made on first use and kept until their receivers change: a sender
  hands the same tuple to ``fan_out`` broadcast after broadcast, which then
  knows the receivers unchanged by identity, without copying or comparing
  them (at 100,000 connections both cost ~0.3 ms per broadcast). Rooms and
  users of fewer than ``_KEEP_FROM`` members get a new tuple each time:
  kept for every user or small room ever sent to, they cost 432 bytes and
  two tracked objects per connection at 100,000 connections, to save the
  copy of a few pointers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .connection import Connection
    from .wire import Wire

__all__ = ["LocalIndex", "discard_from"]

#: Members from which a room's or user's receiver tuple is kept (see above).
_KEEP_FROM = 16

K = TypeVar("K")
V = TypeVar("V")


class LocalIndex:
    """Connections of this process by id, and their wires by room and user."""

    __slots__ = (
        "_everyone",
        "_room_tuples",
        "_user_tuples",
        "conns",
        "rooms",
        "users",
        "wires",
    )

    def __init__(self) -> None:
        self.conns: dict[str, Connection] = {}
        #: The same connections' wires, in the same order: what a broadcast
        #: walks.
        self.wires: dict[str, Wire] = {}
        self.rooms: dict[str, set[Wire]] = {}
        self.users: dict[str, set[Wire]] = {}
        self._everyone: tuple[Wire, ...] | None = None
        # Receiver tuples kept for rooms and users that were sent to.
        self._room_tuples: dict[str, tuple[Wire, ...]] = {}
        self._user_tuples: dict[str, tuple[Wire, ...]] = {}

    def __len__(self) -> int:
        return len(self.conns)

    def everyone(self) -> tuple[Wire, ...]:
        """Every wire, in order: the same tuple until a connection comes or goes."""
        everyone = self._everyone
        if everyone is None:
            everyone = self._everyone = tuple(self.wires.values())
        return everyone

    def of(self, room: bool, key: str) -> tuple[Wire, ...]:
        """The wires in room ``key`` (``room``) or of user ``key``: from
        ``_KEEP_FROM`` members, the same tuple until one joins or leaves."""
        kept = self._room_tuples if room else self._user_tuples
        wires = kept.get(key)
        if wires is None:
            members = (self.rooms if room else self.users).get(key)
            if not members:
                return ()
            wires = tuple(members)
            if len(wires) >= _KEEP_FROM:
                kept[key] = wires
        return wires

    def add(self, conn: Connection) -> None:
        self.conns[conn.id] = conn
        self.wires[conn.id] = conn._wire
        self._everyone = None
        if conn.user is not None:
            self.users.setdefault(conn.user, set()).add(conn._wire)
            self._user_tuples.pop(conn.user, None)

    def remove(self, conn: Connection) -> bool:
        """Forget ``conn`` everywhere; False if it was not here."""
        if self.conns.pop(conn.id, None) is None:
            return False
        del self.wires[conn.id]
        self._everyone = None
        kept = self._room_tuples
        for room in conn.rooms:
            discard_from(self.rooms, room, conn._wire)
            if kept:
                kept.pop(room, None)
        if conn.user is not None:
            discard_from(self.users, conn.user, conn._wire)
            self._user_tuples.pop(conn.user, None)
        return True

    def join(self, conn: Connection, room: str) -> bool:
        """Put ``conn`` in ``room``; False if it was in it already."""
        rooms = conn._rooms
        if rooms is None:
            rooms = conn._rooms = {}
        elif room in rooms:
            return False
        rooms[room] = None
        self.rooms.setdefault(room, set()).add(conn._wire)
        self._room_tuples.pop(room, None)
        return True

    def leave(self, conn: Connection, room: str) -> bool:
        """Take ``conn`` out of ``room``; False if it was not in it."""
        rooms = conn._rooms
        if rooms is None or room not in rooms:
            return False
        del rooms[room]
        if not rooms:
            conn._rooms = None
        discard_from(self.rooms, room, conn._wire)
        self._room_tuples.pop(room, None)
        return True


def discard_from(index: dict[K, set[V]], key: K, value: V) -> None:
    """Remove ``value`` from ``index[key]``, and the key once its set is empty."""
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]
