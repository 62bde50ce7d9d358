"""Presence: who is in a room, as state plus batched diffs. Pure.

The Phoenix Presence model. In a room with full presence, each connection is
one *entry*: a ``key`` (its user, or an opaque key per anonymous connection),
a ``ref`` unique in the cluster, and the app's metadata. Several tabs of one
user are one key with several entries. A member joining the room is sent the
room's whole state once (``{key: [meta, ...]}``); after that it hears at most
one diff per room per interval (``joins`` and ``leaves``, by key), however
many connections came and went. An update of an entry's metadata is the old
ref leaving and a new ref joining under the same key, so a diff is always a
set of refs to add and refs to remove, and applying one twice changes
nothing.

Rules this module keeps:

- Refs are never reused, so entries are added and removed by ref alone.
- Each entry belongs to the process that holds its connection; only that
  process adds or removes it, and a process that is gone takes its entries
  with it (:meth:`PresenceTable.drop_process`).
- A full transfer of a process's entries (a *sync*) is applied in parts:
  every entry it lists is marked with the sync's epoch, and when its last
  part arrives the process's entries not marked are removed
  (:meth:`PresenceTable.end_sync`), in slices.
- :class:`Diffs` nets out what happens within one interval: an entry that
  joined and left again is never sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_string
from typing import Any

import ujson

__all__ = ["Counts", "Diffs", "Entry", "PresenceTable", "checked_presence"]


@dataclass(slots=True)
class Entry:
    """One connection in one room with full presence."""

    room: str
    key: str
    ref: str
    #: What members see: ``{"ref": ..., **app metadata}`` (and the
    #: connection id and worker where the room exposes them), as JSON-able
    #: values; one dict, shared by every frame that shows this entry.
    meta: dict[str, Any]
    #: The process that holds the connection, and the connection's id.
    process: str
    conn: str
    #: The epoch of the last sync from ``process`` that listed this entry.
    epoch: int = 0
    #: ``meta`` as JSON, once a frame needed it (it never changes: an update
    #: is a new entry).
    encoded: bytes | None = None

    def wire(self) -> list[Any]:
        """The entry as it crosses processes."""
        return [self.room, self.key, self.ref, self.meta, self.conn]


class PresenceTable:
    """Every full-presence entry this process knows of, by room and by process."""

    __slots__ = ("_epochs", "by_process", "refs", "rooms")

    def __init__(self) -> None:
        #: room -> key -> ref -> entry
        self.rooms: dict[str, dict[str, dict[str, Entry]]] = {}
        self.refs: dict[str, Entry] = {}
        self.by_process: dict[str, set[str]] = {}
        self._epochs: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def add(self, entry: Entry) -> bool:
        """Add ``entry``; False if its ref was known (then it is re-marked)."""
        known = self.refs.get(entry.ref)
        if known is not None:
            known.epoch = self._epochs.get(known.process, 0)
            return False
        entry.epoch = self._epochs.get(entry.process, 0)
        self.refs[entry.ref] = entry
        self.rooms.setdefault(entry.room, {}).setdefault(entry.key, {})[entry.ref] = (
            entry
        )
        self.by_process.setdefault(entry.process, set()).add(entry.ref)
        return True

    def remove(self, ref: str) -> Entry | None:
        """Remove the entry with ``ref``; it, or None if unknown."""
        entry = self.refs.pop(ref, None)
        if entry is None:
            return None
        keys = self.rooms[entry.room]
        refs = keys[entry.key]
        del refs[ref]
        if not refs:
            del keys[entry.key]
            if not keys:
                del self.rooms[entry.room]
        owned = self.by_process.get(entry.process)
        if owned is not None:
            owned.discard(ref)
            if not owned:
                del self.by_process[entry.process]
        return entry

    def drop_process(self, process: str) -> list[Entry]:
        """Remove every entry of ``process``; returns them."""
        self._epochs.pop(process, None)
        refs = self.by_process.pop(process, set())
        gone = [e for e in (self.remove(ref) for ref in list(refs)) if e is not None]
        return gone

    def forget(self, process: str) -> None:
        """``process`` is gone: its sync epoch need not be kept."""
        self._epochs.pop(process, None)

    def begin_sync(self, process: str) -> None:
        """A full transfer from ``process`` starts: what it lists is re-marked."""
        self._epochs[process] = self._epochs.get(process, 0) + 1

    def stale(self, process: str) -> list[str]:
        """Refs of ``process`` that its latest sync did not list (so far)."""
        epoch = self._epochs.get(process, 0)
        return [
            ref
            for ref in self.by_process.get(process, ())
            if self.refs[ref].epoch < epoch
        ]

    def processes(self) -> list[str]:
        return list(self.by_process)

    def state(self, room: str) -> bytes:
        """The data of the room's ``presence.state`` frame as JSON:
        ``{"room", "users": {key: [meta, ...]}}``."""
        users = b"{%s}" % b",".join(
            b"%s:[%s]" % (_dumps(key), b",".join(_meta(e) for e in refs.values()))
            for key, refs in self.rooms.get(room, {}).items()
        )
        return b'{"room":%s,"users":%s}' % (_dumps(room), users)

    def entries(self, room: str) -> Iterator[Entry]:
        for refs in self.rooms.get(room, {}).values():
            yield from refs.values()

    def count(self, room: str) -> tuple[int, int]:
        """Connections and keys (users) in ``room``."""
        keys = self.rooms.get(room, {})
        return sum(len(refs) for refs in keys.values()), len(keys)


class Diffs:
    """What changed per room since the last interval, netted out."""

    __slots__ = ("joins", "leaves")

    def __init__(self) -> None:
        self.joins: dict[str, dict[str, Entry]] = {}
        self.leaves: dict[str, dict[str, Entry]] = {}

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves)

    def join(self, entry: Entry) -> None:
        left = self.leaves.get(entry.room)
        if left is not None and left.pop(entry.ref, None) is not None:
            if not left:
                del self.leaves[entry.room]
            return  # left and came back within the interval: no change
        self.joins.setdefault(entry.room, {})[entry.ref] = entry

    def leave(self, entry: Entry) -> None:
        joined = self.joins.get(entry.room)
        if joined is not None and joined.pop(entry.ref, None) is not None:
            # Came and went within one interval: nobody needs to know.
            if not joined:
                del self.joins[entry.room]
            return
        self.leaves.setdefault(entry.room, {})[entry.ref] = entry

    def take(self) -> dict[str, bytes]:
        """Each changed room's diff, the data of its ``presence.diff`` frame
        (``{"room", "joins", "leaves"}``, by key) as JSON; resets."""
        joins, leaves = self.joins, self.leaves
        self.joins = {}
        self.leaves = {}
        return {
            room: b'{"room":%s,"joins":%s,"leaves":%s}'
            % (
                _dumps(room),
                _by_key(joins.get(room, {}).values(), _meta),
                _by_key(leaves.get(room, {}).values(), _ref),
            )
            for room in {**joins, **leaves}
        }


def _dumps(value: str) -> bytes:
    """A string as JSON: C code, a tenth of ``ujson.dumps`` with options."""
    return _json_string(value).encode()


def _meta(entry: Entry) -> bytes:
    """The entry's metadata as JSON, encoded once: every diff and state that
    shows the entry reuses it (a state of 10,000 entries would otherwise
    encode 10,000 dicts each interval of a reconnect storm)."""
    encoded = entry.encoded
    if encoded is None:
        encoded = entry.encoded = ujson.dumps(
            entry.meta, ensure_ascii=False, escape_forward_slashes=False
        ).encode()
    return encoded


def _ref(entry: Entry) -> bytes:
    """A leave is its ref alone: members hold the metadata already, so it
    costs its key and ref whatever the metadata's size."""
    return b'{"ref":%s}' % _dumps(entry.ref)


