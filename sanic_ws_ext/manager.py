"""The connection manager, ``app.ctx.ws``: the one object apps talk to.

Rules this module keeps:

- ``connections`` holds the OPEN and CLOSING connections of this process; a
  connection leaves it the moment its socket is gone, before its disconnect
  handlers run.
- Every call that addresses connections becomes an
  :class:`~sanic_ws_ext.delivery.Op` published through the delivery backend;
  :meth:`ConnectionManager.apply` executes ops in each process. A message is
  encoded once where it is sent and framed once in each receiving process.
- This process is the only writer of its connections' cluster state: it
  publishes their arrival, departure and room changes, in order, and every
  process (itself included) applies them to its replica
  (:class:`~sanic_ws_ext.presence.ClusterState`). Queries (``count``,
  ``members``, ``users``) read the replica and never wait on other processes.
- Peers announce themselves (HELLO, answered with SYNC), prove they are alive
  (BEAT) and leave (BYE); a peer silent for three beats is dropped with its
  connections, and rooms see them leave.
- Handlers of one connection run one at a time, in arrival order, in a task
  that exists only while that connection has work queued. The queue is
  bounded by ``WS_MAX_QUEUE``: past it, reading from that socket pauses.
- One heartbeat timer serves every connection; none exists per connection.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import ujson
from websockets.server import ServerProtocol

from .config import WSConfig
from .connection import Connection, ConnectionState
from .delivery import Delivery, Op, OpKind
from .dispatch import CLOSED, OPENED, Dispatcher, cancel_tasks
from .envelope import encode_envelope
from .errors import CloseCode
from .frames import OP_TEXT, data_frame, encode_frame, raw_body
from .handlers import Accept, HandlerRegistry
from .index import LocalIndex
from .limits import ClientLimits
from .presence import ClusterState, Member
from .stats import DELIVERY_COUNTERS, Counters, RateMeter, clean_sample, cluster_stats
from .wire import Flusher, Wire, fan_out

__all__ = ["ConnectionManager"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Beats a peer may miss before it counts as dead.
_MISSED_BEATS = 3


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
        self.cluster = ClusterState()
        self.local = LocalIndex()
        self._connections = self.local.conns
        #: Read-only view of this process's connections by id.
        self.connections: Mapping[str, Connection] = MappingProxyType(self._connections)
        self._peers: dict[str, float] = {}
        #: This process's life: random, new at each start of a worker name.
        self.life = uuid.uuid4().hex
        self._lives: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._peer_beat: asyncio.TimerHandle | None = None
        # Each connection's handler task, while it has work queued.
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.dispatcher = Dispatcher(
            config,
            registry,
            join=self._join_local,
            leave=self._leave_local,
            settled=self._settled,
        )
        self._closing = False
        #: Per-client counts and connect buckets of this process.
        self.limits = ClientLimits(
            max_open=config.max_connections_per_ip,
            rate=config.connect_rate_per_ip,
            burst=config.connect_burst_per_ip,
        )
        self.clock: Callable[[], float] = lambda: 0.0
        #: What this process counts (messages in and out, connections).
        self.counters = Counters()
        self._rates = RateMeter()
        # Each peer's latest sample (riding on its beat) with when it arrived.
        self._peer_samples: dict[str, tuple[float, dict[str, Any]]] = {}

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Bind to the running loop and start delivery and the heartbeats."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.clock = loop.time
        self._flusher = Flusher(loop)
        self.dispatcher.start(loop)
        if hasattr(self.delivery, "on_gap"):
            # After the relay had to drop ops for a peer, re-sync it.
            self.delivery.on_gap = self._send_sync
        if hasattr(self.delivery, "on_missed"):
            # After we missed a peer's ops (Redis), ask it to re-sync us.
            self.delivery.on_missed = self._request_sync
        if hasattr(self.delivery, "on_state"):
            self.delivery.on_state = self._backplane_changed
        await self.delivery.start(self.apply)
        if self.config.ping_interval is not None:
            self._heartbeat = loop.call_later(self._tick(), self._beat)
        if self.delivery.name != "local":
            self._publish(OpKind.HELLO, payload=self.life.encode())
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
        for conn in list(self._connections.values()):
            conn.wire.start_close(CloseCode.GOING_AWAY, "server shutting down")
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.close_timeout + 1)
        except TimeoutError:
            for conn in list(self._connections.values()):
                conn.wire.abort(CloseCode.GOING_AWAY, "server shutting down")
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.close_timeout)
            except TimeoutError:
                log.warning("websocket handlers still running at shutdown: cancelled")
                # Awaited, so that their ``finally`` blocks (which may
                # publish) run while delivery still works.
                await self.dispatcher.cancel_all(self.config.close_timeout)
        # Peers keep hearing our beat while clients close, then our BYE.
        if self._peer_beat is not None:
            self._peer_beat.cancel()
            self._peer_beat = None
        await cancel_tasks(self._hook_tasks, self.config.close_timeout)
        if self.delivery.name != "local":
            self._publish(OpKind.BYE, payload=self.life.encode())
        await self.delivery.stop()

    @property
    def closing(self) -> bool:
        """True once shutdown began: new upgrades are refused with 503."""
        return self._closing

    # -- the public API: sending ------------------------------------------

    def get(self, conn_id: str) -> Connection | None:
        """The connection with this id, if this process holds it."""
        return self._connections.get(conn_id)

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
    ) -> None:
        """Send an envelope to every member of ``room``, on any worker."""
        self._publish(
            OpKind.ROOM_SEND,
            target=room,
            payload=encode_envelope(type, data),
            exclude=exclude,
        )

    async def publish_raw(
        self, room: str, payload: str | bytes, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send a raw text or binary frame to every member of ``room``."""
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
        """Put a connection, wherever it is, into ``room``."""
        self._address(OpKind.JOIN, conn_id, payload=_room(room))

    async def leave(self, conn_id: str, room: str) -> None:
        """Take a connection, wherever it is, out of ``room``."""
        self._address(OpKind.LEAVE, conn_id, payload=_room(room))

    # -- the public API: health ---------------------------------------------

    @property
    def backplane_state(self) -> str | None:
        """``"connected"``, ``"reconnecting"`` or ``"down"`` with Redis, else None."""
        state = getattr(self.delivery, "state", None)
        return None if state is None else str(state.value)

    def status(self) -> dict[str, Any]:
        """This process's view, JSON-able: for health checks and stats."""
        return {
            "worker": self.worker,
            "closing": self._closing,
            "connections": len(self._connections),
            "cluster_connections": len(self.cluster.members),
            "delivery": self.delivery.status(),
        }

    def health(self) -> dict[str, Any]:
        """Liveness, readiness and the state of the links, JSON-able.

        Nothing here names a client, a user or a machine: it is meant to be
        public (load balancers, orchestrators).
        """
        delivery = self.delivery.status()
        machine = delivery.get("machine", delivery)
        return {
            "alive": True,
            # Ready to take connections: started, and not shutting down. A
            # backplane outage does not make a worker unready: every machine
            # sees it at once, and each still serves its own clients.
            "ready": self._loop is not None and not self._closing,
            "delivery": delivery["name"],
            "relay": machine.get("state") if machine["name"] == "relay" else None,
            "backplane": self.backplane_state,
            "workers": 1 + len(self._peers),
        }

    def stats(self) -> dict[str, Any]:
        """Cluster-wide figures, from this process's view, JSON-able.

        Connections, rooms and users are the replica's (exact as soon as ops
        arrive); each worker's counters and rates are from its latest beat
        (this process's own are live). See :mod:`sanic_ws_ext.stats`.
        """
        now = self.clock()
        samples = {peer: sample for peer, (_, sample) in self._peer_samples.items()}
        ages = {peer: now - at for peer, (at, _) in self._peer_samples.items()}
        samples[self.worker] = self._take_sample(rates=False)
        ages[self.worker] = 0.0
        return cluster_stats(
            answered_by=self.worker,
            samples=samples,
            ages=ages,
            connections={w: len(ids) for w, ids in self.cluster.workers.items()},
            rooms=len(self.cluster.rooms),
            users=len(self.cluster.users),
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
        sample["connections"] = len(self._connections)
        sample["rooms"] = len(self.local.rooms)
        sample.update(_delivery_counters(self.delivery.status()))
        sample["backplane"] = self.backplane_state
        return sample

    # -- the public API: who is here ----------------------------------------

    async def count(self) -> int:
        """How many connections are open in the cluster."""
        return len(self.cluster.members)

    async def members(self, room: str) -> list[Member]:
        """The members of ``room``, cluster-wide."""
        return self.cluster.room_members(room)

    async def rooms(self) -> dict[str, int]:
        """Every room with at least one member, and its size."""
        return {room: len(ids) for room, ids in self.cluster.rooms.items()}

    async def users(self) -> dict[str, int]:
        """Every connected user, and how many connections they have."""
        return {user: len(ids) for user, ids in self.cluster.users.items()}

    async def workers(self) -> dict[str, int]:
        """Connections per worker."""
        return {worker: len(ids) for worker, ids in self.cluster.workers.items()}

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
        """Publish an op for one connection to the process that holds it."""
        member = self.cluster.members.get(conn_id)
        self._publish(
            kind, target=conn_id, to=member.worker if member else None, **fields
        )

    # -- applying ops ------------------------------------------------------------

    def apply(self, op: Op) -> None:
        """Execute ``op`` in this process (called by the delivery backend)."""
        if op.origin != self.worker and self._loop is not None:
            # Any op is a sign of life: a peer busy sending is not silent.
            self._peers[op.origin] = self._loop.time()
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
        conns = index.get(op.target)
        if not conns:
            return
        assert self._flusher is not None
        self.counters.messages_out += fan_out(
            list(conns),
            data_frame(op.payload, op.binary),
            op.exclude,
            self.config.max_backpressure,
            self._flusher,
        )

    def _apply_send(self, op: Op) -> None:
        conn = self._connections.get(op.target)
        if conn is not None:
            conn.send_frame(data_frame(op.payload, op.binary))

    def _apply_disconnect(self, op: Op) -> None:
        conn = self._connections.get(op.target)
        if conn is not None:
            conn.wire.start_close(op.code, op.reason)

    def _apply_join_leave(self, op: Op) -> None:
        conn = self._connections.get(op.target)
        if conn is None:
            return
        room = op.payload.decode()
        if op.kind is OpKind.JOIN:
            self._join_local(conn, room)
        else:
            self._leave_local(conn, room)

    def _apply_conn_up(self, op: Op) -> None:
        user = ujson.loads(op.payload).get("user") if op.payload else None
        self.cluster.up(op.target, user, op.origin)

    def _apply_conn_down(self, op: Op) -> None:
        member = self.cluster.down(op.target)
        if member is not None:
            for room in member.rooms:
                self._presence("presence.leave", room, member)

    def _apply_room_change(self, op: Op) -> None:
        room = op.payload.decode()
        if op.kind is OpKind.ROOM_JOINED:
            member = self.cluster.join(op.target, room)
            if member is not None:
                self._presence("presence.join", room, member)
        else:
            member = self.cluster.leave(op.target, room)
            if member is not None:
                self._presence("presence.leave", room, member)

    def _apply_peer(self, op: Op) -> None:
        """HELLO, SYNC, BEAT, BYE: who is in the cluster, and since when.

        Each process has a random ``life``; a worker name restarted is a new
        life. A BYE or SYNC from a life other than the one we know for that
        name comes from a process being replaced, and is ignored.
        """
        peer = op.origin
        if peer == self.worker:
            return
        if op.kind is OpKind.HELLO:
            # A (re)started process: what we hold for it is from its past life.
            self._lives[peer] = op.payload.decode()
            self._drop_peer(peer)
            self._send_sync(peer)
            # A HELLO can arrive after the new process's first ops (resent by
            # the backplane after a fault, say): ask for its state, too.
            self._request_sync(peer)
        elif op.kind is OpKind.BEAT:
            # "<life> <sample as JSON>": the peer's counters ride on its beat.
            raw_life, _, sample = op.payload.partition(b" ")
            life = raw_life.decode()
            if self._lives.get(peer) != life:
                # A peer we dropped (or whose HELLO we missed): catch up.
                self._lives[peer] = life
                self._request_sync(peer)
            if sample and self._loop is not None:
                self._peer_samples[peer] = (self._loop.time(), clean_sample(sample))
        elif op.kind is OpKind.SYNC:
            if op.reason == "request":
                self._send_sync(peer)
                return
            sync = ujson.loads(op.payload)
            if sync["life"] == self._lives.get(peer):
                self._load_peer(peer, sync["members"])
        elif op.kind is OpKind.BYE and op.payload.decode() == self._lives.get(peer):
            del self._lives[peer]
            self._peers.pop(peer, None)
            self._drop_peer(peer)

    _appliers: ClassVar[dict[OpKind, Callable[[ConnectionManager, Op], None]]] = {
        OpKind.BROADCAST: _apply_broadcast,
        OpKind.SEND: _apply_send,
        OpKind.ROOM_SEND: _apply_group_send,
        OpKind.USER_SEND: _apply_group_send,
        OpKind.DISCONNECT: _apply_disconnect,
        OpKind.JOIN: _apply_join_leave,
        OpKind.LEAVE: _apply_join_leave,
        OpKind.CONN_UP: _apply_conn_up,
        OpKind.CONN_DOWN: _apply_conn_down,
        OpKind.ROOM_JOINED: _apply_room_change,
        OpKind.ROOM_LEFT: _apply_room_change,
        OpKind.HELLO: _apply_peer,
        OpKind.SYNC: _apply_peer,
        OpKind.BEAT: _apply_peer,
        OpKind.BYE: _apply_peer,
    }

    def _request_sync(self, peer: str) -> None:
        self._publish(OpKind.SYNC, reason="request", to=peer)

    def _backplane_changed(self, state: Any) -> None:
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

    def _send_sync(self, peer: str) -> None:
        snapshot = {"life": self.life, "members": self.cluster.snapshot(self.worker)}
        self._publish(OpKind.SYNC, payload=ujson.dumps(snapshot).encode(), to=peer)

    def _load_peer(self, peer: str, entries: list[dict[str, Any]]) -> None:
        """Replace a peer's members, telling rooms about the differences."""
        before = {
            (m.id, room): m
            for m in (
                self.cluster.members[i] for i in self.cluster.workers.get(peer, ())
            )
            for room in m.rooms
        }
        self.cluster.load(peer, entries)
        after = {
            (m.id, room): m
            for m in (
                self.cluster.members[i] for i in self.cluster.workers.get(peer, ())
            )
            for room in m.rooms
        }
        left = before.keys() - after.keys()
        joined = after.keys() - before.keys()
        if left or joined:
            # A re-sync that changes the view: ops of that peer were missed.
            log.warning(
                "resync with %s: %d room membership(s) appeared, %d vanished",
                peer,
                len(joined),
                len(left),
            )
        for key in left:
            self._presence("presence.leave", key[1], before[key])
        for key in joined:
            self._presence("presence.join", key[1], after[key])

    def _drop_peer(self, peer: str) -> None:
        self._peer_samples.pop(peer, None)
        for member in self.cluster.drop_worker(peer):
            for room in member.rooms:
                self._presence("presence.leave", room, member)

    def _beat_peers(self) -> None:
        assert self._loop is not None
        try:
            # Each beat starts a new rate interval, in one process too.
            sample = self._take_sample(rates=True)
            if self.delivery.name != "local":
                # One small JSON per beat: every peer holds everyone's figures.
                payload = self.life.encode() + b" " + ujson.dumps(sample).encode()
                self._publish(OpKind.BEAT, payload=payload)
            now = self._loop.time()
            self.dispatcher.watch(now)
            horizon = now - _MISSED_BEATS * self.config.relay_beat
            for peer, seen in list(self._peers.items()):
                if not self.delivery.hears(peer):
                    # Unreachable is not dead: its silence counts from when
                    # the link is back.
                    self._peers[peer] = now
                elif seen < horizon:
                    log.warning("worker %s went silent: dropping its connections", peer)
                    del self._peers[peer]
                    self._lives.pop(peer, None)
                    self._drop_peer(peer)
        except Exception:
            log.exception("websocket relay beat failed")
        finally:
            self._peer_beat = self._loop.call_later(
                self.config.relay_beat, self._beat_peers
            )

    # -- rooms and presence, for connections of this process -----------------

    def _join_local(self, conn: Connection, room: str) -> None:
        if conn.state is ConnectionState.CLOSED or not self.local.join(conn, room):
            return
        self._publish(OpKind.ROOM_JOINED, target=conn.id, payload=_room(room))

    def _leave_local(self, conn: Connection, room: str) -> None:
        if self.local.leave(conn, room):
            self._publish(OpKind.ROOM_LEFT, target=conn.id, payload=_room(room))

    def _presence(self, type_: str, room: str, member: Member) -> None:
        """Tell this process's members of ``room`` that ``member`` came or went."""
        if not self.config.presence_events:
            return
        conns = self.local.rooms.get(room)
        if not conns:
            return
        frame = encode_frame(
            OP_TEXT,
            encode_envelope(type_, {"room": room, **member.as_dict()}),
        )
        assert self._flusher is not None
        self.counters.messages_out += fan_out(
            list(conns), frame, (), self.config.max_backpressure, self._flusher
        )

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
            id=str(uuid.uuid4()),
            manager=self,
            wire=wire,
            user=accepted.user,
            meta=dict(accepted.meta),
            remote=remote,
            headers=headers,
            worker=self.worker,
        )
        self.local.add(conn)
        self.counters.opened += 1
        self.limits.opened(remote)
        self._idle.clear()
        transport.set_protocol(wire)
        self._publish(
            OpKind.CONN_UP,
            target=conn.id,
            payload=ujson.dumps({"user": conn.user}).encode(),
        )
        if self._closing:
            wire.start_close(CloseCode.GOING_AWAY, "server shutting down")
        self.dispatcher.queue(conn, OPENED)
        return conn

    # -- what the wires report (WireHost) ------------------------------------

    def wire_message(self, conn: Connection, message: str | bytes) -> None:
        self._idle.clear()
        self.dispatcher.queue(conn, message)

    def wire_lost(self, conn: Connection) -> None:
        self._connection_lost(conn)

    def _settled(self) -> None:
        """No handler runs any more: shutdown may be over."""
        if not self._connections:
            self._idle.set()

    def log_open(self, conn: Connection) -> None:
        log.debug("websocket %s open from %s user=%r", conn.id, conn.remote, conn.user)

    def _connection_lost(self, conn: Connection) -> None:
        if not self.local.remove(conn):
            return
        self.counters.closed += 1
        self.limits.closed(conn.remote)
        log.debug(
            "websocket %s closed %s %s", conn.id, conn.close_code, conn.close_reason
        )
        self._publish(OpKind.CONN_DOWN, target=conn.id)
        self.dispatcher.queue(conn, CLOSED)

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
        for conn in list(self._connections.values()):
            if conn.state is not ConnectionState.OPEN:
                continue
            wire = conn.wire
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
