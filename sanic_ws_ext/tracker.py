"""Presence across processes: tracking, batching, and bounded transfers.

The :class:`Tracker` keeps this process's view of every room with presence
(a :class:`~sanic_ws_ext.presence.PresenceTable` of full rooms and the
:class:`~sanic_ws_ext.presence.Counts` of counted ones), and tells this
process's members what changed.

Rules this module keeps:

- Nothing is replicated for rooms without presence. For a full room each
  process shares its own entries; for a counted room, only its count.
- Changes are batched per ``WS_PRESENCE_INTERVAL``: once per interval this
  process publishes one ``PRESENCE`` op with its own changes, and each of its
  members of a changed room gets one frame: ``presence.state`` for those who
  joined in the interval (encoded once for all of them), ``presence.diff``
  for the others, ``presence.count`` for counted rooms. No timer runs while
  nothing changes. Members are told a room at a time, a few milliseconds of
  it per loop pass, in the order the intervals ended.
- A full transfer (``SYNC``: to a process that started, or one that missed
  our ops) is cut into parts well under ``WS_MAX_PUBLISH``, made and applied
  a slice at a time, so neither side's loop stalls for more than a few
  milliseconds. A process dropped from the cluster is forgotten in slices
  too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import ujson

from .envelope import encode_envelope, encode_envelope_json
from .frames import OP_TEXT, encode_frame
from .presence import (
    Counts,
    Diffs,
    PresenceTable,
    RoomDiff,
    new_entry,
    peer_entry,
    wire_entry,
)
from .wire import fan_out

if TYPE_CHECKING:
    from .config import WSConfig
    from .connection import Connection
    from .index import LocalIndex
    from .rooms import RoomPolicies, RoomSpec
    from .stats import Counters
    from .wire import Flusher, Wire

__all__ = ["Tracker"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Entries per part of a transfer, and per slice of work between yields.
#: About 100 bytes each as JSON: a part stays far under WS_MAX_PUBLISH.
_SLICE = 2000

#: Entries encoded plus members told per loop pass while telling members
#: what changed: about 2 ms of CPU on a 2-core machine. A room is told whole.
_TELL_WORK = 4000

Publish = Callable[[bytes, str | None, str], None]


def new_ref() -> str:
    return uuid.uuid4().hex[:12]


class Tracker:
    """This process's view of presence, and what its members are told."""

    def __init__(
        self,
        config: WSConfig,
        rooms: RoomPolicies,
        local: LocalIndex,
        counters: Counters,
        *,
        worker: str,
        life: str,
        publish: Publish,
    ) -> None:
        self.config = config
        self.policies = rooms
        self.local = local
        self.counters = counters
        self.worker = worker
        self.life = life
        # publish(payload, to, kind): kind is "presence" or "sync".
        self._publish = publish
        self.table = PresenceTable()
        self.counts = Counts()
        self._diffs = Diffs()
        # This process's own changes, not yet published.
        # ref -> the join as it crosses processes (JSON bytes).
        self._out_joins: dict[str, bytes] = {}
        self._out_leaves: list[str] = []
        self._out_counts: dict[str, int] = {}
        # Local members who joined a room this interval (they get its state).
        self._newcomers: dict[str, set[Wire]] = {}
        # Counted rooms whose total changed, or that have newcomers.
        self._recount: set[str] = set()
        # Each local connection's refs, by room.
        self._refs: dict[str, dict[str, str]] = {}
        # Removals in slices under way (a dropped peer, a sync's stale
        # entries): members are told once they are done, in one diff.
        self._removing = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._syncs: dict[str, asyncio.Task[None]] = {}
        # What the intervals tell local members, a room per item, in order
        # (_tell_some): (work done, frames sent) of each.
        self._telling: deque[Callable[[], tuple[int, int]]] = deque()
        self._tell_scheduled = False
        self._salt = os.urandom(16)

    def start(self, loop: asyncio.AbstractEventLoop, flusher: Flusher) -> None:
        self._loop = loop
        self._flusher = flusher

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._telling.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    # -- this process's members ------------------------------------------------

    def joined(self, conn: Connection, room: str) -> None:
        """``conn`` (of this process) joined ``room``."""
        spec, _ = self.policies.lookup(room)
        if spec.presence == "full":
            self._track(conn, room, spec)
            self._newcomers.setdefault(room, set()).add(conn._wire)
        elif spec.presence == "counts":
            self._count_local(room)
            self._newcomers.setdefault(room, set()).add(conn._wire)
            self._recount.add(room)
        else:
            return
        self._arm()

    def left(self, conn: Connection, room: str) -> None:
        """``conn`` (of this process) left ``room``, or is gone."""
        spec, _ = self.policies.lookup(room)
        if spec.presence == "full":
            refs = self._refs.get(conn.id)
            ref = refs.pop(room, None) if refs is not None else None
            if refs is not None and not refs:
                del self._refs[conn.id]
            if ref is not None:
                self._untrack(ref)
        elif spec.presence == "counts":
            self._count_local(room)
        else:
            return
        newcomers = self._newcomers.get(room)
        if newcomers is not None:
            newcomers.discard(conn._wire)
        self._arm()

    def update(self, conn: Connection) -> None:
        """``conn``'s presence metadata changed: re-enter every full room."""
        refs = self._refs.get(conn.id)
        if not refs:
            return
        for room, ref in list(refs.items()):
            self._untrack(ref)
            del refs[room]
            spec, _ = self.policies.lookup(room)
            self._track(conn, room, spec)
        self._arm()

    def _track(self, conn: Connection, room: str, spec: RoomSpec) -> None:
        ref = new_ref()
        meta: dict[str, Any] = {"ref": ref, **conn.presence}
        if spec.expose_ids:
            meta["conn"] = conn.id
            meta["worker"] = conn.worker
        key = conn.user if conn.user is not None else self._anonymous(conn.id)
        entry = new_entry(room, key, ref, meta, self.worker, conn.id)
        self.table.add(entry)
        self._diffs.join(entry)
        self._refs.setdefault(conn.id, {})[room] = ref
        self._out_joins[ref] = wire_entry(entry)

    def _anonymous(self, conn_id: str) -> str:
        """A stable key for a connection without a user, that reveals nothing of it."""
        digest = hashlib.blake2b(conn_id.encode(), key=self._salt, digest_size=6)
        return "~" + digest.hexdigest()

    def _untrack(self, ref: str) -> None:
        entry = self.table.remove(ref)
        if entry is not None:
            self._diffs.leave(entry)
            # A join not published yet is dropped; the leave is published
            # all the same: a transfer (SYNC) may have listed the entry.
            # Peers that never heard of it ignore it.
            self._out_joins.pop(ref, None)
            self._out_leaves.append(ref)

    def _count_local(self, room: str) -> None:
        count = len(self.local.rooms.get(room, ()))
        if self.counts.set(room, self.worker, count):
            self._out_counts[room] = count
            self._recount.add(room)

    # -- what peers publish ------------------------------------------------------

    def apply_presence(self, origin: str, batch: dict[str, Any]) -> None:
        """A peer's batch of changes (a ``PRESENCE`` op, decoded)."""
        for item in batch.get("j", ()):
            entry = peer_entry(item, origin)
            if self.table.add(entry):
                self._diffs.join(entry)
        for ref in batch.get("l", ()):
            gone = self.table.remove(ref)
            if gone is not None:
                self._diffs.leave(gone)
        for room, count in batch.get("c", {}).items():
            if self.counts.set(room, origin, count):
                self._recount.add(room)
        self._arm()

    def apply_sync(self, origin: str, part: dict[str, Any]) -> None:
        """One part of a peer's full transfer."""
        if part.get("first"):
            self.table.begin_sync(origin)
        for item in part.get("entries", ()):
            entry = peer_entry(item, origin)
            if self.table.add(entry):
                self._diffs.join(entry)
        if part.get("last"):
            counts: dict[str, int] = part.get("counts", {})
            for room in set(self.counts.of(origin)) | set(counts):
                if self.counts.set(room, origin, counts.get(room, 0)):
                    self._recount.add(room)
            stale = self.table.stale(origin)
            if stale:
                log.warning(
                    "resync with %s: %d presence entr%s vanished",
                    origin,
                    len(stale),
                    "y" if len(stale) == 1 else "ies",
                )
                self._run(self._remove_slices(stale, origin))
        self._arm()

    def drop(self, process: str) -> None:
        """``process`` is gone: its entries and counts go, in slices."""
        for room in self.counts.drop_process(process):
            self._recount.add(room)
        refs = list(self.table.by_process.get(process, ()))
        self.table.forget(process)
        self._run(self._remove_slices(refs))
        self._arm()

    async def _remove_slices(self, refs: list[str], synced: str | None = None) -> None:
        table = self.table
        epoch = table.epoch(synced) if synced else 0
        self._removing += 1
        try:
            for start in range(0, len(refs), _SLICE):
                if start:
                    await asyncio.sleep(0)  # a slice per loop pass
                # No pass after the last slice: when the table is right, the
                # removal is over, and a flush then tells members at once.
                for ref in refs[start : start + _SLICE]:
                    if ref not in table.refs or (synced and table.marked(ref) >= epoch):
                        continue  # gone, or listed again since
                    entry = table.remove(ref)
                    if entry is not None:
                        self._diffs.leave(entry)
        finally:
            self._removing -= 1
            self._arm()

    # -- transfers ------------------------------------------------------------------

    def send_sync(self, to: str) -> None:
        """Send ``to`` everything this process holds, in parts."""
        old = self._syncs.pop(to, None)
        if old is not None:
            old.cancel()  # never two transfers to one peer at once
        task = self._run(self._sync_parts(to))
        if task is not None:
            self._syncs[to] = task

    async def _sync_parts(self, to: str) -> None:
        mine = list(self.table.by_process.get(self.worker, ()))
        budget = self._budget()
        chunk: list[bytes] = []
        size = 0
        first = True

        def send(last: bool) -> None:
            nonlocal chunk, size, first
            head: dict[str, Any] = {"life": self.life, "first": first, "last": last}
            if last:
                head["counts"] = self.counts.of(self.worker)
            self._publish(_with_list(head, "entries", chunk), to, "sync")
            chunk, size, first = [], 0, False

        send(last=False)  # "first" goes out with the snapshot: later batches follow it
        for start in range(0, len(mine), _SLICE):
            for ref in mine[start : start + _SLICE]:
                entry = self.table.refs.get(ref)
                if entry is None:
                    continue  # it left since we began
                encoded = wire_entry(entry)
                if chunk and size + len(encoded) > budget:
                    send(last=False)
                chunk.append(encoded)
                size += len(encoded) + 1
            await asyncio.sleep(0)  # a slice at a time: the loop goes on
        send(last=True)

    def _budget(self) -> int:
        """Bytes of entries per op: under half of ``WS_MAX_PUBLISH`` (at least
        8 KiB, with entries of at most an eighth of it: config checks both),
        which leaves room for what goes around them."""
        return self.config.max_publish // 2 - 512

    # -- the interval -----------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(
                self.config.presence_interval, self.flush
            )

    def flush(self) -> None:
        """Publish this interval's own changes; tell local members theirs."""
        self._timer = None
        try:
            self._publish_changes()
            if self._removing:
                # Half a dead peer's leaves now and half in the next
                # interval would be two diffs (and twice the frames) where
                # one does: a removal takes a few loop passes.
                self._arm()
            else:
                self._tell_members()
        except Exception:
            log.exception("websocket presence flush failed")

    def _publish_changes(self) -> None:
        joins, leaves, counts = self._out_joins, self._out_leaves, self._out_counts
        if not (joins or leaves or counts):
            return
        self._out_joins, self._out_leaves, self._out_counts = {}, [], {}
        try:
            self._send_changes(joins, leaves, counts)
        except Exception:
            # Not lost: tried again at the next interval (the error is logged
            # by flush()).
            self._out_joins = {**joins, **self._out_joins}
            self._out_leaves = leaves + self._out_leaves
            self._out_counts = {**counts, **self._out_counts}
            raise

    def _send_changes(
        self, joins: dict[str, bytes], leaves: list[str], counts: dict[str, int]
    ) -> None:
        budget = self._budget()
        head: dict[str, Any] = {"life": self.life}
        if counts:
            head["c"] = counts
        # Leaves first, in their own ops: they are small, and a join that
        # follows a leave of the same key (a metadata update) then arrives
        # after it, as it happened.
        for items in _chunks([ujson.dumps(ref).encode() for ref in leaves], budget):
            self._publish(_with_list(head, "l", items), None, "presence")
            head = {"life": self.life}
        for items in _chunks(list(joins.values()), budget):
            self._publish(_with_list(head, "j", items), None, "presence")
            head = {"life": self.life}
        if len(head) > 1:  # counts alone
            self._publish(ujson.dumps(head).encode(), None, "presence")

    def _tell_members(self) -> None:
        """Queue what this interval's changes tell local members, and start
        telling: a room at a time, a few milliseconds of it per loop pass.

        Each room's diff is encoded when its turn comes; a newcomer's state
        is taken now, at the interval's end, as the diffs are, so the next
        interval's diff follows it exactly.
        """
        telling = self._telling
        if telling:
            # The last interval is still being told (a pass took longer than
            # the interval, or flush() ran twice): finish it first, while
            # those who joined since are still this interval's newcomers.
            self._tell_some(whole=True)
        newcomers, self._newcomers = self._newcomers, {}
        recount, self._recount = self._recount, set()
        rooms = self.local.rooms
        for room, diff in self._diffs.take_rooms().items():
            fresh = newcomers.pop(room, None)
            state = self._state(room) if fresh and rooms.get(room) else None
            telling.append(functools.partial(self._tell_diff, diff, fresh, state))
        for room, fresh in newcomers.items():  # joined, nothing else changed
            if (
                fresh
                and rooms.get(room)
                and room not in recount
                and self.policies.presence(room) == "full"
            ):
                state = self._state(room)
                telling.append(functools.partial(self._tell_state, room, fresh, state))
        for room in recount:
            telling.append(functools.partial(self._tell_count, room))
        if not self._tell_scheduled:
            self._tell_some()

    def _tell_some(self, whole: bool = False) -> None:
        """Tell rooms until about _TELL_WORK entries and members are done;
        the rest in the next pass. A worker's death told all at once was one
        callback of 15 to 27 ms (5,000 leaves to 3,300 members of one room,
        and the small rooms they were in: bench/scale.py, issue 14).
        ``whole``: all of it now."""
        self._tell_scheduled = False
        telling = self._telling
        done = 0
        sent = 0
        while telling and (whole or done < _TELL_WORK):
            try:
                work, told = telling.popleft()()
            except Exception:
                # One room's failure must not stop the others being told.
                log.exception("websocket presence: telling members failed")
                continue
            done += work
            sent += told
        self.counters.messages_out += sent
        if telling and self._loop is not None:
            self._tell_scheduled = True
            self._loop.call_soon(self._tell_some)

    def _members(self, room: str) -> set[Wire]:
        """``room``'s local members who are owed what is being told: not
        those who joined since the interval ended (the next one sends them
        the state)."""
        members = self.local.rooms.get(room)
        if not members:
            return set()
        later = self._newcomers.get(room)
        return members - later if later else members

    def _tell_diff(
        self, diff: RoomDiff, fresh: set[Wire] | None, state: bytes | None
    ) -> tuple[int, int]:
        members = self._members(diff.room)
        if not members:
            return 1, 0
        sent = 0
        others = members - fresh if fresh else members
        if others:
            sent += self._send(others, "presence.diff", diff.encode())
        if fresh and state is not None:
            sent += self._send(fresh & members, "presence.state", state)
        return len(diff) + len(members), sent

    def _tell_state(self, room: str, fresh: set[Wire], state: bytes) -> tuple[int, int]:
        members = self._members(room)
        return len(fresh) + 1, self._send(fresh & members, "presence.state", state)

    def _tell_count(self, room: str) -> tuple[int, int]:
        members = self.local.rooms.get(room)
        if not members:
            return 1, 0
        total = self.counts.total(room)
        data = {"room": room, "connections": total}
        return len(members), self._send(members, "presence.count", data)

    def _state(self, room: str) -> bytes:
        return self.table.state(room)

    def _send(
        self, wires: Iterable[Wire], type_: str, data: dict[str, Any] | bytes
    ) -> int:
        """``data``: a dict, or JSON already encoded (diffs and states: see
        :func:`~sanic_ws_ext.presence._by_key` for why)."""
        assert self._flusher is not None
        body = (
            encode_envelope_json(type_, data)
            if isinstance(data, bytes)
            else encode_envelope(type_, data)
        )
        frame = encode_frame(OP_TEXT, body)
        # Written by the flusher's passes, not in this one: telling every
        # room's members is work enough for one loop pass.
        return fan_out(
            list(wires),
            frame,
            (),
            self.config.max_backpressure,
            self._flusher,
            account=False,
        )

    def _run(self, work: Any) -> Any:
        if self._loop is None:
            return None
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- queries ---------------------------------------------------------------------

    def full(self, room: str) -> bool:
        return self.policies.presence(room) == "full"

    def status(self) -> dict[str, Any]:
        return {
            "entries": len(self.table),
            "rooms": len(self.table.rooms),
            "counted_rooms": len(self.counts.rooms),
        }


def _chunks(items: list[bytes], budget: int) -> Iterator[list[bytes]]:
    """``items`` in runs of at most ``budget`` bytes (at least one each)."""
    run: list[bytes] = []
    size = 0
    for item in items:
        if run and size + len(item) > budget:
            yield run
            run, size = [], 0
        run.append(item)
        size += len(item) + 1
    if run:
        yield run


def _with_list(head: dict[str, Any], key: str, items: list[bytes]) -> bytes:
    """``head`` as JSON with ``key`` set to the already-encoded ``items``."""
    body = ujson.dumps(head).encode()
    return b'%s,"%s":[%s]}' % (body[:-1], key.encode(), b",".join(items))
