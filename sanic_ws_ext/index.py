"""This process's connections, and who of them is in which room or user.

Pure bookkeeping, no I/O. The indexes hold each connection's
:class:`~sanic_ws_ext.wire.Wire`, the object a fan-out writes to, so sending
to a room or a user walks one set without a lookup per receiver.

Rules this module keeps:

- A connection is indexed from its upgrade until its socket is gone, and no
  longer: :meth:`LocalIndex.remove` takes it out of every room and user set.
- ``Connection.rooms`` and the room index always agree; a key whose set
  empties is deleted, so the indexes hold only rooms and users present here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .connection import Connection
    from .wire import Wire

__all__ = ["LocalIndex", "discard_from"]

K = TypeVar("K")
V = TypeVar("V")


class LocalIndex:
    """Connections of this process by id, and their wires by room and user."""

    __slots__ = ("conns", "rooms", "users", "wires")

    def __init__(self) -> None:
        self.conns: dict[str, Connection] = {}
        #: The same connections' wires, in the same order: what a broadcast
        #: walks.
        self.wires: dict[str, Wire] = {}
        self.rooms: dict[str, set[Wire]] = {}
        self.users: dict[str, set[Wire]] = {}

    def __len__(self) -> int:
        return len(self.conns)

    def add(self, conn: Connection) -> None:
        self.conns[conn.id] = conn
        self.wires[conn.id] = conn._wire
        if conn.user is not None:
            self.users.setdefault(conn.user, set()).add(conn._wire)

    def remove(self, conn: Connection) -> bool:
        """Forget ``conn`` everywhere; False if it was not here."""
        if self.conns.pop(conn.id, None) is None:
            return False
        del self.wires[conn.id]
        for room in conn.rooms:
            discard_from(self.rooms, room, conn._wire)
        if conn.user is not None:
            discard_from(self.users, conn.user, conn._wire)
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
        return True


def discard_from(index: dict[K, set[V]], key: K, value: V) -> None:
    """Remove ``value`` from ``index[key]``, and the key once its set is empty."""
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]
