"""The connection manager, ``app.ctx.ws``: the one object apps talk to.

A facade over parts with one job each:

- :class:`~sanic_ws_ext.index.LocalIndex`: this process's connections, and
  who of them is in which room or user;
- :class:`~sanic_ws_ext.dispatch.Dispatcher`: running handlers for what
  arrives on each connection;
- :class:`~sanic_ws_ext.cluster.Membership`: which processes are alive, and
  the route to each connection;
- :class:`~sanic_ws_ext.tracker.Tracker`: presence of rooms that track it;
- :mod:`~sanic_ws_ext.stats`: counters and figures.

Rules this module keeps:

- ``connections`` holds the OPEN and CLOSING connections of this process; a
  connection leaves it the moment its socket is gone, before its disconnect
  handlers run.
- Every call that addresses connections becomes an
  :class:`~sanic_ws_ext.delivery.Op` published through the delivery backend;
  :meth:`ConnectionManager.apply` executes ops in each process. A message is
  encoded once where it is sent and framed once in each receiving process.
- Nothing is replicated per connection. A connection id names its process,
  so sends, joins and disconnects go straight there; counts come from each
  process's totals on its beat; membership of rooms without presence is
  asked for when wanted (:meth:`members`), never kept everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import ujson
from websockets.server import ServerProtocol

from .cluster import Membership
from .config import WSConfig
from .connection import Connection, ConnectionState
from .delivery import Delivery, LinkState, Op, OpKind
from .delivery.relay import slot_of
from .dispatch import CLOSED, OPENED, Dispatcher, cancel_tasks
from .envelope import encode_envelope
from .errors import CloseCode
from .frames import data_frame, raw_body
from .handlers import Accept, HandlerRegistry
from .history import Page, Position, parse_since
from .index import LocalIndex
from .limits import ClientLimits
from .presence import checked_presence
from .sequencer import Sequencer
from .stats import DELIVERY_COUNTERS, Counters, RateMeter, cluster_stats
from .tracker import Tracker
from .wire import Flusher, Wire, fan_out

__all__ = ["ConnectionManager", "Member"]

log = logging.getLogger("sanic.root.sanic_ws_ext")


@dataclass(frozen=True, slots=True)
class Member:
    """One connection in a room, as :meth:`ConnectionManager.members` lists it.

    ``presence`` is the metadata members of rooms with full presence see
    (empty for other rooms).
    """

    id: str
    user: str | None
    worker: str
    presence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "worker": self.worker,
            "presence": self.presence,
        }


class ConnectionManager:
    """Connections of the cluster, and every way to reach them.

    Sending never waits on a client's socket nor on another process: the
    awaitable methods return once the message is accepted for delivery.
    """

    def __init__(
        self,
        config: WSConfig,
        registry: HandlerRegistry,
        delivery: Delivery,
        *,
        worker: str,
    ) -> None:
        self.config = config
        self.registry = registry
        self.delivery = delivery
        self.worker = worker
        #: This process's life: random, new at each start of a worker name.
        self.life = uuid.uuid4().hex
        self.local = LocalIndex()
        #: Read-only view of this process's connections by id.
        self.connections: Mapping[str, Connection] = MappingProxyType(self.local.conns)
        self.clock: Callable[[], float] = lambda: 0.0
        #: What this process counts (messages in and out, connections).
        self.counters = Counters()
        self._rates = RateMeter()
        #: Per-client counts and connect buckets of this process.
        self.limits = ClientLimits(
            max_open=config.max_connections_per_ip,
            rate=config.connect_rate_per_ip,
            burst=config.connect_burst_per_ip,
        )
        self.membership = Membership(
            worker,
            self.life,
            suspect_after=config.peer_suspect,
            dead_after=config.peer_timeout,
            hears=delivery.hears,
            gone=self._peer_gone,
        )
        self.tracker = Tracker(
            config,
            registry.rooms,
            self.local,
            self.counters,
            worker=worker,
            life=self.life,
            publish=self._publish_presence,
        )
        #: History rooms: numbering, keeping, replaying (its own module).
        self.sequencer = Sequencer(
            config,
            registry.rooms,
            self.local,
            publish=self._publish,
            join=self._join_local,
        )
        self.dispatcher = Dispatcher(
            config,
            registry,
            join=self._join_local,
            leave=self._leave_local,
            ready=delivery.ready,
            settled=self._settled,
            recover=self.sequencer.join,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._peer_beat: asyncio.TimerHandle | None = None
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        # Every worker of this machine was heard at least once since this
        # process started (readiness; see health()).
        self._whole = False
        # Cluster-wide questions awaiting answers: id -> (answers, expected).
        self._questions: dict[str, tuple[dict[str, Any], set[str], asyncio.Event]] = {}

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Bind to the running loop and start delivery and the heartbeats."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.clock = loop.time
        self._flusher = Flusher(loop)
        self.dispatcher.start(loop)
        self.membership.start(loop)
        self.tracker.start(loop, self._flusher)
        self.sequencer.start(loop, self.delivery.status())  # may refuse the backend
        await self.delivery.start(self.apply, self)
        if self.config.ping_interval is not None:
            self._heartbeat = loop.call_later(self._tick(), self._beat)
        if self.delivery.clustered:
            self._publish(OpKind.HELLO, payload=self._introduction())
        self._check_whole()
        # Also in one process: each beat samples the counters (the rates).
        self._peer_beat = loop.call_later(self.config.relay_beat, self._beat_peers)

    async def stop(self) -> None:
        """Close every connection with 1001 after what was accepted is sent.

        Waits at most ``WS_CLOSE_TIMEOUT`` for clients to answer, then drops
        the rest; disconnect handlers have run for all of them on return.
        """
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for conn in list(self.local.conns.values()):
            conn.wire.start_close(CloseCode.GOING_AWAY, "server shutting down")
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.close_timeout + 1)
        except TimeoutError:
            for conn in list(self.local.conns.values()):
                conn.wire.abort(CloseCode.GOING_AWAY, "server shutting down")
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.close_timeout)
            except TimeoutError:
                log.warning("websocket handlers still running at shutdown: cancelled")
                # Awaited, so that their ``finally`` blocks (which may
                # publish) run while delivery still works.
                await self.dispatcher.cancel_all(self.config.close_timeout)
        self.tracker.flush()  # the last leaves reach the peers before our BYE
        # Peers keep hearing our beat while clients close, then our BYE.
        if self._peer_beat is not None:
            self._peer_beat.cancel()
            self._peer_beat = None
        await cancel_tasks(self._hook_tasks, self.config.close_timeout)
        await self.tracker.stop()
        self.membership.stop()
        if self.delivery.clustered:
            self._publish(OpKind.BYE, payload=self.life.encode())
        await self.delivery.stop()

    @property
    def closing(self) -> bool:
        """True once shutdown began: new upgrades are refused with 503."""
        return self._closing

    # -- the public API: sending ------------------------------------------

    def get(self, conn_id: str) -> Connection | None:
        """The connection with this id, if this process holds it."""
        return self.local.conns.get(conn_id)

    async def send(self, conn_id: str, type: str, data: Any = None) -> None:
        """Send an envelope to one connection, wherever it is."""
        self._address(OpKind.SEND, conn_id, payload=encode_envelope(type, data))

    async def send_raw(self, conn_id: str, payload: str | bytes) -> None:
        """Send a raw text (``str``) or binary (``bytes``) frame to one connection."""
        body, binary = raw_body(payload)
        self._address(OpKind.SEND, conn_id, payload=body, binary=binary)

    async def broadcast(
        self, type: str, data: Any = None, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send an envelope to every connection but those in ``exclude`` (ids)."""
        self._publish(
            OpKind.BROADCAST, payload=encode_envelope(type, data), exclude=exclude
        )

    async def broadcast_raw(
        self, payload: str | bytes, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send a raw text or binary frame to every connection but ``exclude``."""
        body, binary = raw_body(payload)
        self._publish(OpKind.BROADCAST, payload=body, binary=binary, exclude=exclude)

    async def publish(
        self, room: str, type: str, data: Any = None, *, exclude: Iterable[str] = ()
    ) -> Position | None:
        """Send an envelope to every member of ``room``, on any worker.

        For a room declared with ``history=``, returns the publication's
        position once the room's sequencer numbered it (raises
        ``SequencerUnavailable`` if it did not answer within
        ``WS_QUERY_TIMEOUT``); for other rooms None, at once.
        """
        body = encode_envelope(type, data)
        spec = self.sequencer.spec(room)
        if spec is not None:
            return await self.sequencer.publish(room, spec, body, exclude)
        self._publish(OpKind.ROOM_SEND, target=room, payload=body, exclude=exclude)
        return None

    async def history(
        self,
        room: str,
        since: Position | dict[str, Any] | None = None,
        limit: int = 100,
    ) -> Page:
        """What ``room`` (declared with ``history=``) keeps after ``since``.

        At most ``limit`` publications, oldest first: the first ones after
        ``since``, or the latest ones without it (or when ``since`` cannot
        be continued: then ``recovered`` is False).
        """
        spec = self.sequencer.spec(room)
        if spec is None:
            raise ValueError(f"room {room!r} is not declared with history=")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        return await self.sequencer.fetch(
            room, spec, parse_since(since), min(limit, spec.size)
        )

    async def publish_raw(
        self, room: str, payload: str | bytes, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send a raw text or binary frame to every member of ``room``."""
        if self.sequencer.spec(room) is not None:
            raise TypeError(f"room {room!r} keeps history: publish envelopes to it")
        body, binary = raw_body(payload)
        self._publish(
            OpKind.ROOM_SEND, target=room, payload=body, binary=binary, exclude=exclude
        )

    async def send_user(
        self, user: str, type: str, data: Any = None, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send an envelope to every connection of ``user`` (the verify identity)."""
        self._publish(
            OpKind.USER_SEND,
            target=user,
            payload=encode_envelope(type, data),
            exclude=exclude,
        )

    async def send_user_raw(
        self, user: str, payload: str | bytes, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send a raw text or binary frame to every connection of ``user``."""
        body, binary = raw_body(payload)
        self._publish(
            OpKind.USER_SEND, target=user, payload=body, binary=binary, exclude=exclude
        )

    async def disconnect(
        self, conn_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close one connection, wherever it is, after what it was already sent."""
        self._address(OpKind.DISCONNECT, conn_id, code=code, reason=reason)

    async def join(self, conn_id: str, room: str) -> None:
        """Put a connection, wherever it is, into ``room``.

        For a connection of this process, returns once publications to the
        room reach it (with Redis: once this process is subscribed to the
        room), so a message published after the join is not missed.
        """
        self._address(OpKind.JOIN, conn_id, payload=_room(room))
        if conn_id in self.local.conns:
            await self.delivery.ready(room)

    async def leave(self, conn_id: str, room: str) -> None:
        """Take a connection, wherever it is, out of ``room``."""
        self._address(OpKind.LEAVE, conn_id, payload=_room(room))

    def update_presence(self, conn: Connection, meta: dict[str, Any]) -> None:
        """Replace ``conn``'s presence metadata (see ``Connection.update_presence``)."""
        conn.presence = checked_presence(meta, self.config.presence_meta_max)
        self.tracker.update(conn)

    # -- the public API: who is here ----------------------------------------

    async def count(self) -> int:
        """How many connections are open in the cluster.

        This process's own count is live; each other process's is from its
        latest beat (at most ``WS_RELAY_BEAT`` old).
        """
        return sum((await self.workers()).values())

    async def workers(self) -> dict[str, int]:
        """Connections per worker (the others' as of their latest beat)."""
        samples, _ = self.membership.samples(self.clock())
        counts = {name: int(s.get("connections", 0)) for name, s in samples.items()}
        counts[self.worker] = len(self.local)
        return counts

    async def members(self, room: str) -> list[Member]:
        """The members of ``room``, cluster-wide.

        Rooms with full presence answer from this process's view at once.
        For other rooms every process is asked, and the answer waits for the
        others (at most ``WS_QUERY_TIMEOUT``).
        """
        if self.tracker.full(room):
            return [
                Member(
                    id=e.conn,
                    user=None if e.key.startswith("~") else e.key,
                    worker=e.process,
                    presence={k: v for k, v in e.meta.items() if k != "ref"},
                )
                for e in self.tracker.table.entries(room)
            ]
        answers = await self._ask({"q": "members", "room": room})
        return [
            Member(m["id"], m["user"], m["worker"])
            for found in answers.values()
            for m in found or ()
        ]

    async def rooms(self) -> dict[str, int]:
        """Every room with at least one member, and its size (asks every process)."""
        totals: dict[str, int] = {}
        for found in (await self._ask({"q": "rooms"})).values():
            for room, size in found.items():
                totals[room] = totals.get(room, 0) + size
        return totals

    async def users(self) -> dict[str, int]:
        """Every connected user and their number of connections (asks everyone)."""
        totals: dict[str, int] = {}
        for found in (await self._ask({"q": "users"})).values():
            for user, size in found.items():
                totals[user] = totals.get(user, 0) + size
        return totals

    def _answer(self, question: dict[str, Any]) -> Any:
        """This process's part of a cluster-wide question."""
        kind = question.get("q")
        if kind == "members":
            wires = self.local.rooms.get(str(question.get("room")), ())
            return [
                {"id": w.conn.id, "user": w.conn.user, "worker": self.worker}
                for w in wires
            ]
        if kind == "rooms":
            return {room: len(wires) for room, wires in self.local.rooms.items()}
        if kind == "users":
            return {user: len(wires) for user, wires in self.local.users.items()}
        return None

    async def _ask(self, question: dict[str, Any]) -> dict[str, Any]:
        """Ask every live process (this one included); their answers by name."""
        answers: dict[str, Any] = {self.worker: self._answer(question)}
        expected = set(self.membership.alive())
        if not expected or not self.delivery.clustered:
            return answers
        qid = uuid.uuid4().hex
        done = asyncio.Event()
        self._questions[qid] = (answers, expected, done)
        try:
            self._publish(
                OpKind.QUERY, payload=ujson.dumps({"id": qid, **question}).encode()
            )
            try:
                await asyncio.wait_for(done.wait(), self.config.query_timeout)
            except TimeoutError:
                log.warning(
                    "cluster question %r: no answer from %s within %gs",
                    question.get("q"),
                    ", ".join(sorted(expected)),
                    self.config.query_timeout,
                )
        finally:
            del self._questions[qid]
        return answers

    # -- the public API: health ---------------------------------------------

    @property
    def backplane_state(self) -> str | None:
        """``"connected"``, ``"reconnecting"`` or ``"down"`` with Redis, else None."""
        state = self.delivery.link_state
        return None if state is None else str(state.value)

    def status(self) -> dict[str, Any]:
        """This process's view, JSON-able: for health checks and stats."""
        return {
            "worker": self.worker,
            "closing": self._closing,
            "connections": len(self.local),
            "membership": self.membership.status(),
            "presence": self.tracker.status(),
            "history": self.sequencer.status(),
            "delivery": self.delivery.status(),
        }

    def health(self) -> dict[str, Any]:
        """Liveness, readiness and the state of the links, JSON-able.

        Nothing here names a client, a user or a machine: it is meant to be
        public (load balancers, orchestrators).
        """
        delivery = self.delivery.status()
        machine = delivery.get("machine", delivery)
        expected = self._expected(delivery)
        heard = self._heard_here()
        if not self._whole and (expected is None or heard >= expected):
            self._whole = True
        return {
            "alive": True,
            # Ready to take connections: started, not shutting down, and
            # every worker of this machine heard at least once (while some
            # still boot, the cluster-wide calls would miss them). A worker
            # restarting later does not make the others unready: they serve
            # meanwhile. A backplane outage does not either: every machine
            # sees it at once, and each still serves its own clients.
            "ready": self._loop is not None and not self._closing and self._whole,
            "delivery": delivery["name"],
            "relay": machine.get("state") if machine["name"] == "relay" else None,
            "backplane": self.backplane_state,
            "workers": 1 + len(self.membership.peers),
            # This machine's workers: how many the relay has slots for (None
            # without a relay), and how many this process hears now (itself
            # included).
            "expected": expected,
            "heard": heard,
        }

    @staticmethod
    def _expected(status: dict[str, Any]) -> int | None:
        """This machine's worker slots, from the delivery's status; else None."""
        machine = status.get("machine", status)
        slots = machine.get("slots") if machine.get("name") == "relay" else None
        return slots if isinstance(slots, int) else None

    def _heard_here(self) -> int:
        """Workers of this machine this process hears now, itself included."""
        node = self.worker.rpartition("/")[0]  # "" without Redis
        slots = {slot_of(self.worker)}
        for name in self.membership.peers:
            if name.rpartition("/")[0] == node:
                slots.add(slot_of(name))
        slots.discard(None)
        return max(1, len(slots))

    def _check_whole(self) -> None:
        """Note once every worker of this machine has been heard (readiness)."""
        if not self._whole:
            expected = self._expected(self.delivery.status())
            self._whole = expected is None or self._heard_here() >= expected

    def stats(self) -> dict[str, Any]:
        """Cluster-wide figures, from this process's view, JSON-able.

        Each worker's figures are from its latest beat (this process's own
        are live). See :mod:`sanic_ws_ext.stats`.
        """
        now = self.clock()
        samples, ages = self.membership.samples(now)
        samples[self.worker] = self._take_sample(rates=False)
        ages[self.worker] = 0.0
        return cluster_stats(
            answered_by=self.worker,
            samples=samples,
            ages=ages,
            connections={
                name: int(s.get("connections", 0)) for name, s in samples.items()
            },
        )

    def _take_sample(self, *, rates: bool) -> dict[str, Any]:
        """This process's counters; with ``rates``, a new rate interval starts."""
        counters = self.counters
        sample: dict[str, Any] = counters.as_dict()
        if rates:
            meter = self._rates
            meter.update(self.clock(), counters.messages_in, counters.messages_out)
        # Between beats: the rates of the last interval.
        rate_in, rate_out = self._rates.rates
        sample["messages_in_per_second"] = rate_in
        sample["messages_out_per_second"] = rate_out
        sample["connections"] = len(self.local)
        sample["rooms"] = len(self.local.rooms)
        sample["users"] = len(self.local.users)
        sample.update(_delivery_counters(self.delivery.status()))
        sample["backplane"] = self.backplane_state
        return sample

    # -- publishing ------------------------------------------------------------

    def _publish(
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
    ) -> None:
        op = Op(
            kind,
            payload,
            binary,
            target,
            frozenset(exclude) if exclude else frozenset(),
            code,
            reason,
            self.worker,
        )
        self.delivery.publish(op, to)

    def _address(self, kind: OpKind, conn_id: str, **fields: Any) -> None:
        """Publish an op for one connection to the process that holds it.

        The id names its process; an id of a process we have not heard of
        yet (just started) goes to every process, and the holder acts.
        """
        self._publish(kind, target=conn_id, to=self.membership.route(conn_id), **fields)

    def _publish_presence(self, payload: bytes, to: str | None, kind: str) -> None:
        if kind == "sync":
            self._publish(OpKind.SYNC, payload=payload, to=to)
        elif self.delivery.clustered:
            self._publish(OpKind.PRESENCE, payload=payload)

    def _introduction(self) -> bytes:
        return ujson.dumps(
            {"life": self.life, "pid": os.getpid(), "machine": self.membership.machine}
        ).encode()

    def _request_sync(self, peer: str) -> None:
        self._publish(
            OpKind.SYNC, reason="request", payload=self._introduction(), to=peer
        )

    # -- applying ops ------------------------------------------------------------

    def apply(self, op: Op) -> None:
        """Execute ``op`` in this process (called by the delivery backend)."""
        if op.origin != self.worker and self._loop is not None:
            # Any op is a sign of life: a peer busy sending is not silent.
            self.membership.heard(op.origin, self._loop.time())
        handler = self._appliers.get(op.kind)
        if handler is not None:
            handler(self, op)

    def _apply_broadcast(self, op: Op) -> None:
        assert self._flusher is not None
        self.counters.messages_out += fan_out(
            list(self.local.wires.values()),
            data_frame(op.payload, op.binary),
            op.exclude,
            self.config.max_backpressure,
            self._flusher,
        )

    def _apply_group_send(self, op: Op) -> None:
        index = self.local.rooms if op.kind is OpKind.ROOM_SEND else self.local.users
        wires = index.get(op.target)
        if not wires:
            return
        assert self._flusher is not None
        exclude = op.exclude
        if self.sequencer.holds and op.kind is OpKind.ROOM_SEND:
            exclude = self.sequencer.exclude(op.target, exclude)  # replays pending
        self.counters.messages_out += fan_out(
            list(wires),
            data_frame(op.payload, op.binary),
            exclude,
            self.config.max_backpressure,
            self._flusher,
        )

    def _apply_send(self, op: Op) -> None:
        conn = self.local.conns.get(op.target)
        if conn is not None:
            conn.wire.send_frame(data_frame(op.payload, op.binary))

    def _apply_disconnect(self, op: Op) -> None:
        conn = self.local.conns.get(op.target)
        if conn is not None:
            conn.wire.start_close(op.code, op.reason)

    def _apply_join_leave(self, op: Op) -> None:
        conn = self.local.conns.get(op.target)
        if conn is None:
            return
        room = op.payload.decode()
        if op.kind is OpKind.JOIN:
            self._join_local(conn, room)
        else:
            self._leave_local(conn, room)

    def _meet(self, peer: str, life: str, intro: dict[str, Any] | None = None) -> bool:
        """Note ``peer`` living ``life``. Newly met (started, restarted, or
        heard again after we dropped it): each sends the other its state."""
        assert self._loop is not None
        intro = intro or {}
        new = self.membership.meet(
            peer,
            life,
            self._loop.time(),
            pid=intro.get("pid", 0),
            machine=intro.get("machine", ""),
        )
        if new:
            self.tracker.send_sync(peer)
            self._request_sync(peer)
            self._check_whole()
        return new

    def _apply_peer(self, op: Op) -> None:
        """HELLO, SYNC, BEAT, BYE: who is in the cluster, and since when."""
        peer = op.origin
        if peer == self.worker or self._loop is None:
            return
        membership = self.membership
        if op.kind is OpKind.HELLO:
            hello = ujson.loads(op.payload)
            self._meet(peer, hello["life"], hello)
        elif op.kind is OpKind.BEAT:
            # "<life> <sample as JSON>": the peer's counters ride on its beat.
            raw_life, _, sample = op.payload.partition(b" ")
            life = raw_life.decode()
            self._meet(peer, life)
            if membership.knows(peer, life):  # not a late beat of an old life
                membership.sample(peer, sample, self._loop.time())
        elif op.kind is OpKind.SYNC:
            if op.reason == "request":
                intro = ujson.loads(op.payload) if op.payload else {}
                if "life" not in intro or not self._meet(peer, intro["life"], intro):
                    self.tracker.send_sync(peer)
                return
            part = ujson.loads(op.payload)
            if membership.is_dead(part["life"]):
                return
            self._meet(peer, part["life"], part)
            if membership.knows(peer, part["life"]):
                self.tracker.apply_sync(peer, part)
        elif op.kind is OpKind.BYE and membership.knows(peer, op.payload.decode()):
            membership.drop(peer, "stopped")

    def _apply_presence(self, op: Op) -> None:
        if op.origin == self.worker:
            return  # applied here when it happened
        batch = ujson.loads(op.payload)
        batch_life = batch.get("life", "")
        if self.membership.is_dead(batch_life):
            return  # the last words of a process already gone
        if self._loop is not None:
            self._meet(op.origin, batch_life)
        self.tracker.apply_presence(op.origin, batch)

    def _apply_query(self, op: Op) -> None:
        if op.origin == self.worker:
            return
        question = ujson.loads(op.payload)
        answer = {"id": question.get("id"), "answer": self._answer(question)}
        self._publish(OpKind.REPLY, payload=ujson.dumps(answer).encode(), to=op.origin)

    def _apply_reply(self, op: Op) -> None:
        reply = ujson.loads(op.payload)
        waiting = self._questions.get(reply.get("id"))
        if waiting is None:
            return  # too late: the question timed out
        answers, expected, done = waiting
        answers[op.origin] = reply.get("answer")
        expected.discard(op.origin)
        if not expected:
            done.set()

    _appliers: ClassVar[dict[OpKind, Callable[[ConnectionManager, Op], None]]] = {
        OpKind.BROADCAST: _apply_broadcast,
        OpKind.SEND: _apply_send,
        OpKind.ROOM_SEND: _apply_group_send,
        OpKind.USER_SEND: _apply_group_send,
        OpKind.DISCONNECT: _apply_disconnect,
        OpKind.JOIN: _apply_join_leave,
        OpKind.LEAVE: _apply_join_leave,
        OpKind.HELLO: _apply_peer,
        OpKind.SYNC: _apply_peer,
        OpKind.BEAT: _apply_peer,
        OpKind.BYE: _apply_peer,
        OpKind.PRESENCE: _apply_presence,
        OpKind.QUERY: _apply_query,
        OpKind.REPLY: _apply_reply,
        OpKind.SEQUENCE: lambda self, op: self.sequencer.apply(op),
        OpKind.FETCH: lambda self, op: self.sequencer.apply(op),
        OpKind.HISTORY: lambda self, op: self.sequencer.apply(op),
    }

    def _peer_gone(self, peer: str) -> None:
        """A peer was dropped: forget what it held; its questions need no answer."""
        self.tracker.drop(peer)
        self.sequencer.peer_gone(peer)
        for _, expected, done in self._questions.values():
            expected.discard(peer)
            if not expected:
                done.set()

    # -- what the delivery reports (DeliveryEvents) ------------------------------

    def gap(self, peer: str) -> None:
        """Ops for ``peer`` were dropped: send it our whole state again."""
        self.tracker.send_sync(peer)

    def missed(self, peer: str) -> None:
        """We missed ops of ``peer``: ask it for its whole state."""
        self._request_sync(peer)

    def link(self, state: LinkState) -> None:
        """The Redis link changed state: run the ``on_backplane`` hooks."""
        if not self.registry.backplane or self._loop is None:
            return
        task = self._loop.create_task(self._run_backplane_hooks(str(state.value)))
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)

    async def _run_backplane_hooks(self, state: str) -> None:
        for hook in self.registry.backplane:
            try:
                await hook(self, state)
            except Exception:
                log.exception("websocket backplane hook failed")

    def _beat_peers(self) -> None:
        assert self._loop is not None
        try:
            # Each beat starts a new rate interval, in one process too.
            sample = self._take_sample(rates=True)
            if self.delivery.clustered:
                # One small JSON per beat: every peer holds everyone's figures.
                payload = self.life.encode() + b" " + ujson.dumps(sample).encode()
                self._publish(OpKind.BEAT, payload=payload)
            now = self._loop.time()
            self.dispatcher.watch(now)
            self.sequencer.sweep(now)
            self.membership.check(now)
        except Exception:
            log.exception("websocket relay beat failed")
        finally:
            self._peer_beat = self._loop.call_later(
                self.config.relay_beat, self._beat_peers
            )

    # -- rooms, for connections of this process -----------------------------

    def _join_local(self, conn: Connection, room: str) -> None:
        if conn.state is ConnectionState.CLOSED or not self.local.join(conn, room):
            return
        if len(self.local.rooms[room]) == 1:
            self.delivery.interest(room, True)  # the first member here
        self.tracker.joined(conn, room)

    def _leave_local(self, conn: Connection, room: str) -> None:
        if self.local.leave(conn, room):
            self._left(conn, room)

    def _left(self, conn: Connection, room: str) -> None:
        if room not in self.local.rooms:
            self.delivery.interest(room, False)  # the last member here
        self.tracker.left(conn, room)

    # -- connections coming and going --------------------------------------

    def accept(
        self,
        transport: asyncio.Transport,
        proto: ServerProtocol,
        accepted: Accept,
        *,
        remote: str,
        headers: dict[str, str],
    ) -> Connection:
        """Adopt an upgraded socket (called by the endpoint after the 101)."""
        assert self._flusher is not None, "ConnectionManager.start() was not awaited"
        wire = Wire(self, transport, proto, self._flusher)
        conn = Connection(
            # The process's key first: any process can route to it.
            id=self.membership.key + uuid.uuid4().hex[:24],
            manager=self,
            wire=wire,
            user=accepted.user,
            meta=dict(accepted.meta),
            remote=remote,
            headers=headers,
            worker=self.worker,
        )
        if accepted.presence:
            conn.presence = accepted.presence
        self.local.add(conn)
        self.counters.opened += 1
        self.limits.opened(remote)
        self._idle.clear()
        transport.set_protocol(wire)
        if self._closing:
            wire.start_close(CloseCode.GOING_AWAY, "server shutting down")
        self.dispatcher.queue(conn, OPENED)
        return conn

    def log_open(self, conn: Connection) -> None:
        log.debug("websocket %s open from %s user=%r", conn.id, conn.remote, conn.user)

    # -- what the wires report (WireHost) ------------------------------------

    def wire_message(self, conn: Connection, message: str | bytes) -> None:
        self.dispatcher.queue(conn, message)

    def wire_lost(self, conn: Connection) -> None:
        if not self.local.remove(conn):
            return
        for room in conn.rooms:
            self._left(conn, room)
        self.counters.closed += 1
        self.limits.closed(conn.remote)
        log.debug(
            "websocket %s closed %s %s", conn.id, conn.close_code, conn.close_reason
        )
        self.dispatcher.queue(conn, CLOSED)

    def _settled(self) -> None:
        """No handler runs any more: shutdown may be over."""
        if not self.local.conns:
            self._idle.set()

    # -- heartbeat -----------------------------------------------------------

    def _tick(self) -> float:
        """Seconds between heartbeat sweeps: a fifth of the tightest timing."""
        assert self.config.ping_interval is not None
        return min(self.config.ping_interval, self.config.ping_timeout, 5.0) / 5

    def _beat(self) -> None:
        assert self._loop is not None and self.config.ping_interval is not None
        try:
            self._sweep()
        except Exception:
            log.exception("websocket heartbeat sweep failed")
        self._heartbeat = self._loop.call_later(self._tick(), self._beat)

    def _sweep(self) -> None:
        assert self.config.ping_interval is not None
        now = self.clock()
        interval = self.config.ping_interval
        timeout = self.config.ping_timeout
        for wire in list(self.local.wires.values()):
            if wire.state is not ConnectionState.OPEN:
                continue
            if wire.reading_paused and wire.heard_while_paused():
                # Paused, its pongs cannot reach us; but the kernel holds
                # more from the peer than last time: it is alive.
                wire.last_seen = now
                wire.ping_sent = 0.0
                continue
            if wire.ping_sent:
                if now - wire.ping_sent > timeout:
                    wire.abort(CloseCode.INTERNAL_ERROR, "ping timeout")
            elif now - wire.last_seen >= interval and wire.send_ping():
                wire.ping_sent = now


def _room(room: str) -> bytes:
    if not isinstance(room, str) or not room:
        raise TypeError(f"room must be a non-empty str, got {room!r}")
    return room.encode()


def _delivery_counters(status: Mapping[str, Any]) -> dict[str, int]:
    """The delivery backend's fault counters, from its ``status()``."""
    machine: Mapping[str, Any] = status.get("machine", status)
    backplane = status if status.get("name") == "redis" else {}
    values = (
        machine.get("dropped", 0),
        backplane.get("reconnects", 0),
        backplane.get("lost", 0),
        backplane.get("missed", 0),
    )
    return dict(zip(DELIVERY_COUNTERS, values, strict=True))
