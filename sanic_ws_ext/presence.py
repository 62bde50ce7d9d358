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
- :class:`Diffs` nets out what happens within one interval: an entry that
  joined and left again is never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring as _json_string
from typing import Any, Final

import ujson

__all__ = [
    "Counts",
    "Diffs",
    "Entry",
    "PresenceTable",
    "RoomDiff",
    "checked_presence",
    "new_entry",
    "peer_entry",
    "wire_entry",
]


#: One connection in one room with full presence, as a plain tuple:
#: ``(room, key, ref, meta, process, conn)``. ``meta`` is what members see
#: (``{"ref": ..., **app metadata}``, and the connection id and worker where
#: the room exposes them) as JSON bytes, encoded once; ``process`` holds the
#: connection ``conn``. A tuple of strings and bytes, not an object: CPython
#: stops tracking such a tuple after one collection, so 10,000 entries cost a
#: full garbage collection nothing (an object and its metadata dict each were
#: 37,000 of the 98,000 objects a survivor's collection walked in
#: bench/scale.py, issue 14).
Entry = tuple[str, str, str, bytes, str, str]
ROOM: Final = 0
KEY: Final = 1
REF: Final = 2
META: Final = 3
PROCESS: Final = 4
CONN: Final = 5


def new_entry(
    room: str, key: str, ref: str, meta: dict[str, Any], process: str, conn: str
) -> Entry:
    """An entry of this process's own; ``meta`` includes its ``ref``."""
    encoded = ujson.dumps(meta, ensure_ascii=False, escape_forward_slashes=False)
    return (room, key, ref, encoded.encode(), process, conn)


def wire_entry(entry: Entry) -> bytes:
    """The entry as it crosses processes, JSON: ``[room, key, ref, meta, conn]``
    with ``meta`` as a JSON string, which a peer turns back into bytes without
    building a dict of it."""
    room, key, ref, meta, _, conn = entry
    return b"[%s,%s,%s,%s,%s]" % (
        _dumps(room),
        _dumps(key),
        _dumps(ref),
        _dumps(meta.decode()),
        _dumps(conn),
    )


def peer_entry(item: Any, process: str) -> Entry:
    """An entry from a peer's op (decoded JSON, as :func:`wire_entry` sends it).

    A peer of an earlier release sends ``meta`` as an object: encoded here.
    """
    room, key, ref, meta, conn = item
    if isinstance(meta, str):
        encoded = meta.encode()
    else:
        encoded = ujson.dumps(
            meta, ensure_ascii=False, escape_forward_slashes=False
        ).encode()
    return (room, key, ref, encoded, process, conn)


class PresenceTable:
    """The full-presence entries this process knows of, by room and by process.

    Every container here holds only strings, numbers, bytes and entries, so
    the collector stops tracking them too once their entries are untracked.
    """

    __slots__ = ("by_process", "keys", "refs", "rooms")

    def __init__(self) -> None:
        #: room -> ref -> entry
        self.rooms: dict[str, dict[str, Entry]] = {}
        #: room -> key -> its entries there (a user's tabs)
        self.keys: dict[str, dict[str, int]] = {}
        self.refs: dict[str, Entry] = {}
        self.by_process: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def add(self, entry: Entry) -> bool:
        """Add ``entry``; False if its ref was known."""
        ref = entry[REF]
        if ref in self.refs:
            return False
        self.refs[ref] = entry
        room = entry[ROOM]
        self.rooms.setdefault(room, {})[ref] = entry
        keys = self.keys.setdefault(room, {})
        keys[entry[KEY]] = keys.get(entry[KEY], 0) + 1
        self.by_process.setdefault(entry[PROCESS], set()).add(ref)
        return True

    def remove(self, ref: str) -> Entry | None:
        """Remove the entry with ``ref``; it, or None if unknown."""
        entry = self.refs.pop(ref, None)
        if entry is None:
            return None
        room, key = entry[ROOM], entry[KEY]
        entries = self.rooms[room]
        del entries[ref]
        keys = self.keys[room]
        if keys[key] > 1:
            keys[key] -= 1
        else:
            del keys[key]
        if not entries:
            del self.rooms[room]
            del self.keys[room]
        owned = self.by_process.get(entry[PROCESS])
        if owned is not None:
            owned.discard(ref)
            if not owned:
                del self.by_process[entry[PROCESS]]
        return entry

    def drop_process(self, process: str) -> list[Entry]:
        """Remove every entry of ``process``; returns them."""
        refs = self.by_process.pop(process, set())
        gone = [e for e in (self.remove(ref) for ref in list(refs)) if e is not None]
        return gone

    def processes(self) -> list[str]:
        return list(self.by_process)

    def state(self, room: str) -> bytes:
        """The data of the room's ``presence.state`` frame as JSON:
        ``{"room", "users": {key: [meta, ...]}}``."""
        users = _by_key(self.rooms.get(room, {}).values(), _meta)
        return b'{"room":%s,"users":%s}' % (_dumps(room), users)

    def entries(self, room: str) -> Iterator[Entry]:
        yield from self.rooms.get(room, {}).values()

    def count(self, room: str) -> tuple[int, int]:
        """Connections and keys (users) in ``room``."""
        return len(self.rooms.get(room, ())), len(self.keys.get(room, ()))