def _by_key(entries: Any, item: Any) -> bytes:
    """``{key: [item, ...]}`` as JSON, built as bytes.

    Not as a dict of lists of dicts: after a peer with 5,000 members died,
    that was 10,000 new containers for the garbage collector, enough to
    start a full collection of the whole heap (100+ ms of stall) in the
    middle of telling members (bench/scale.py, issue 14).
    """
    grouped: dict[str, list[bytes]] = {}
    for entry in entries:
        found = grouped.get(entry.key)
        if found is None:
            grouped[entry.key] = [item(entry)]
        else:
            found.append(item(entry))
    return b"{%s}" % b",".join(
        b"%s:[%s]" % (_dumps(key), b",".join(items)) for key, items in grouped.items()
    )


class Counts:
    """Rooms with counted presence: connections per room, per process."""

    __slots__ = ("rooms",)

    def __init__(self) -> None:
        #: room -> process -> connections there
        self.rooms: dict[str, dict[str, int]] = {}

    def set(self, room: str, process: str, count: int) -> bool:
        """Record ``process``'s count in ``room``; True if it changed."""
        per = self.rooms.get(room)
        if count <= 0:
            if per is None or per.pop(process, None) is None:
                return False
            if not per:
                del self.rooms[room]
            return True
        if per is None:
            per = self.rooms[room] = {}
        if per.get(process) == count:
            return False
        per[process] = count
        return True

    def total(self, room: str) -> int:
        return sum(self.rooms.get(room, {}).values())

    def of(self, process: str) -> dict[str, int]:
        return {
            room: per[process] for room, per in self.rooms.items() if process in per
        }

    def drop_process(self, process: str) -> list[str]:
        """Forget ``process``'s counts; the rooms whose total changed."""
        changed = [room for room, per in self.rooms.items() if process in per]
        for room in changed:
            self.set(room, process, 0)
        return changed


def checked_presence(meta: Any, limit: int) -> dict[str, Any]:
    """``meta`` if it is a JSON-able dict of at most ``limit`` bytes, else an error."""
    if not isinstance(meta, dict):
        raise TypeError(f"presence metadata must be a dict, got {type(meta).__name__}")
    if "ref" in meta:
        raise ValueError("presence metadata may not set 'ref' (the server's)")
    size = len(ujson.dumps(meta))
    if size > limit:
        raise ValueError(
            f"presence metadata is {size} bytes as JSON, over WS_PRESENCE_META_MAX"
            f" ({limit})"
        )
    return dict(meta)
