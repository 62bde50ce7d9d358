"""The connection manager, ``app.ctx.ws``: the one object apps talk to.

A facade over parts with one job each, which it owns and wires together
(none of them imports it):

- :class:`~sanic_ws_ext.index.LocalIndex` and
  :class:`~sanic_ws_ext.sessions.Sessions`: this process's connections, who
  of them is in which room or user, and what their coming and going means;
- :class:`~sanic_ws_ext.dispatch.Dispatcher`: running handlers for what
  arrives on each connection;
- :mod:`~sanic_ws_ext.heartbeat`: pinging silent clients; beating to peers;
- :class:`~sanic_ws_ext.outbox.Outbox` and
  :class:`~sanic_ws_ext.applier.Applier`: the ops this process publishes,
  and applying those the delivery backend hands over;
- :class:`~sanic_ws_ext.cluster.Membership`: which processes are alive, and
  the route to each connection;
- :class:`~sanic_ws_ext.tracker.Tracker`: presence of rooms that track it;
- :class:`~sanic_ws_ext.queries.Queries`: cluster-wide questions;
- :class:`~sanic_ws_ext.requests.Requests`: requests to clients, and their
  replies brought back to the asker;
- :class:`~sanic_ws_ext.health.Health`: readiness, status and figures.

What stays here: the public API, starting and stopping the parts in order,
and the objects the wires (a ``WireHost``) and the delivery backend (a
``DeliveryEvents``) report through: they are handed those, not the manager.

Every public name here is documented (docs/reference/api.md), and
``tests/test_public_api.py`` holds the two lists equal: apps get only that on
``app.ctx.ws``. What the Sanic glue calls has a leading underscore:
``_start`` and ``_stop`` (the extension's listeners), ``_accept`` and what
admission reads (the endpoint), ``_health_check`` and ``_cluster_stats``
(the monitoring routes); ``tests/test_layers.py`` lists who may.

Rules this module keeps:

- ``connections`` holds the OPEN and CLOSING connections of this process; a
  connection leaves it the moment its socket is gone, before its disconnect
  handlers run.
- Every call that addresses connections becomes an
  :class:`~sanic_ws_ext.delivery.Op` published through the delivery backend;
  each process applies it to its own connections. A message is encoded once
  where it is sent and framed once in each receiving process.
- Nothing is replicated per connection. A connection id names its process,
  so sends, joins and disconnects go straight there; counts come from each
  process's totals on its beat; membership of rooms without presence is
  asked for when wanted (:meth:`members`), never kept everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .applier import Applier
from .cluster import Membership
from .config import WSConfig
from .connection import Connection
from .deflate import Deflater
from .delivery import Delivery, LinkState, OpKind
from .dispatch import CLOSED, OPENED, Dispatcher, cancel_tasks
from .envelope import message_body
from .errors import CloseCode
from .handlers import Accept, HandlerRegistry
from .health import Health
from .heartbeat import Heartbeat, PeerBeat
from .history import Page, Position, parse_since
from .index import LocalIndex
from .limits import ClientLimits
from .outbox import Outbox
from .presence import checked_presence
from .queries import Member, Queries
from .requests import Requests
from .sequencer import Sequencer
from .sessions import Sessions
from .stats import Counters
from .tracker import Tracker
from .wire import Flusher, Wire, WireHost, send_key

__all__ = ["ConnectionManager", "Member"]


def _renamed(old: str, new: str) -> None:
    """Warn, from the caller's line, that ``old`` is now ``new``."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