class Diffs:
    """What changed per room since the last interval, netted out."""

    __slots__ = ("joins", "leaves")

    def __init__(self) -> None:
        self.joins: dict[str, dict[str, Entry]] = {}
        self.leaves: dict[str, dict[str, Entry]] = {}

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves)

    def join(self, entry: Entry) -> None:
        room, ref = entry[ROOM], entry[REF]
        left = self.leaves.get(room)
        if left is not None and left.pop(ref, None) is not None:
            if not left:
                del self.leaves[room]
            return  # left and came back within the interval: no change
        self.joins.setdefault(room, {})[ref] = entry

    def leave(self, entry: Entry) -> None:
        room, ref = entry[ROOM], entry[REF]
        joined = self.joins.get(room)
        if joined is not None and joined.pop(ref, None) is not None:
            # Came and went within one interval: nobody needs to know.
            if not joined:
                del self.joins[room]
            return
        self.leaves.setdefault(room, {})[ref] = entry

    def take(self) -> dict[str, bytes]:
        """Each changed room's diff, the data of its ``presence.diff`` frame
        (``{"room", "joins", "leaves"}``, by key) as JSON; resets."""
        return {room: diff.encode() for room, diff in self.take_rooms().items()}

    def take_rooms(self) -> dict[str, RoomDiff]:
        """Each changed room's diff, to encode when it is sent; resets."""
        joins, leaves = self.joins, self.leaves
        self.joins = {}
        self.leaves = {}
        return {
            room: RoomDiff(room, joins.get(room, {}), leaves.get(room, {}))
            for room in {**joins, **leaves}
        }


class RoomDiff:
    """One room's joins and leaves of an interval, by ref."""

    __slots__ = ("joins", "leaves", "room")

    def __init__(
        self, room: str, joins: dict[str, Entry], leaves: dict[str, Entry]
    ) -> None:
        self.room = room
        self.joins = joins
        self.leaves = leaves

    def __len__(self) -> int:
        return len(self.joins) + len(self.leaves)

    def encode(self) -> bytes:
        """The data of its ``presence.diff`` frame as JSON."""
        return b'{"room":%s,"joins":%s,"leaves":%s}' % (
            _dumps(self.room),
            _by_key(self.joins.values(), _meta),
            _by_key(self.leaves.values(), _ref),
        )


def _dumps(value: str) -> bytes:
    """A string as JSON: C code, a tenth of ``ujson.dumps`` with options."""
    return _json_string(value).encode()


def _meta(entry: Entry) -> bytes:
    return entry[META]


def _ref(entry: Entry) -> bytes:
    """A leave is its ref alone: members hold the metadata already, so it
    costs its key and ref whatever the metadata's size."""
    return b'{"ref":%s}' % _dumps(entry[REF])


def _by_key(entries: Iterable[Entry], item: Callable[[Entry], bytes]) -> bytes:
    """``{key: [item, ...]}`` as JSON, built as bytes.

    Grouped in a dict of bytes, not of lists: after a peer with 5,000 members
    died, 10,000 new containers were enough to start a full collection of the
    whole heap (100+ ms of stall) in the middle of telling members
    (bench/scale.py, issue 14); bytes are not tracked by the collector.
    """
    grouped: dict[str, bytes] = {}
    for entry in entries:
        key = entry[KEY]
        found = grouped.get(key)
        # A key's items are a user's tabs: a few, so joining them is cheap.
        grouped[key] = item(entry) if found is None else found + b"," + item(entry)
    return b"{%s}" % b",".join(
        b"%s:[%s]" % (_dumps(key), items) for key, items in grouped.items()
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
