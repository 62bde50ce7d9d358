"""Presence across processes: tracking, batching, routing by interest.

The :class:`Tracker` keeps this process's view of the rooms with presence it
*follows* (a :class:`~sanic_ws_ext.presence.PresenceTable` of full rooms and
the :class:`~sanic_ws_ext.presence.Counts` of counted ones), and decides what
this process's members are told of it (a
:class:`~sanic_ws_ext.telling.Teller` sends it).

Rules this module keeps:

- Nothing is replicated for rooms without presence. For a full room each
  process shares its own entries; for a counted room, only its count.
- Routed by interest: a process follows a room while it has members of it
  (and two beats after the last one left, so a page reload does not ask
  again), and hears nothing of the others. Its changes go to the room's own
  channel. When it starts to follow a room it asks every process for its
  part of the room (a ``SYNC`` request naming it), and tells its members the
  state once every live process answered, or ``WS_QUERY_TIMEOUT`` after it
  heard the room (then the silent ones are asked again, alone).
- Versions order what travels on different channels. Each op a process
  publishes for a room carries a version (one counter per process, across
  rooms) and the version of its previous op for that room (0: it had
  nothing there). A follower applies an op that follows the version it
  holds for its sender, drops one it has seen, and on a gap asks the sender
  again, holding its ops until it answers. An answer is the sender's state
  at a version (its pending changes to the room are published first), so it
  may arrive before or after the ops around it.
- Changes are batched per ``WS_PRESENCE_INTERVAL``: once per interval this
  process publishes one ``PRESENCE`` op per changed room with its own
  changes, and each of its members of a changed room gets one frame:
  ``presence.state`` for those who joined in the interval (encoded once for
  all of them), ``presence.diff`` for the others, ``presence.count`` for
  counted rooms. No timer runs while nothing changes. Members are told a
  room at a time, a few milliseconds of it per loop pass, in the order the
  intervals ended (telling.py).
- An answer is cut into parts well under ``WS_MAX_PUBLISH``; a process
  dropped from the cluster, and a room no longer followed, are forgotten in
  slices, so no loop stalls for more than a few milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import ujson

from .presence import (
    PROCESS,
    REF,
    ROOM,
    Counts,
    Diffs,
    PresenceTable,
    new_entry,
    peer_entry,
    wire_entry,
)
from .telling import Teller

if TYPE_CHECKING:
    from .config import WSConfig
    from .connection import Connection
    from .index import LocalIndex
    from .rooms import RoomPolicies, RoomSpec
    from .stats import Counters
    from .wire import Flusher, Wire

__all__ = ["Tracker", "chunks"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Entries per slice of work between yields, and per part of an answer at
#: most. About 100 bytes each as JSON: a part stays far under WS_MAX_PUBLISH.
_SLICE = 2000

#: A room is followed this many beats after its last member here left.
_LINGER_BEATS = 2

#: Ops of one sender held for one room while its answer is awaited; past
#: this they are let go, and the gap they leave is asked about again.
_HELD_MAX = 256

#: publish(payload, to, kind, room): kind is "presence" (a room's changes,
#: to everyone following ``room``), "answer" (a part of our state of a room,
#: to ``to``), "request" (rooms whose state we want, from ``to`` or
#: everyone) or "hello" (who we are, to ``to``).
Publish = Callable[[bytes, str | None, str, str], None]


def new_ref() -> str:
    return uuid.uuid4().hex[:12]


class _Changes:
    """This process's changes to one room, not published yet."""

    __slots__ = ("count", "joins", "leaves")

    def __init__(self) -> None:
        #: ref -> the join as it crosses processes (JSON bytes).
        self.joins: dict[str, bytes] = {}
        self.leaves: list[str] = []
        #: The room's new count here (counted rooms), if it changed.
        self.count: int | None = None


