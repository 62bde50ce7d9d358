"""Who is connected where, cluster-wide: rooms, users, members. Pure.

Every process keeps a full replica of this state. Each process is the only
writer for its own connections: it publishes their arrival, departure and
room changes as ops, in order, and every process (itself included) applies
them here. A process that starts announces itself and receives every peer's
snapshot; a process that stops or goes silent is dropped with all its entries,
so a dead worker leaves no ghosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .index import discard_from

__all__ = ["ClusterState", "Member"]


@dataclass(slots=True)
class Member:
    """One connection as the whole cluster sees it."""

    id: str
    user: str | None
    worker: str
    rooms: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "worker": self.worker}


class ClusterState:
    """The replica: members by id, and their indexes by room, user and worker."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.rooms: dict[str, set[str]] = {}
        self.users: dict[str, set[str]] = {}
        self.workers: dict[str, set[str]] = {}

    def up(self, conn_id: str, user: str | None, worker: str) -> Member:
        old = self.members.get(conn_id)
        if old is not None:
            return old
        member = Member(conn_id, user, worker)
        self.members[conn_id] = member
        if user is not None:
            self.users.setdefault(user, set()).add(conn_id)
        self.workers.setdefault(worker, set()).add(conn_id)
        return member

    def down(self, conn_id: str) -> Member | None:
        member = self.members.pop(conn_id, None)
        if member is None:
            return None
        for room in member.rooms:
            discard_from(self.rooms, room, conn_id)
        if member.user is not None:
            discard_from(self.users, member.user, conn_id)
        discard_from(self.workers, member.worker, conn_id)
        return member

    def join(self, conn_id: str, room: str) -> Member | None:
        """Add to a room; the member if it was not in it yet."""
        member = self.members.get(conn_id)
        if member is None or room in member.rooms:
            return None
        member.rooms.add(room)
        self.rooms.setdefault(room, set()).add(conn_id)
        return member

    def leave(self, conn_id: str, room: str) -> Member | None:
        """Remove from a room; the member if it was in it."""
        member = self.members.get(conn_id)
        if member is None or room not in member.rooms:
            return None
        member.rooms.discard(room)
        discard_from(self.rooms, room, conn_id)
        return member

    def drop_worker(self, worker: str) -> list[Member]:
        """Forget every member of ``worker``; returns them."""
        ids = self.workers.pop(worker, set())
        gone = [m for m in (self.down(i) for i in list(ids)) if m is not None]
        return gone

    def snapshot(self, worker: str) -> list[dict[str, Any]]:
        """``worker``'s members, in the form :meth:`load` takes."""
        return [
            {"id": m.id, "user": m.user, "rooms": sorted(m.rooms)}
            for m in (self.members[i] for i in self.workers.get(worker, ()))
        ]

    def load(self, worker: str, entries: list[dict[str, Any]]) -> None:
        """Replace ``worker``'s members with a snapshot."""
        self.drop_worker(worker)
        for entry in entries:
            self.up(entry["id"], entry.get("user"), worker)
            for room in entry.get("rooms", ()):
                self.join(entry["id"], room)

    def room_members(self, room: str) -> list[Member]:
        return [self.members[i] for i in self.rooms.get(room, ())]
