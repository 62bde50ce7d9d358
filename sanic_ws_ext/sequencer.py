"""History rooms across processes: who numbers each room, and asking it.

A part the manager owns (like the tracker); it publishes through the
manager's ``_publish`` and never imports the manager.

Rules this module keeps:

- One sequencer per room: the relay slot ``crc32(room) % slots`` (this
  process in one process). A slot's worker restarted by Sanic is the same
  slot, so every process agrees on the sequencer without asking anyone; what
  the dead process kept is lost, and its rooms start new epochs.
- A publication to a history room goes to its sequencer (``SEQUENCE``),
  which numbers it, keeps it, publishes it to the room as an ordinary
  ``ROOM_SEND`` of its own, and answers the publisher with the position
  (``HISTORY``). Every numbered publication of a room therefore comes from one
  sender, and the relay keeps one sender's order: offsets reach every
  process in order.
- A client joining with ``since``: its process puts it in the room at once
  but holds the room's live publications back from it, and asks the
  sequencer (``FETCH``). The answer leaves the sequencer after every
  publication it numbered before, and arrives after them (one sender, in
  order): everything held back is in the answer. In one step, without
  yielding, the process sends the replay, ``room.joined`` and stops holding;
  what arrives next is newer. No gap, no duplicate at the seam. Without an
  answer (``WS_QUERY_TIMEOUT``): ``room.joined`` with no position, then what
  was held back; nothing live is lost for want of a replay.
- Never a 1008 for a replay: one that does not fit the client's
  backpressure limit is answered ``recovered: false``.

With the Redis backplane, Redis is the sequencer of every history room
(:mod:`~sanic_ws_ext.delivery.redis_history`): a publication is one script
that numbers, keeps and publishes it, and a join is:

- its live publications are held back, and kept, from the moment the join
  starts (:meth:`Sequencer.hold_back`);
- once the room channel's subscription is confirmed, one script reads the
  replay and the position P at one instant;
- the process sends the replay, ``room.joined``, then the kept publications
  newer than P. A publication numbered before P may still be on its way on
  the subscriber connection (the read's answer came on another): a *floor*
  drops, for that client, live publications up to P until a newer one
  passes (a room's publications arrive in offset order). No gap, no
  duplicate at the seam.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ujson

from .delivery import Delivery, Op, OpKind
from .delivery.relay import slot_of
from .delivery.wire import frame_record, iter_records
from .envelope import encode_envelope
from .errors import SequencerUnavailable
from .frames import data_frame
from .history import History, Page, Position, RoomLog
from .wire import ConnectionState

if TYPE_CHECKING:
    from .config import WSConfig
    from .connection import Connection
    from .delivery.redis_history import RedisHistory
    from .index import LocalIndex
    from .rooms import RoomPolicies

__all__ = ["Sequencer"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: A room's log with nothing kept, untouched this long (seconds), is dropped:
#: rooms come and go. Its next use starts a new epoch (clients holding the
#: old one are answered ``recovered: false``, never given wrong offsets).
_IDLE = 60.0
#: Bytes a replayed frame costs beyond its body (the frame header, at most).
_FRAME_OVERHEAD = 10

Publish = Callable[..., None]


@dataclass(slots=True)
class _Request:
    """A question to another process's sequencer, awaiting its answer."""

    slot: int
    future: asyncio.Future[tuple[dict[str, Any], list[bytes]]]
    #: For a client's join: its connection id, room and since.
    join: tuple[str, str, Position | None] | None = None