log = logging.getLogger("sanic.root.sanic_ws_ext")


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
        self._config = config
        self._registry = registry
        # Checks a send's data against its declared type's schema
        # (WS_VALIDATE_OUTGOING), or None: off, one test per send.
        self._check_out: Callable[[str | None, Any], None] | None = None
        self._delivery = delivery
        self._worker = worker
        # This process's life: random, new at each start of a worker name.
        self._life = uuid.uuid4().hex
        self._local = LocalIndex()
        #: Read-only view of this process's connections by id.
        self.connections: Mapping[str, Connection] = MappingProxyType(self._local.conns)
        clock = self._clock  # for the parts: reads the wires' clock at each call
        # What this process counts (messages in and out, connections).
        self._counters = Counters()
        # Per-client counts and connect buckets of this process.
        self._limits = ClientLimits(
            max_open=config.max_connections_per_ip,
            rate=config.connect_rate_per_ip,
            burst=config.connect_burst_per_ip,
        )
        self._membership = Membership(
            worker,
            self._life,
            suspect_after=config.peer_suspect,
            dead_after=config.peer_timeout,
            hears=delivery.hears,
            # The applier, made below, forgets what a dropped peer held.
            gone=lambda peer: self._applier.peer_gone(peer),
        )
        self._outbox = Outbox(
            delivery, self._membership, worker=worker, life=self._life
        )
        self._tracker = Tracker(
            config,
            registry.rooms,
            self._local,
            self._counters,
            worker=worker,
            life=self._life,
            publish=self._outbox.presence,
            peers=self._membership.alive,
            subscribed=delivery.ready,
            clustered=lambda: delivery.clustered,
        )
        sessions = self._sessions = Sessions(
            config, self._local, self._counters, self._limits, self._tracker, delivery
        )
        # History rooms: numbering, keeping, replaying (its own module).
        self._sequencer = Sequencer(
            config,
            registry.rooms,
            self._local,
            publish=self._outbox.publish,
            join=sessions.join,
        )
        self._requests = Requests(
            self._local, self._membership, self._outbox, worker=worker
        )
        self._dispatcher = Dispatcher(
            config,
            registry,
            replied=self._requests.replied,
            join=sessions.join,
            leave=sessions.leave,
            ready=delivery.ready,
            settled=sessions.settled,
            recover=self._sequencer.join,
        )
        self._queries = Queries(
            config,
            self._local,
            self._membership,
            self._tracker,
            self._outbox,
            worker=worker,
        )
        self._health = Health(
            self._counters,
            self._local,
            self._membership,
            self._tracker,
            self._sequencer,
            delivery,
            worker=worker,
            clock=clock,
        )
        self._applier = Applier(
            config,
            self._local,
            self._counters,
            self._membership,
            self._tracker,
            self._queries,
            self._outbox,
            self._sequencer,
            self._requests,
            worker=worker,
            join=sessions.join,
            leave=sessions.leave,
            met=self._health.check_whole,
        )
        # What the wires report through (not the manager: see WireHost).
        self._wires = WireHost(
            config, self._counters, message=self._dispatcher.queue, lost=self._lost
        )
        # What the delivery backend reports through (DeliveryEvents).
        self._reports = _DeliveryReports(self._tracker, self._link)
        self._heartbeat = Heartbeat(
            config,
            self._local,
            clock=clock,
            expiring=bool(registry.verify or registry.refresh),
        )
        self._peer_beat = PeerBeat(
            config,
            self._health,
            self._outbox,
            self._dispatcher,
            self._membership,
            self._sequencer,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        # Sockets refused in-band (WS_AUTH_IN_BAND), waiting for their
        # client's close frame: no connection, aborted at shutdown (the
        # endpoint keeps it).
        self._lingering: set[asyncio.Transport] = set()

    # -- lifecycle -------------------------------------------------------

    async def _start(self) -> None:
        """Bind to the running loop and start delivery and the heartbeats
        (the extension's ``before_server_start``)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wires.clock = loop.time
        self._flusher = Flusher(loop)
        if self._config.compression:
            self._flusher.deflater = Deflater(
                self._config.compression_level, self._config.compression_min
            )
        self._dispatcher.start(loop)
        self._requests.start(loop)
        self._membership.start(loop)
        self._tracker.start(loop, self._flusher)
        self._applier.start(loop, self._flusher)
        self._sequencer.start(loop, self._delivery)
        await self._delivery.start(self._applier.apply, self._reports)
        self._heartbeat.start(loop)
        self._outbox.hello()
        self._health.check_whole()
        self._peer_beat.start(loop)

    async def _stop(self) -> None:
        """Close every connection with 1001 after what was accepted is sent.

        Waits at most ``WS_CLOSE_TIMEOUT`` for clients to answer, then drops
        the rest; disconnect handlers have run for all of them on return
        (the extension's ``before_server_stop``).
        """
        self._closing = True
        self._heartbeat.stop()
        for transport in list(self._lingering):
            transport.abort()
        await self._sessions.close_all(self._dispatcher.cancel_all)
        self._tracker.flush()  # the last leaves reach the peers before our BYE
        # Peers keep hearing our beat while clients close, then our BYE.
        self._peer_beat.stop()
        await cancel_tasks(self._hook_tasks, self._config.close_timeout)
        await self._tracker.stop()
        self._membership.stop()
        self._outbox.bye()
        await self._sequencer.stop()
        await self._delivery.stop()

    @property
    def closing(self) -> bool:
        """True once shutdown began: new upgrades are refused with 503."""
        return self._closing

    # -- the public API: sending ------------------------------------------

    def get(self, conn_id: str) -> Connection | None:
        """The connection with this id, if this process holds it."""
        return self._local.conns.get(conn_id)

    async def send(
        self,
        conn_id: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to one connection, wherever it is.

        Every send carries an envelope (``type`` and ``data``) or ``raw``, a
        frame sent as it is (``str`` as text, ``bytes`` as binary), and
        takes ``volatile`` (skip a receiver with more than
        ``WS_VOLATILE_BACKLOG`` unsent instead of adding to its backlog) and
        ``key`` (a newer frame of the same key replaces one still unsent on
        a connection): for cursors, ticks and progress, where only the
        latest matters.
        """
        if self._check_out is not None:
            self._check_out(type, data)
        body, binary = message_body(type, data, raw)
        if self._queue(OpKind.SEND, conn_id, body, binary, (), volatile, key):
            await self._pace()

    async def broadcast(
        self,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every connection but those in ``exclude`` (ids)."""
        if self._check_out is not None:
            self._check_out(type, data)
        body, binary = message_body(type, data, raw)
        if self._queue(OpKind.BROADCAST, "", body, binary, exclude, volatile, key):
            await self._pace()

    async def publish(
        self,
        room: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> Position | None:
        """Send to every member of ``room``, on any worker.

        For a room declared with ``history=``, returns the publication's
        position once the room's sequencer numbered it (raises
        ``SequencerUnavailable`` if it did not answer within
        ``WS_QUERY_TIMEOUT``); for other rooms None, at once. A history
        room's publications are envelopes, neither volatile nor keyed
        (every member gets each, in order): ``TypeError`` for ``raw``,
        ``ValueError`` for the others.
        """
        if self._check_out is not None:
            self._check_out(type, data)
        body, binary = message_body(type, data, raw)
        spec = self._sequencer.spec(room)
        if spec is not None:
            if raw is not None:
                raise TypeError(f"room {room!r} keeps history: publish envelopes to it")
            if volatile or key is not None:
                raise ValueError(
                    f"room {room!r} keeps history: its publications cannot be "
                    "volatile or keyed"
                )
            return await self._sequencer.publish(room, spec, body, exclude)
        if self._queue(OpKind.ROOM_SEND, room, body, binary, exclude, volatile, key):
            await self._pace()
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
        spec = self._sequencer.spec(room)
        if spec is None:
            raise ValueError(f"room {room!r} is not declared with history=")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        return await self._sequencer.fetch(
            room, spec, parse_since(since), min(limit, spec.size)
        )

    async def send_user(
        self,
        user: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every connection of ``user`` (the verify identity)."""
        if self._check_out is not None:
            self._check_out(type, data)
        body, binary = message_body(type, data, raw)
        if self._queue(OpKind.USER_SEND, user, body, binary, exclude, volatile, key):
            await self._pace()

    async def request(
        self, conn_id: str, type: str, data: Any = None, *, timeout: float = 10.0
    ) -> Any:
        """Send a request to one connection, wherever it is; the data it replies.

        The reply comes back to this process, whichever holds the connection.
        Raises :class:`~sanic_ws_ext.errors.RequestFailed` when the client
        answers ``ok: false``, :class:`~sanic_ws_ext.errors.RequestTimeout`
        after ``timeout`` seconds, :class:`~sanic_ws_ext.errors.ClientGone`
        as soon as the connection closes (or its process stops).
        """
        return await self._requests.request(conn_id, type, data, timeout)

    # The raw twins of before: one release of warnings, then gone.

    async def send_raw(
        self, conn_id: str, payload: str | bytes, **options: Any
    ) -> None:
        """Deprecated: ``send(conn_id, raw=payload)``."""
        _renamed("ws.send_raw(conn_id, payload)", "ws.send(conn_id, raw=payload)")
        await self.send(conn_id, raw=payload, **options)

    async def broadcast_raw(self, payload: str | bytes, **options: Any) -> None:
        """Deprecated: ``broadcast(raw=payload)``."""
        _renamed("ws.broadcast_raw(payload)", "ws.broadcast(raw=payload)")
        await self.broadcast(raw=payload, **options)

    async def publish_raw(
        self, room: str, payload: str | bytes, **options: Any
    ) -> None:
        """Deprecated: ``publish(room, raw=payload)``."""
        _renamed("ws.publish_raw(room, payload)", "ws.publish(room, raw=payload)")
        await self.publish(room, raw=payload, **options)

    async def send_user_raw(
        self, user: str, payload: str | bytes, **options: Any
    ) -> None:
        """Deprecated: ``send_user(user, raw=payload)``."""
        _renamed("ws.send_user_raw(user, payload)", "ws.send_user(user, raw=payload)")
        await self.send_user(user, raw=payload, **options)

    def _queue(
        self,
        kind: OpKind,
        target: str,
        body: bytes,
        binary: bool,
        exclude: Iterable[str],
        volatile: bool,
        key: str | None,
    ) -> bool:
        """Hand one send to the delivery: to the process holding the
        connection (``SEND``), or to every process. The key travels in the
        op's ``reason``. True when the sender must pace before going on
        (:meth:`_pace`): checked here, so that most sends do not await two
        coroutines to learn they need not (~7% of a broadcast's cost)."""
        reason = send_key(key) or ""
        if kind is OpKind.SEND:
            self._outbox.address(
                kind,
                target,
                payload=body,
                binary=binary,
                volatile=volatile,
                reason=reason,
            )
        else:
            self._outbox.publish(
                kind,
                target=target,
                payload=body,
                binary=binary,
                exclude=exclude,
                volatile=volatile,
                reason=reason,
            )
        return self._flusher is not None and self._flusher.due()

    async def _pace(self) -> None:
        """After queuing: let the loop run, and wait for readers, once this
        process queued more than a pass's worth without yielding
        (:meth:`~sanic_ws_ext.wire.Flusher.pace`, ``WS_DRAIN_TIMEOUT``)."""
        assert self._flusher is not None  # _queue said so
        config = self._config
        await self._flusher.pace(config.max_backpressure, config.drain_timeout)

    async def disconnect(
        self, conn_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close one connection, wherever it is, after what it was already sent."""
        self._outbox.address(OpKind.DISCONNECT, conn_id, code=code, reason=reason)

    async def disconnect_user(
        self, user: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close every connection of ``user``, on every worker and machine.

        Logout everywhere: one op to every process (as ``send_user``), each
        closing its own connections of that user after what they were
        already sent. ``code`` is 1000 or 3000 to 4999 (4401, 4403...);
        ``reason`` at most 123 bytes of UTF-8 (a close frame's room).
        Connections opened after the op reached a process are not closed:
        refuse the user's tokens first.
        """
        if not isinstance(user, str) or not user:
            raise TypeError(f"user must be a non-empty str, got {user!r}")
        check_close(code, reason)
        self._outbox.publish(
            OpKind.USER_DISCONNECT, target=user, code=code, reason=reason
        )

    async def join(self, conn_id: str, room: str) -> None:
        """Put a connection, wherever it is, into ``room``.

        For a connection of this process, returns once publications to the
        room reach it (with Redis: once this process is subscribed to the
        room), so a message published after the join is not missed.

        A room declared with ``history=`` also sends the connection
        ``room.joined`` with the room's position (``{"room", "position"}``),
        as a client's own join does: its client resumes from there after a
        reconnect (for a connection of this process, returns after that).
        """
        conn = self._local.conns.get(conn_id)
        spec = self._sequencer.spec(room)
        if conn is not None and spec is not None and room not in conn.rooms:
            await self._sequencer.join(conn, room, spec, None)
            return
        self._outbox.address(OpKind.JOIN, conn_id, payload=_room(room))
        if conn is not None:
            await self._delivery.ready(room)

    async def leave(self, conn_id: str, room: str) -> None:
        """Take a connection, wherever it is, out of ``room``."""
        self._outbox.address(OpKind.LEAVE, conn_id, payload=_room(room))

    def _update_presence(self, conn: Connection, meta: dict[str, Any]) -> None:
        """Replace ``conn``'s presence metadata (see ``Connection.update_presence``)."""
        conn.presence = checked_presence(meta, self._config.presence_meta_max)
        self._tracker.update(conn)

    # -- the public API: who is here ----------------------------------------

    async def count(self) -> int:
        """How many connections are open in the cluster.

        This process's own count is live; each other process's is from its
        latest beat (at most ``WS_RELAY_BEAT`` old).
        """
        return sum((await self.workers()).values())

    async def workers(self) -> dict[str, int]:
        """Connections per worker (the others' as of their latest beat)."""
        samples, _ = self._membership.samples(self._clock())
        counts = {name: int(s.get("connections", 0)) for name, s in samples.items()}
        counts[self._worker] = len(self._local)
        return counts

    async def members(self, room: str) -> list[Member]:
        """The members of ``room``, cluster-wide.

        A room with full presence that this process has members of answers
        from its view at once. Otherwise every process is asked (each answers
        for its own connections, with their presence in a full room), and
        the answer waits for the others (at most ``WS_QUERY_TIMEOUT``).
        """
        return await self._queries.members(room)

    async def rooms(self) -> dict[str, int]:
        """Every room with at least one member, and its size (asks every process)."""
        return await self._queries.rooms()

    async def users(self) -> dict[str, int]:
        """Every connected user and their number of connections (asks everyone)."""
        return await self._queries.users()

    # -- the public API: health ---------------------------------------------

    @property
    def backplane_state(self) -> str | None:
        """``"connected"``, ``"reconnecting"`` or ``"down"`` with Redis, else None."""
        return self._health.backplane_state

    def status(self) -> dict[str, Any]:
        """This process's view, JSON-able: for health checks and stats."""
        return self._health.status(closing=self._closing)

    def _health_check(self) -> dict[str, Any]:
        """Liveness, readiness and the state of the links, JSON-able
        (``<WS_PATH>/health``).

        Nothing here names a client, a user or a machine: it is meant to be
        public (load balancers, orchestrators).
        """
        return self._health.health(
            started=self._loop is not None, closing=self._closing
        )

    def _cluster_stats(self) -> dict[str, Any]:
        """Cluster-wide figures, from this process's view, JSON-able
        (``<WS_PATH>/stats`` and ``/metrics``).

        Each worker's figures are from its latest beat (this process's own
        are live). See :mod:`sanic_ws_ext.stats`.
        """
        return self._health.stats()

    def health(self) -> dict[str, Any]:
        """Deprecated: ``GET <WS_PATH>/health`` answers the same."""
        _renamed("ws.health()", "GET <WS_PATH>/health (docs/operations.md)")
        return self._health_check()

    def stats(self) -> dict[str, Any]:
        """Deprecated: ``GET <WS_PATH>/stats`` answers the same."""
        _renamed("ws.stats()", "GET <WS_PATH>/stats (docs/operations.md)")
        return self._cluster_stats()

    # -- what the delivery backend reports (through _DeliveryReports) ----------

    def _link(self, state: LinkState) -> None:
        """The Redis link changed state: run the ``on_backplane`` hooks."""
        if state is LinkState.CONNECTED:
            self._tracker.discover()  # peers are heard again
        if not self._registry.backplane or self._loop is None:
            return
        task = self._loop.create_task(self._run_backplane_hooks(str(state.value)))
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)

    async def _run_backplane_hooks(self, state: str) -> None:
        for hook in self._registry.backplane:
            try:
                await hook(self, state)
            except Exception:
                log.exception("websocket backplane hook failed")

    # -- connections coming and going --------------------------------------

    def _accept(
        self,
        transport: asyncio.Transport,
        accepted: Accept,
        *,
        remote: str,
        headers: dict[str, str],
        subprotocol: str | None = None,
        deflate_bits: int = 0,
    ) -> Connection:
        """Adopt an upgraded socket (called by the endpoint after the 101);
        ``deflate_bits``: permessage-deflate's window, if it was agreed."""
        assert self._flusher is not None, "ConnectionManager._start() was not awaited"
        wire = Wire(self._wires, transport, self._flusher)
        if deflate_bits:
            wire.enable_deflate(deflate_bits)
        conn = Connection(
            # The process's key first: any process can route to it.
            id=self._membership.key + uuid.uuid4().hex[:24],
            manager=self,
            wire=wire,
            user=accepted.user,
            meta=dict(accepted.meta),
            remote=remote,
            headers=headers,
            worker=self._worker,
            subprotocol=subprotocol,
            expires_at=accepted.expires_at,
        )
        if accepted.presence:
            conn.presence = accepted.presence
        self._sessions.add(conn)
        transport.set_protocol(wire)
        if self._closing:
            wire.start_close(CloseCode.GOING_AWAY, "server shutting down")
        self._dispatcher.queue(conn, OPENED)
        log.debug("websocket %s open from %s user=%r", conn.id, remote, conn.user)
        return conn

    def _clock(self) -> float:
        """The loop's time (the wires' clock, which a test may replace)."""
        return self._wires.clock()

    def _lost(self, conn: Connection) -> None:
        """A wire's socket is gone (``WireHost.lost``)."""
        if conn._asks:
            self._requests.lost(conn)
        if self._sessions.lost(conn):
            self._dispatcher.queue(conn, CLOSED)


class _DeliveryReports:
    """What the delivery backend reports (:class:`DeliveryEvents`), handed to
    it at start instead of the manager: each report goes to the part it
    concerns."""

    __slots__ = ("_link", "_tracker")

    def __init__(self, tracker: Tracker, link: Callable[[LinkState], None]) -> None:
        self._tracker = tracker
        self._link = link

    def gap(self, peer: str) -> None:
        """Ops for ``peer`` were dropped: it should ask us again for the
        rooms it follows."""
        self._tracker.introduce(peer, ask=True)

    def missed(self, peer: str) -> None:
        """We missed ops of ``peer``: ask it again for the rooms we follow."""
        self._tracker.resync(peer)

    def link(self, state: LinkState) -> None:
        """The Redis link changed state."""
        self._link(state)


def check_close(code: int, reason: str) -> None:
    """Refuse a close code or reason an app may not send (RFC 6455, 7.4)."""
    if (
        isinstance(code, bool)
        or not isinstance(code, int)
        or not (code == 1000 or 3000 <= code <= 4999)
    ):
        raise ValueError(
            f"close code must be 1000 or 3000 to 4999 (4000 + an HTTP status"
            f" for auth, say 4401), got {code!r}"
        )
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, got {reason!r}")
    if len(reason.encode()) > 123:
        raise ValueError(
            f"reason is {len(reason.encode())} bytes of UTF-8; a close frame"
            " holds at most 123"
        )


def _room(room: str) -> bytes:
    if not isinstance(room, str) or not room:
        raise TypeError(f"room must be a non-empty str, got {room!r}")
    return room.encode()