class _Following:
    """A room this process follows, and how far it is with each sender."""

    __slots__ = (
        "asked",
        "base",
        "held",
        "late",
        "linger",
        "listed",
        "ready",
        "waiting",
    )

    def __init__(self) -> None:
        #: Sender -> the version of its part of the room held here.
        self.base: dict[str, int] = {}
        #: Sender -> its ops held until its answer is applied.
        self.held: dict[str, list[dict[str, Any]]] = {}
        #: Senders whose answer is awaited (their ops are held).
        self.waiting: set[str] = set()
        #: Sender -> refs its answer listed so far (an answer in parts).
        self.listed: dict[str, set[str]] = {}
        #: The room's state was asked for (until then every op is held).
        self.asked = False
        #: Every live process answered (or the wait ran out): members may
        #: be told the state.
        self.ready = False
        #: The wait for answers ran out (``WS_QUERY_TIMEOUT``): the room is
        #: ready whoever is still asked, once discovery allows.
        self.late = False
        #: The pending end of following, after the last member here left.
        self.linger: asyncio.TimerHandle | None = None


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
        peers: Callable[[], Iterable[str]] = tuple,
        subscribed: Callable[[str], Awaitable[None]] | None = None,
        clustered: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.policies = rooms
        self.local = local
        self.counters = counters
        self.worker = worker
        self.life = life
        self._publish = publish
        # The live peers a room's first member here waits to hear from.
        self._peers = peers
        # Returns once a room's publications reach this process (bounded).
        self._subscribed = subscribed
        # Whether other processes can exist (else nobody is asked).
        self._clustered = clustered
        # The first beat after start: peers are still being met (each is
        # asked as it is met), so no room's state is complete before it ends.
        self._discovering = True
        self._discovery: asyncio.TimerHandle | None = None
        self.table = PresenceTable()
        self.counts = Counts()
        self._diffs = Diffs()
        # The rooms followed (see the module's rules).
        self._following: dict[str, _Following] = {}
        # Rooms no longer followed whose peers' entries are being forgotten,
        # a slice at a time: room -> refs left to remove.
        self._forgetting: dict[str, list[str]] = {}
        # This process's own changes, not yet published, by room.
        self._changes: dict[str, _Changes] = {}
        # Versions: the last one used, and each room's last op's.
        self._version = 0
        self._versions: dict[str, int] = {}
        # Local members who joined a room this interval (they get its state).
        self._newcomers: dict[str, set[Wire]] = {}
        # Counted rooms whose total changed, or that have newcomers.
        self._recount: set[str] = set()
        # Each local connection's refs, by room.
        self._refs: dict[str, dict[str, str]] = {}
        # Removals in slices under way (a dropped peer): members are told
        # once they are done, in one diff. Process -> refs left to remove.
        self._removing: dict[str, list[str]] = {}
        # One pending "ask again" per peer (_unanswered), for every room.
        self._asking: dict[str, asyncio.TimerHandle] = {}
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Sends local members what the intervals tell them.
        self._teller = Teller(
            config, local, counters, self.counts, joined_since=self._newcomers_of
        )
        self._salt = os.urandom(16)

    def start(self, loop: asyncio.AbstractEventLoop, flusher: Flusher) -> None:
        self._loop = loop
        self._teller.start(loop, flusher)
        self.discover()

    def discover(self) -> None:
        """Peers are being met (this process started, or its link is back):
        for one beat, no room's state is taken for complete."""
        if self._loop is None:
            return
        self._discovering = True
        if self._discovery is not None:
            self._discovery.cancel()
        self._discovery = self._loop.call_later(
            self.config.relay_beat, self._discovered
        )

    def _discovered(self) -> None:
        self._discovery = None
        self._discovering = False
        for room, following in self._following.items():
            if (
                following.asked
                and not following.ready
                and (following.late or not following.waiting)
            ):
                self._ready(room, following)

    async def stop(self) -> None:
        self._stopped = True  # timers still pending do nothing from now on
        for handle in self._asking.values():
            handle.cancel()
        self._asking.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._teller.stop()
        if self._discovery is not None:
            self._discovery.cancel()
        for following in self._following.values():
            if following.linger is not None:
                following.linger.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    # -- this process's members ------------------------------------------------

    def joined(self, conn: Connection, room: str) -> None:
        """``conn`` (of this process) joined ``room``."""
        spec, _ = self.policies.lookup(room)
        if spec.presence == "full":
            self._follow(room)
            self._track(conn, room, spec)
        elif spec.presence == "counts":
            self._follow(room)
            self._count_local(room)
            self._recount.add(room)
        else:
            return
        self._newcomers.setdefault(room, set()).add(conn._wire)
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
        if not self.local.rooms.get(room):
            self._unfollow_later(room)
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
        self._changes_of(room).joins[ref] = wire_entry(entry)

    def _anonymous(self, conn_id: str) -> str:
        """A stable key for a connection without a user, that reveals nothing of it."""
        digest = hashlib.blake2b(conn_id.encode(), key=self._salt, digest_size=6)
        return "~" + digest.hexdigest()

    def _untrack(self, ref: str) -> None:
        entry = self.table.remove(ref)
        if entry is not None:
            self._diffs.leave(entry)
            changes = self._changes_of(entry[ROOM])
            # A join not published yet is dropped, and nobody needs its
            # leave: an answer lists only what was published (see answer()).
            if changes.joins.pop(ref, None) is None:
                changes.leaves.append(ref)

    def _count_local(self, room: str) -> None:
        count = len(self.local.rooms.get(room, ()))
        if self.counts.set(room, self.worker, count):
            self._changes_of(room).count = count
            self._recount.add(room)

    def _changes_of(self, room: str) -> _Changes:
        changes = self._changes.get(room)
        if changes is None:
            changes = self._changes[room] = _Changes()
        return changes

    # -- following rooms -----------------------------------------------------------

    def _follow(self, room: str) -> None:
        following = self._following.get(room)
        if following is not None:
            if following.linger is not None:
                following.linger.cancel()
                following.linger = None
            return
        forgetting = self._forgetting.pop(room, None)
        if forgetting:  # followed again before its last slices went
            self._forget(forgetting)
        following = self._following[room] = _Following()
        if self._loop is None or self._subscribed is None or not self._clustered():
            following.asked = following.ready = True  # one process: nobody to ask
            return
        self._run(self._ask(room, following))

    async def _ask(self, room: str, following: _Following) -> None:
        """Ask every live process for its part of ``room``, once this process
        hears the room's channel (an op published before that is caught as a
        gap: it only costs asking its sender again)."""
        assert self._subscribed is not None and self._loop is not None
        await self._subscribed(room)
        if self._following.get(room) is not following:
            return  # no longer followed
        following.asked = True
        following.waiting.update(p for p in self._peers() if p != self.worker)
        if following.waiting:
            self._request([room], None)
        held, following.held = following.held, {}
        for sender, ops in held.items():
            if sender in following.waiting:
                following.held[sender] = ops
            else:  # a process not known when we asked: its ops are whole
                for batch in ops:
                    self._apply_op(room, following, sender, batch)
        # Peers met from now on during discovery are asked too: bounded all
        # the same.
        self._loop.call_later(self.config.query_timeout, self._give_up, room, following)
        if not following.waiting:
            self._ready(room, following)
        self._arm()

    def _give_up(self, room: str, following: _Following) -> None:
        if (
            self._stopped
            or self._following.get(room) is not following
            or following.ready
        ):
            return
        following.late = True
        silent = sorted(following.waiting)
        if silent:
            log.warning(
                "presence of %r: no state from %s within %gs; asking each again",
                room,
                ", ".join(silent),
                self.config.query_timeout,
            )
            for peer in silent:
                # A part of its answer may be lost: start over, asked alone
                # (and again while it does not answer); its ops wait for it.
                following.listed.pop(peer, None)
                self._request([room], peer)
        self._ready(room, following)

    def _ready(self, room: str, following: _Following) -> None:
        if self._discovering:
            return  # _discovered() comes back to it
        following.ready = True
        if self._newcomers.get(room):
            self._arm()

    def _unfollow_later(self, room: str) -> None:
        following = self._following.get(room)
        if following is None or following.linger is not None or self._loop is None:
            return
        following.linger = self._loop.call_later(
            _LINGER_BEATS * self.config.relay_beat, self._unfollow, room, following
        )

    def _unfollow(self, room: str, following: _Following) -> None:
        following.linger = None
        if self._following.get(room) is not following or self.local.rooms.get(room):
            return
        del self._following[room]
        self._newcomers.pop(room, None)
        for process in list(self.counts.rooms.get(room, ())):
            if process != self.worker:
                self.counts.set(room, process, 0)
        others = [
            ref
            for ref, entry in self.table.rooms.get(room, {}).items()
            if entry[PROCESS] != self.worker
        ]
        if len(others) <= _SLICE:
            self._forget(others)
        else:
            self._forgetting[room] = others
            self._run(self._forget_slices(room, others))

    async def _forget_slices(self, room: str, refs: list[str]) -> None:
        """Forget a room no longer followed a slice per loop pass (nobody
        here is told: nobody here is in it)."""
        while self._forgetting.get(room) is refs and refs:
            self._forget(refs[-_SLICE:])
            del refs[-_SLICE:]
            await asyncio.sleep(0)
        if self._forgetting.get(room) is refs:
            del self._forgetting[room]

    def _forget(self, refs: list[str]) -> None:
        remove = self.table.remove
        for ref in refs:
            remove(ref)

    def follows(self, room: str) -> bool:
        """Whether this process follows ``room`` (it takes its presence ops)."""
        return room in self._following

    def holds(self, room: str) -> bool:
        """Whether this process holds ``room``'s whole presence now."""
        following = self._following.get(room)
        return following is not None and following.ready

    # -- what peers publish ------------------------------------------------------

    def apply_presence(self, origin: str, batch: dict[str, Any]) -> None:
        """A peer's changes to one room (a ``PRESENCE`` op, decoded)."""
        room = batch.get("room")
        following = self._following.get(room) if isinstance(room, str) else None
        if following is None:
            return  # not followed here (or a batch of an earlier release)
        assert isinstance(room, str)
        if origin in self._removing:
            self._finish_removal(origin)
        if (
            not following.asked
            or origin in following.waiting
            or origin in following.listed
        ):
            held = following.held.setdefault(origin, [])
            if len(held) >= _HELD_MAX and following.asked:
                # Its answer is long in coming: let the ops go and ask again
                # (the answer covers them).
                held.clear()
                following.waiting.add(origin)
                self._request([room], origin)
            held.append(batch)
            return
        self._apply_op(room, following, origin, batch)
        self._arm()

    def _apply_op(
        self, room: str, following: _Following, origin: str, batch: dict[str, Any]
    ) -> None:
        version = batch.get("v", 0)
        previous = batch.get("p", 0)
        base = following.base.get(origin)
        if base is not None and version <= base:
            return  # seen, or older than the answer applied
        if previous == 0:
            # The sender had nothing in the room before this op.
            self._remove_part(room, origin)
        elif previous != base:
            # Ops were missed: ask the sender; its ops wait for the answer.
            log.info("presence of %r: missed ops of %s; asking it again", room, origin)
            following.waiting.add(origin)
            following.held.setdefault(origin, []).append(batch)
            self._request([room], origin)
            return
        table = self.table
        for ref in batch.get("l", ()):
            entry = table.refs.get(ref)
            if entry is not None and entry[PROCESS] == origin:
                table.remove(ref)
                self._diffs.leave(entry)
        for item in batch.get("j", ()):
            entry = peer_entry(item, origin)
            if entry[ROOM] == room and table.add(entry):
                self._diffs.join(entry)
        count = batch.get("c")
        if count is not None and self.counts.set(room, origin, count):
            self._recount.add(room)
        following.base[origin] = version

    def _remove_part(self, room: str, origin: str, keep: Collection[str] = ()) -> None:
        """Remove ``origin``'s entries of ``room`` but ``keep``."""
        table = self.table
        gone = [
            ref
            for ref, entry in table.rooms.get(room, {}).items()
            if entry[PROCESS] == origin and ref not in keep
        ]
        for ref in gone:
            entry = table.remove(ref)
            if entry is not None:
                self._diffs.leave(entry)

    def apply_answer(self, origin: str, part: dict[str, Any]) -> None:
        """A part of a peer's answer: its state of one room at a version."""
        room = part.get("room")
        following = self._following.get(room) if isinstance(room, str) else None
        if following is None:
            return
        assert isinstance(room, str)
        if origin in self._removing:
            self._finish_removal(origin)
        version = part.get("v", 0)
        base = following.base.get(origin)
        if base is not None and version < base:
            following.listed.pop(origin, None)
            return  # we hold a later state than this
        listed = following.listed.get(origin)
        if part.get("first"):
            listed = following.listed[origin] = set()
        if listed is None:
            return  # the rest of an answer whose start we did not take
        table = self.table
        for item in part.get("entries", ()):
            entry = peer_entry(item, origin)
            if entry[ROOM] != room:
                continue
            listed.add(entry[REF])
            if table.add(entry):
                self._diffs.join(entry)
        if not part.get("last"):
            return
        del following.listed[origin]
        self._remove_part(room, origin, keep=listed)
        if self.counts.set(room, origin, part.get("c", 0)):
            self._recount.add(room)
        following.base[origin] = version
        following.waiting.discard(origin)
        for batch in following.held.pop(origin, ()):
            if origin in following.waiting:  # asked again meanwhile
                following.held.setdefault(origin, []).append(batch)
            else:
                self._apply_op(room, following, origin, batch)
        if following.asked and not following.ready and not following.waiting:
            self._ready(room, following)
        self._arm()

    def drop(self, process: str) -> None:
        """``process`` is gone: its entries and counts go, in slices."""
        for room in self.counts.drop_process(process):
            self._recount.add(room)
        for room, following in self._following.items():
            following.base.pop(process, None)
            following.held.pop(process, None)
            following.listed.pop(process, None)
            if process in following.waiting:
                following.waiting.discard(process)
                if following.asked and not following.ready and not following.waiting:
                    self._ready(room, following)
        self._finish_removal(process)  # an earlier drop's, if any
        refs = list(self.table.by_process.get(process, ()))
        if refs and self._loop is not None:
            self._removing[process] = refs
            self._run(self._remove_slices(process, refs))
        else:
            self._remove(refs)
        self._arm()

    async def _remove_slices(self, process: str, refs: list[str]) -> None:
        try:
            while self._removing.get(process) is refs and refs:
                self._remove(refs[-_SLICE:])
                del refs[-_SLICE:]
                if refs:
                    await asyncio.sleep(0)  # a slice per loop pass
                # No pass after the last slice: when the table is right, the
                # removal is over, and a flush then tells members at once.
        finally:
            if self._removing.get(process) is refs:
                del self._removing[process]
            self._arm()

    def _finish_removal(self, process: str) -> None:
        """Remove now what is left of ``process``'s removal: it is heard
        again, and what it says next must not be removed by a later slice."""
        refs = self._removing.pop(process, None)
        if refs:
            self._remove(refs)

    def _remove(self, refs: list[str]) -> None:
        table = self.table
        for ref in refs:
            entry = table.remove(ref)
            if entry is not None:
                self._diffs.leave(entry)

    # -- asking and answering -------------------------------------------------------

    def resync(self, peer: str) -> None:
        """Ops of ``peer`` may have been missed (or it was dropped and is
        back): ask it again for its part of every room followed here."""
        self._finish_removal(peer)
        rooms = [room for room, f in self._following.items() if f.asked]
        for room in rooms:
            self._following[room].waiting.add(peer)
        if rooms:
            self._request(rooms, peer)

    def _request(self, rooms: list[str], to: str | None) -> None:
        if self._stopped:
            return
        budget = self._budget()
        head = {"life": self.life}
        for names in chunks([ujson.dumps(room).encode() for room in rooms], budget):
            self._publish(_with_list(head, "rooms", names), to, "request", "")
        if to is not None and to not in self._asking and self._loop is not None:
            # A request or its answer can be lost (a link down): ask again
            # while ``to`` lives and has not answered, one timer per peer
            # for all its rooms.
            self._asking[to] = self._loop.call_later(
                self.config.query_timeout, self._unanswered, to
            )

    def _unanswered(self, to: str) -> None:
        self._asking.pop(to, None)
        if self._stopped:
            return
        again = [room for room, f in self._following.items() if to in f.waiting]
        if again:
            log.info(
                "presence: %s has not answered for %d room(s); asking again",
                to,
                len(again),
            )
            self._request(again, to)

    def answer(self, to: str, rooms: Iterable[Any]) -> None:
        """Send ``to`` this process's part of each of ``rooms``, each at a
        version: our pending changes to it are published first, so what is
        listed is what was published. Made at once, not in slices: the
        listing must be of one moment."""
        budget = self._budget()
        for room in rooms:
            if not isinstance(room, str):
                continue
            changes = self._changes.pop(room, None)
            if changes is not None:
                try:
                    self._send_room(room, changes)
                except Exception:
                    self._requeue(room, changes)
                    self._arm()  # tried again at the next interval
                    log.exception("presence of %r: answer to %s failed", room, to)
                    continue
            version = self._versions.get(room, self._version)
            mine = [
                wire_entry(entry)
                for entry in self.table.rooms.get(room, {}).values()
                if entry[PROCESS] == self.worker
            ]
            parts = list(chunks(mine, budget)) or [[]]
            for index, items in enumerate(parts):
                head: dict[str, Any] = {
                    "life": self.life,
                    "room": room,
                    "v": version,
                    "first": index == 0,
                    "last": index == len(parts) - 1,
                }
                if head["last"]:
                    head["c"] = self.counts.rooms.get(room, {}).get(self.worker, 0)
                self._publish(_with_list(head, "entries", items), to, "answer", room)

    def introduce(self, to: str, *, ask: bool = False) -> None:
        """Tell ``to`` who we are (it meets us); ``ask``: we dropped ops for
        it, so it should ask us again for the rooms it follows."""
        head: dict[str, Any] = {"life": self.life}
        if ask:
            head["ask"] = True
        self._publish(ujson.dumps(head).encode(), to, "hello", "")

    def _budget(self) -> int:
        """Bytes of entries per op: under half of ``WS_MAX_PUBLISH`` (at least
        8 KiB, with entries of at most an eighth of it: config checks both),
        which leaves room for what goes around them."""
        return self.config.max_publish // 2 - 512

    # -- the interval -----------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None and self._loop is not None and not self._stopped:
            self._timer = self._loop.call_later(
                self.config.presence_interval, self.flush
            )

    def flush(self) -> None:
        """Publish this interval's own changes; tell local members theirs."""
        self._timer = None
        try:
            self._publish_changes()
        except Exception:
            log.exception("websocket presence: publishing changes failed")
            self._arm()  # what failed is tried again at the next interval
        try:
            if self._removing:
                # Half a dead peer's leaves now and half in the next
                # interval would be two diffs (and twice the frames) where
                # one does: a removal takes a few loop passes.
                self._arm()
            else:
                self._tell_members()
        except Exception:
            log.exception("websocket presence: telling members failed")

    def _publish_changes(self) -> None:
        changes, self._changes = self._changes, {}
        failed: Exception | None = None
        for room, room_changes in changes.items():
            try:
                self._send_room(room, room_changes)
            except Exception as exc:
                # Not lost: tried again at the next interval (flush() logs
                # the error and arms it).
                self._requeue(room, room_changes)
                failed = exc
        if failed is not None:
            raise failed

    def _requeue(self, room: str, changes: _Changes) -> None:
        newer = self._changes.get(room)
        if newer is not None:
            changes.joins.update(newer.joins)
            changes.leaves.extend(newer.leaves)
            if newer.count is not None:
                changes.count = newer.count
        self._changes[room] = changes

    def _send_room(self, room: str, changes: _Changes) -> None:
        """Publish our changes to ``room``, each op a version after the last.

        Leaves first, in their own ops: they are small, and a join that
        follows a leave of the same key (a metadata update) then arrives
        after it, as it happened.
        """
        budget = self._budget()
        leaves = [ujson.dumps(ref).encode() for ref in changes.leaves]
        ops = [("l", items) for items in chunks(leaves, budget)]
        ops += [("j", items) for items in chunks(list(changes.joins.values()), budget)]
        if not ops:
            if changes.count is None:
                return
            ops = [("", [])]
        for index, (key, items) in enumerate(ops):
            self._version += 1
            head: dict[str, Any] = {
                "life": self.life,
                "room": room,
                "v": self._version,
                "p": self._versions.get(room, 0),
            }
            if changes.count is not None and index == len(ops) - 1:
                head["c"] = changes.count
            self._publish(_with_list(head, key, items), None, "presence", room)
            self._versions[room] = self._version
            # What is sent is not sent again if a later op fails.
            if key == "l":
                changes.leaves = changes.leaves[len(items) :]
            elif key == "j":
                for ref in list(changes.joins)[: len(items)]:
                    del changes.joins[ref]
        if not self.local.rooms.get(room):
            # Nothing of ours is left there: our next op there starts anew.
            self._versions.pop(room, None)

    def _tell_members(self) -> None:
        """Queue what this interval's changes tell local members, and start
        telling: a room at a time, a few milliseconds of it per loop pass.

        Each room's diff is encoded when its turn comes; a newcomer's state
        is taken now, at the interval's end, as the diffs are, so the next
        interval's diff follows it exactly.
        """
        teller = self._teller
        if teller.busy:
            # The last interval is still being told (a pass took longer than
            # the interval, or flush() ran twice): finish it first, while
            # those who joined since are still this interval's newcomers.
            teller.tell_some(whole=True)
        newcomers, self._newcomers = self._newcomers, {}
        recount, self._recount = self._recount, set()
        rooms = self.local.rooms
        following = self._following
        for room in list(newcomers):
            room_following = following.get(room)
            if room_following is not None and not room_following.ready:
                # Its state is still being gathered: its newcomers wait for
                # it (they are told the whole of it, not this diff).
                self._newcomers[room] = newcomers.pop(room)
        for room, diff in self._diffs.take_rooms().items():
            if room in self._newcomers:
                continue
            fresh = newcomers.pop(room, None)
            state = self._state(room) if fresh and rooms.get(room) else None
            teller.diff(diff, fresh, state)
        for room, fresh in newcomers.items():  # joined, nothing else changed
            if (
                fresh
                and rooms.get(room)
                and room not in recount
                and self.policies.presence(room) == "full"
            ):
                state = self._state(room)
                teller.state(room, fresh, state)
        for room in recount:
            if room in self._newcomers:
                self._recount.add(room)
                continue
            teller.count(room)
        teller.tell()

    def _newcomers_of(self, room: str) -> set[Wire] | None:
        """Who joined ``room`` since the last interval ended."""
        return self._newcomers.get(room)

    def _state(self, room: str) -> bytes:
        return self.table.state(room)

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
            "followed": len(self._following),
        }


def chunks(items: list[bytes], budget: int) -> Iterator[list[bytes]]:
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
    """``head`` as JSON with ``key`` set to the already-encoded ``items``
    (no ``key``: ``head`` alone)."""
    body = ujson.dumps(head).encode()
    if not key:
        return body
    return b'%s,"%s":[%s]}' % (body[:-1], key.encode(), b",".join(items))