class Sequencer:
    """Numbers, keeps and replays the publications of history rooms."""

    def __init__(
        self,
        config: WSConfig,
        rooms: RoomPolicies,
        local: LocalIndex,
        *,
        publish: Publish,
        join: Callable[[Connection, str], None],
    ) -> None:
        self._config = config
        self._rooms = rooms
        self._local = local
        self._publish = publish
        self._join = join
        #: The logs of the rooms this process sequences.
        self.logs: dict[str, RoomLog] = {}
        self._pending: dict[str, _Request] = {}
        #: Room -> connection id -> the join request holding its live
        #: publications back.
        self.holds: dict[str, dict[str, str]] = {}
        #: Join request -> the live publications held back from it: with
        #: Redis, those newer than its read follow the replay; in one
        #: machine, the answer covers them, and they are sent only if no
        #: answer comes.
        self._kept: dict[str, list[Op]] = {}
        #: Redis mode: room -> connection id -> the position its replay
        #: reached; live publications up to it are dropped for it.
        self.floors: dict[str, dict[str, Position]] = {}
        self._redis: RedisHistory | None = None
        self._delivery: Delivery | None = None
        self._slots = 1
        self._slot = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clock: Callable[[], float] = lambda: 0.0

    def start(self, loop: asyncio.AbstractEventLoop, delivery: Delivery) -> None:
        """Bind to the loop and the delivery backend."""
        from .delivery.backplane import RedisBackplane
        from .delivery.redis_history import RedisHistory

        self._loop = loop
        self.clock = loop.time
        self._delivery = delivery
        status = delivery.status()
        if isinstance(delivery, RedisBackplane):
            self._redis = RedisHistory(
                delivery, max_backpressure=self._config.max_backpressure
            )
        elif status.get("name") == "relay":
            self._slots = int(status["slots"])
            self._slot = int(status["slot"])

    async def stop(self) -> None:
        if self._redis is not None:
            await self._redis.stop()

    def spec(self, room: str) -> History | None:
        return self._rooms.history(room)

    def _home(self, room: str) -> int | None:
        """The slot sequencing ``room``; None when it is this process."""
        if self._slots <= 1:
            return None
        slot = zlib.crc32(room.encode()) % self._slots
        return None if slot == self._slot else slot

    # -- what apps call ------------------------------------------------------------

    async def publish(
        self, room: str, spec: History, body: bytes, exclude: Iterable[str]
    ) -> Position:
        """Publish ``body`` (an encoded envelope) to ``room``; its position."""
        if self._redis is not None:
            return await self._redis.publish(room, spec, body, exclude)
        home = self._home(room)
        if home is None:
            return self._sequence(room, spec, body, frozenset(exclude))
        rid, future = self._ask(home)
        self._publish(
            OpKind.SEQUENCE,
            target=room,
            payload=body,
            exclude=exclude,
            reason=rid,
            to=_name(home),
        )
        header, _ = await self._wait(rid, future)
        return Position(header["offset"], header["epoch"])

    async def fetch(
        self, room: str, spec: History, since: Position | None, limit: int
    ) -> Page:
        """What ``room`` keeps after ``since`` (at most ``limit``)."""
        home = self._home(room)
        if self._redis is not None:
            header, entries = await self._redis.read(
                room, spec, since, count=limit, budget=0, latest=limit
            )
            newest = since is None or not header["ok"]
            entries = _page(entries, self._config.max_publish, newest=newest)
        elif home is None:
            header, entries = self._answer(room, spec, since, limit, join=False)
        else:
            rid, future = self._ask(home)
            self._publish(
                OpKind.FETCH,
                target=room,
                payload=_question(since, limit, join=False),
                reason=rid,
                to=_name(home),
            )
            header, entries = await self._wait(rid, future)
        return Page(
            Position(header["offset"], header["epoch"]),
            bool(header["ok"]),
            [ujson.loads(entry) for entry in entries],
        )

    async def join(
        self, conn: Connection, room: str, spec: History, since: Position | None
    ) -> None:
        """A client's ``room.join`` of a history room; answers ``room.joined``."""
        rid = uuid.uuid4().hex
        self.holds.setdefault(room, {})[conn.id] = rid
        if self._redis is not None:
            await self._join_redis(self._redis, conn, room, spec, since, rid)
            return
        try:
            self._join(conn, room)
            home = self._home(room)
            if home is None:
                header, entries = self._answer(room, spec, since, 0, join=True)
                self._joined(conn.id, room, rid, since, header, entries)
                return
            # Kept until the answer comes (which covers them: it left the
            # sequencer after them), for the case that it never does.
            self._kept[rid] = []
            _, future = self._ask(home, rid, (conn.id, room, since))
            self._publish(
                OpKind.FETCH,
                target=room,
                payload=_question(since, 0, join=True),
                reason=rid,
                to=_name(home),
            )
            await self._wait(rid, future)
        except SequencerUnavailable:
            # The sequencer is gone, or slower than WS_QUERY_TIMEOUT.
            self._unanswered(conn, room, since, rid)
        except BaseException:
            self._pending.pop(rid, None)
            self._kept.pop(rid, None)
            self._release(room, conn.id, rid)
            raise

    async def _join_redis(
        self,
        redis: RedisHistory,
        conn: Connection,
        room: str,
        spec: History,
        since: Position | None,
        rid: str,
    ) -> None:
        """A join with Redis as the sequencer: hold, subscribe, read, seam."""
        self._kept[rid] = []
        try:
            self._join(conn, room)
            assert self._delivery is not None
            await self._delivery.ready(room)  # publications now reach us
            limit = self._config.max_backpressure
            header, entries = await redis.read(
                room,
                spec,
                since,
                count=spec.size,
                budget=limit or 0,
                latest=spec.on_join if since is None else 0,
            )
        except SequencerUnavailable:
            self._unanswered(conn, room, since, rid)
            return
        except BaseException:
            self._kept.pop(rid, None)
            self._release(room, conn.id, rid)
            raise
        self._joined(conn.id, room, rid, since, header, entries)

    def hold_back(self, op: Op) -> frozenset[str]:
        """Who must not get ``op`` (a ROOM_SEND) now: its ``exclude``, the
        members joining (their replay covers it, or it is kept for them), and
        those whose replay already had it (their floor)."""
        room = op.target
        exclude = op.exclude
        held = self.holds.get(room)
        if held:
            for rid in held.values():
                kept = self._kept.get(rid)
                if kept is not None:
                    kept.append(op)
            exclude = exclude.union(held)
        floors = self.floors.get(room)
        if floors:
            from .delivery.redis_history import position_of

            at = position_of(op)
            if at is not None:
                below = [
                    conn_id
                    for conn_id, floor in floors.items()
                    if floor.epoch == at.epoch and at.offset <= floor.offset
                ]
                if below:
                    exclude = exclude.union(below)
                # In offset order: past each other floor, newer ones follow.
                for conn_id in [c for c in floors if c not in below]:
                    del floors[conn_id]
                if not floors:
                    del self.floors[room]
        return exclude

    # -- the sequencer's side --------------------------------------------------------

    def _log(self, room: str) -> RoomLog:
        found = self.logs.get(room)
        if found is None:
            found = self.logs[room] = RoomLog(self.clock())
        return found

    def _sequence(
        self, room: str, spec: History, body: bytes, exclude: frozenset[str]
    ) -> Position:
        room_log = self._log(room)
        now = self.clock()
        room_log.expire(now, spec.ttl)
        stamped = room_log.append(room, body, now, spec)
        self._publish(OpKind.ROOM_SEND, target=room, payload=stamped, exclude=exclude)
        return room_log.position

    def _answer(
        self,
        room: str,
        spec: History,
        since: Position | None,
        limit: int,
        *,
        join: bool,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """The header and entries answering a fetch of ``room``."""
        room_log = self._log(room)
        now = self.clock()
        room_log.expire(now, spec.ttl)
        room_log.touched = now
        ok = True
        if since is None:
            entries = room_log.latest(spec.on_join if join else limit)
        else:
            found = room_log.after(since)
            if found is None:
                ok = False
                entries = [] if join else room_log.latest(limit)
            else:
                entries = found if join else found[:limit]
        if join:
            if _replay_bytes(entries) > (self._config.max_backpressure or 1 << 62):
                ok, entries = False, []  # more than the client could ever take
        else:
            # A page crosses processes: about WS_MAX_PUBLISH at most (callers
            # page on with since=the last one's position).
            newest = since is None or not ok  # the latest ones, else the next ones
            entries = _page(entries, self._config.max_publish, newest=newest)
        position = room_log.position
        return {"offset": position.offset, "epoch": position.epoch, "ok": ok}, entries

    def apply(self, op: Any) -> None:
        """A SEQUENCE, FETCH or HISTORY op (the manager routes them here)."""
        if op.kind is OpKind.HISTORY:
            self._answered(op.reason, op.payload)
            return
        spec = self.spec(op.target)
        if spec is None:
            # Declarations differ between processes: nothing sane to answer.
            log.error(
                "history op for %r from %s, not a history room here",
                op.target,
                op.origin,
            )
            return
        if op.kind is OpKind.SEQUENCE:
            position = self._sequence(op.target, spec, op.payload, op.exclude)
            header: dict[str, Any] = position.as_dict()
            entries: list[bytes] = []
        else:
            question = ujson.loads(op.payload)
            raw = question.get("since")
            since = None if raw is None else Position(int(raw[0]), str(raw[1]))
            header, entries = self._answer(
                op.target,
                spec,
                since,
                int(question.get("limit", 0)),
                join=bool(question.get("join")),
            )
        payload = ujson.dumps(header).encode() + b"\n"
        payload += b"".join(frame_record(entry) for entry in entries)
        self._publish(OpKind.HISTORY, payload=payload, reason=op.reason, to=op.origin)

    # -- answers -----------------------------------------------------------------

    def _ask(
        self,
        slot: int,
        rid: str | None = None,
        join: tuple[str, str, Position | None] | None = None,
    ) -> tuple[str, asyncio.Future[tuple[dict[str, Any], list[bytes]]]]:
        assert self._loop is not None
        rid = rid or uuid.uuid4().hex
        future: asyncio.Future[tuple[dict[str, Any], list[bytes]]] = (
            self._loop.create_future()
        )
        self._pending[rid] = _Request(slot, future, join)
        return rid, future

    async def _wait(
        self, rid: str, future: asyncio.Future[tuple[dict[str, Any], list[bytes]]]
    ) -> tuple[dict[str, Any], list[bytes]]:
        timeout = self._config.query_timeout
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise SequencerUnavailable(
                f"the sequencer of this room did not answer within {timeout:g}s"
            ) from None
        finally:
            self._pending.pop(rid, None)

    def _answered(self, rid: str, payload: bytes) -> None:
        request = self._pending.pop(rid, None)
        if request is None or request.future.done():
            return  # too late: the caller gave up
        head, _, rest = payload.partition(b"\n")
        header = ujson.loads(head)
        entries = list(iter_records(rest))
        if request.join is not None:
            conn_id, room, since = request.join
            # Now, before any later op is applied: the seam.
            self._joined(conn_id, room, rid, since, header, entries)
        request.future.set_result((header, entries))

    def _joined(
        self,
        conn_id: str,
        room: str,
        rid: str,
        since: Position | None,
        header: dict[str, Any],
        entries: list[bytes],
    ) -> None:
        """Send a joining client its replay and ``room.joined``; stop holding.

        With Redis, then what was held back and is newer than the replay.
        """
        kept = self._kept.pop(rid, [])
        self._release(room, conn_id, rid)
        conn = self._local.conns.get(conn_id)
        if conn is None or conn.state is not ConnectionState.OPEN:
            return
        if room not in conn.rooms:
            return  # taken out meanwhile (ws.leave): nothing to join
        ok = bool(header["ok"])
        limit = self._config.max_backpressure
        if (
            limit is not None
            and entries
            and _replay_bytes(entries) + conn._wire.backlog > limit
        ):
            ok, entries = False, []  # would be dropped as a slow consumer
        if since is not None and not ok:
            entries = []
        for entry in entries:
            conn._wire.send_frame(data_frame(entry, False))
        data: dict[str, Any] = {
            "room": room,
            "position": {"offset": header["offset"], "epoch": header["epoch"]},
        }
        if since is not None:
            data["recovered"] = ok
        conn._wire.send_frame(data_frame(encode_envelope("room.joined", data), False))
        if self._redis is not None:
            reached = Position(int(header["offset"]), str(header["epoch"]))
            if not _send_kept(conn, kept, reached):
                self.floors.setdefault(room, {})[conn_id] = reached

    def _unanswered(
        self, conn: Connection, room: str, since: Position | None, rid: str
    ) -> None:
        """A join's question got no answer: no replay, but ``room.joined``
        without a position, then the live publications held back meanwhile
        (the client's, in order); later ones flow. Unless a newer join of
        the same connection took over the hold: its answer covers them."""
        kept = self._kept.pop(rid, [])
        if not self._release(room, conn.id, rid):
            return
        if conn.state is ConnectionState.OPEN and room in conn.rooms:
            _unknown(conn, room, since)
            _send_kept(conn, kept, None)

    def _release(self, room: str, conn_id: str, rid: str) -> bool:
        """Stop holding ``room``'s publications back from ``conn_id`` for
        join ``rid``; False if that join no longer held them."""
        held = self.holds.get(room)
        if held is None or held.get(conn_id) != rid:
            return False
        del held[conn_id]
        if not held:
            del self.holds[room]
        return True

    # -- upkeep ------------------------------------------------------------------------

    def peer_gone(self, peer: str) -> None:
        """A process was dropped: questions to its slot will not be answered."""
        slot = slot_of(peer)
        for request in list(self._pending.values()):
            if request.slot == slot and not request.future.done():
                request.future.set_exception(
                    SequencerUnavailable(f"the sequencer {peer} is gone")
                )

    def sweep(self, now: float) -> None:
        """Once per beat: expire old publications, drop idle empty logs."""
        for room, floors in list(self.floors.items()):
            for conn_id in list(floors):
                conn = self._local.conns.get(conn_id)
                if conn is None or room not in conn.rooms:
                    del floors[conn_id]
            if not floors:
                del self.floors[room]
        for room, room_log in list(self.logs.items()):
            spec = self.spec(room)
            room_log.expire(now, spec.ttl if spec is not None else 0.0)
            if not room_log.entries and now - room_log.touched > _IDLE:
                del self.logs[room]

    def status(self) -> dict[str, Any]:
        return {
            "store": "redis" if self._redis is not None else "process",
            "rooms": len(self.logs),
            "kept": sum(len(room_log.entries) for room_log in self.logs.values()),
            "bytes": sum(room_log.bytes for room_log in self.logs.values()),
            "waiting": len(self._pending),
        }


def _unknown(conn: Connection, room: str, since: Position | None) -> None:
    """``room.joined`` without a position: the sequencer cannot be asked now."""
    data: dict[str, Any] = {"room": room, "position": None}
    if since is not None:
        data["recovered"] = False
    conn._wire.send_frame(data_frame(encode_envelope("room.joined", data), False))


def _send_kept(conn: Connection, kept: list[Op], reached: Position | None) -> bool:
    """Send ``conn`` the held-back publications newer than ``reached``.

    True if one was newer (later ones are newer still: no floor needed).
    """
    from .delivery.redis_history import newer, position_of

    passed = False
    for op in kept:
        if conn.id in op.exclude:
            continue
        at = position_of(op)
        if reached is not None and at is not None and not passed:
            if at.epoch == reached.epoch:
                if at.offset <= reached.offset:
                    continue  # in the replay
            elif not newer(at.epoch, reached.epoch):
                continue  # of a history already gone
        passed = True
        conn._wire.send_frame(data_frame(op.payload, op.binary))
    return passed


def _name(slot: int) -> str:
    """A process name the relay routes to ``slot`` (it reads the slot alone)."""
    return f"Sanic-Server-{slot}-0"


def _question(since: Position | None, limit: int, *, join: bool) -> bytes:
    raw = None if since is None else [since.offset, since.epoch]
    return ujson.dumps({"since": raw, "limit": limit, "join": join}).encode()


def _page(entries: list[bytes], budget: int, *, newest: bool) -> list[bytes]:
    """The oldest (or newest) of ``entries`` within ``budget`` bytes, one at least."""
    total = 0
    ordered = reversed(entries) if newest else iter(entries)
    kept = 0
    for entry in ordered:
        total += len(entry)
        if total > budget and kept:
            break
        kept += 1
    if kept == len(entries):
        return entries
    return entries[len(entries) - kept :] if newest else entries[:kept]


def _replay_bytes(entries: list[bytes]) -> int:
    return sum(len(entry) + _FRAME_OVERHEAD for entry in entries)
