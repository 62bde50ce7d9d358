"""Delivery across machines, through Redis pub/sub.

``WS_BACKPLANE = "redis://host:6379/0"`` makes every machine using the same
URL and ``WS_REDIS_CHANNEL`` one cluster. Each machine keeps its own delivery
between its workers (the relay, or local in one process); the backplane wraps
it and carries ops to the other machines only:

- an op for everyone is applied here and relayed to this machine's workers at
  once (no Redis round trip), and published once to ``<channel>:all``;
- an op for one process goes to that process's channel
  ``<channel>:to:<node>/<worker>``, or over the relay if it lives here;
- a message to a room goes to the room's own channel ``<channel>:room:<room>``,
  which a process subscribes to only while it has members of that room
  (interest routing): a machine with no member of a room spends nothing on
  it, and Redis delivers each room message only to the processes that need
  it.

Process names are ``<node>/<worker>``; the node id is made once per machine
(per ``sanic`` main process) and shared by its workers.

On a Redis Cluster (found at the first connection: see
:mod:`~sanic_ws_ext.delivery.redislink`), room channels are sharded pub/sub
on the shard owning their slot, and ``:all`` and the per-process channels
stay plain, published through one node per process so that they keep their
order. The rest of this module does not care which it is.

Subscriptions: every worker process holds one subscriber connection with two
channels (``:all`` and its own), so a machine with N workers holds N. A
single subscriber per machine re-relaying to its workers would send each op
over the network once instead of N times, but pub/sub keeps nothing for a
subscriber that is away: every restart of that one process (each deploy,
each crash) would make the whole machine deaf, while per-worker subscribers
only miss ops meant for connections that are restarting with them. Ops from
this machine's own workers come back from ``:all`` and are dropped unread
(they were delivered over the relay).

Delivery guarantees, per sender and receiving process:

- Each Redis message (a batch of one event-loop pass of ops) carries the
  sender's life (for a room channel, a life of that room's stream) and a
  sequence number per channel. A receiver that has just subscribed to a
  room takes the first message it hears there as its start, not as a gap.
  Receivers drop what they have seen (a batch resent after a link failure)
  and notice gaps: a gap is counted, logged and answered by asking the
  sender to re-sync its state.
- While Redis is unreachable, outgoing batches wait in a buffer bounded by
  ``WS_BACKPLANE_BUFFER`` bytes (state "reconnecting"); past it new batches
  are dropped and counted (state "down"). After reconnecting, the buffer is
  sent once the processes heard before the outage have resubscribed (Redis
  ``PUBSUB NUMSUB``, summed over a cluster's nodes; bounded wait), so a
  restart shorter than the buffer loses nothing. A process subscribes to
  ``:all`` after its rooms, so counting it there means its rooms are heard.
- The link is never silently deaf: every process hears its own beat through
  Redis; a subscriber that hears nothing for several beats is torn down and
  reconnected, and so is one on any error. Reconnects back off exponentially
  with jitter, capped at :data:`RETRY_CAP` seconds. redis-py's own retries
  and the subscriber's socket timeout are switched off (a read timeout on an
  idle subscriber is not a fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from ..errors import PublishTooLarge
from . import NO_EVENTS, Delivery, DeliveryEvents, LinkState, Op, OpKind
from .redis_history import HISTORY_ORIGIN
from .redislink import IO_TIMEOUT, ClusterLink, Deaf, SingleLink
from .wire import (
    apply_records,
    encode_op,
    frame_record,
    iter_records,
    pack_message,
    pack_records,
    unpack_message,
)

__all__ = ["RETRY_CAP", "SENDER_ONLY", "RedisBackplane"]

log = logging.getLogger("sanic.root.sanic_ws_ext.backplane")

#: First and largest delay between reconnect attempts, in seconds.
RETRY_FIRST = 0.05
RETRY_CAP = 2.0
#: Longest wait, after reconnecting, for peers to resubscribe before the
#: buffer is sent anyway.
RESUBSCRIBE_WAIT = 3 * RETRY_CAP
#: After reconnecting, peers get this long to come back before their
#: silence counts again (their reconnect delay plus their resubscribe wait).
HEARING_GRACE = RETRY_CAP + RESUBSCRIBE_WAIT
#: Silence, in beats, after which a subscriber is taken for deaf.
DEAF_BEATS = 5
_CHUNK = 64 * 1024  # records packed per Redis message (a bigger op goes alone)
_BATCH = 256  # messages per pipeline round trip
_IO_TIMEOUT = IO_TIMEOUT  # seconds for connecting and for a publish round trip
_START_WAIT = 2.0  # seconds start() waits for the first connection
_PRUNE_EVERY = 60.0  # seconds between sweeps of what we keep per process
# Redis acknowledges a PUBLISH before its subscribers have the bytes: a crash
# in between loses it. Messages acknowledged this recently before a failure
# are sent again after the reconnect (receivers drop what they already got).
_RESEND_WINDOW = 1.0
_RESEND_BYTES = 1 << 20
_FORGET_AFTER = 600.0  # a process silent this long (while connected) is gone
#: Origins starting with this send and never subscribe: the Redis sequencer
#: of history rooms (``~history``) and emitters (``~emitter/<id>``).
SENDER_ONLY = "~"
assert HISTORY_ORIGIN.startswith(SENDER_ONLY)


#: Room streams a process keeps numbering; past it the least recently used
#: starts afresh (receivers then see a new stream, not a gap).
_STREAMS = 65536


class _Room:
    """One room this process has (or just had) members of."""

    __slots__ = ("linger", "subscribed", "wanted")

    def __init__(self) -> None:
        self.wanted = True
        #: Set once Redis confirmed the subscription (cleared when the link drops).
        self.subscribed = asyncio.Event()
        #: The pending unsubscribe, after the last member left.
        self.linger: asyncio.TimerHandle | None = None


class RedisBackplane:
    """The delivery backend between machines; wraps the machine's own."""

    name = "redis"
    clustered = True

    @property
    def link_state(self) -> LinkState:
        return self.state

    def __init__(
        self,
        url: str,
        local: Delivery,
        *,
        node: str,
        process: str,
        channel: str,
        max_publish: int,
        buffer: int,
        beat: float,
    ) -> None:
        self.url = url
        self.local = local
        self.node = node
        self.process = process
        self.max_publish = max_publish
        self.buffer = buffer
        self.beat = beat
        self._node_prefix = node + "/"
        self._all = f"{channel}:all"
        # On a cluster only (see redislink): ours alone, so that a probe
        # published to it is heard by this process only.
        self._anchor = f"{channel}:link:{process}"
        self._direct = f"{channel}:to:"
        self._room_prefix = f"{channel}:room:"
        self._room_prefix_b = self._room_prefix.encode()
        self._mine = (self._direct + process).encode()
        self._origin = process.encode()
        self._life = int.from_bytes(os.urandom(8), "big")
        self.state = LinkState.RECONNECTING
        #: Called with the new state on every change.
        self._events: DeliveryEvents = NO_EVENTS
        # Counters, reported by status().
        self.reconnects = 0
        self.lost = 0  # ops of ours dropped: the buffer was full
        self.missed = 0  # messages of others we never got (sequence gaps)
        self.duplicates = 0  # messages received twice (resent after a fault)
        self.published = 0
        self.received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._apply: Callable[[Op], None] | None = None
        # (channel, framed record) in publish order.
        self._pending: list[tuple[str, bytes]] = []
        self._sealing = False
        self._outbox: deque[tuple[str, bytes]] = deque()
        # (acknowledged at, channel, message), newest last, for _RESEND_WINDOW.
        self._recent: deque[tuple[float, str, bytes]] = deque()
        self._recent_bytes = 0
        self._outbox_bytes = 0
        self._seq: dict[str, int] = {}
        # Room channels we publish to: their stream's life, least recently
        # used first (bounded: an evicted room starts a new stream).
        self._streams: OrderedDict[str, int] = OrderedDict()
        # (channel, origin) -> (its life, last sequence seen)
        self._seen: dict[tuple[bytes, str], tuple[int, int]] = {}
        # Rooms with local members, and the subscription state of each.
        self._rooms: dict[str, _Room] = {}
        # The connections: one server's until the first connection finds a
        # Redis Cluster (decided once).
        self._link: SingleLink | ClusterLink | None = None
        self._link_chosen = False
        #: Counts the link's connections: what a command client learned
        #: (a server's run_id, its scripts) is from an older one when it grew.
        self.generation = 0
        self._linked = False  # connected and subscribed: commands may go
        self._commands: set[asyncio.Task[None]] = set()
        self._heard: dict[str, float] = {}
        # Sender-only origins (SENDER_ONLY) heard, and when: for pruning only.
        self._senders: dict[str, float] = {}
        self._expected: set[str] = set()
        self._recovering = False
        # Set at the first reconnect of an outage; kept across later ones, so
        # flapping links cannot restart the wait forever.
        self._resubscribe_deadline: float | None = None
        self._hearing_since = -HEARING_GRACE
        self._down_since: float | None = None
        self._last_heard = 0.0
        self._ever_up = False
        self._dropping = False
        # Room channels where messages were dropped (see _mark_holes).
        self._holes: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._connected_once: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def link(self) -> SingleLink | ClusterLink | None:
        """The current link (a :class:`ClusterLink` once a cluster was found)."""
        return self._link if self._link_chosen else None

    def room_channel(self, room: str) -> str:
        """The channel carrying ``room``'s publications."""
        return self._room_prefix + room

    # -- lifecycle -----------------------------------------------------------

    async def start(
        self, apply: Callable[[Op], None], events: DeliveryEvents = NO_EVENTS
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._apply = apply
        self._events = events
        self._wake = asyncio.Event()
        self._connected_once = asyncio.Event()
        self._link = SingleLink(
            self.url,
            message=self._deliver,
            confirmed=self._confirmed,
            heard=self._subscriber_read,
        )
        await self.local.start(apply, events)
        self._task = loop.create_task(self._run())
        try:
            await asyncio.wait_for(self._connected_once.wait(), _START_WAIT)
        except TimeoutError:
            log.error(
                "redis backplane: no connection to %s yet; serving this machine"
                " and retrying in the background",
                _redact(self.url),
            )

    async def stop(self) -> None:
        """Send what is buffered (briefly, if connected), then close."""
        if self._apply is None:
            return
        if self.state is LinkState.CONNECTED:
            await self.drain(1.0)
        if self._outbox:
            log.warning(
                "redis backplane: stopping with %d unsent message(s)", len(self._outbox)
            )
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2 * _IO_TIMEOUT)
            self._task = None
        for command in list(self._commands):
            command.cancel()
        if self._link is not None:
            await self._link.close()
        await self.local.stop()
        self._apply = None
        self.state = LinkState.DOWN  # no hooks: the manager is stopping

    async def drain(self, timeout: float) -> bool:
        """Wait until Redis took everything published so far; False on timeout."""
        self._seal()
        if self._outbox:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        return not self._outbox

    # -- what the manager asks -------------------------------------------------

    def hears(self, peer: str) -> bool:
        if self._is_local(peer):
            return self.local.hears(peer)
        if self.state is not LinkState.CONNECTED or self._loop is None:
            return False
        return self._loop.time() - self._hearing_since > HEARING_GRACE

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "node": self.node,
            # 1 on one Redis, the masters of a Redis Cluster; None until known.
            "shards": self._link.shards if self._link_chosen and self._link else None,
            "reconnects": self.reconnects,
            "buffered_bytes": self._outbox_bytes,
            "lost": self.lost,
            "missed": self.missed,
            "duplicates": self.duplicates,
            "published": self.published,
            "received": self.received,
            "machine": self.local.status(),
        }

    # -- sending ---------------------------------------------------------------

    def _is_local(self, process: str) -> bool:
        return process.startswith(self._node_prefix) or "/" not in process

    def deliver(
        self, op: Op, to: str | None = None, record: bytes | None = None
    ) -> None:
        if self._apply is None:
            raise RuntimeError("deliver() before start() or after stop()")
        if to is not None and self._is_local(to):
            self.local.deliver(op, to, record)
            return
        if len(op.payload) > self.max_publish:
            raise PublishTooLarge(len(op.payload), self.max_publish)
        if (op.volatile or (to is None and op.kind is OpKind.BEAT)) and (
            self.state is not LinkState.CONNECTED
        ):
            # A beat, or a volatile send, is only worth sending now: never
            # buffered for after an outage (this machine still gets it).
            if to is None:
                self.local.deliver(op, None, record)
            return
        if record is None:
            record = frame_record(encode_op(op))  # once, for the relay and Redis
        if to is None:
            self.local.deliver(op, None, record)
            if op.kind is OpKind.ROOM_SEND or op.kind is OpKind.PRESENCE:
                channel = self._room_prefix + op.target
            else:
                channel = self._all
        else:
            channel = self._direct + to
        self._pending.append((channel, record))
        if not self._sealing:
            self._sealing = True
            assert self._loop is not None
            self._loop.call_soon(self._seal)

    def _seal(self) -> None:
        """Pack this loop pass's ops into numbered messages in the outbox.

        Consecutive ops for one channel share a message; a change of channel
        starts a new one, so the outbox keeps the order ops were published.
        """
        self._sealing = False
        pending, self._pending = self._pending, []
        for channel, run in itertools.groupby(pending, key=lambda item: item[0]):
            life = self._stream(channel)
            for chunk in pack_records([record for _, record in run], _CHUNK):
                seq = self._seq.get(channel, 0) + 1
                self._seq[channel] = seq
                message = pack_message(self._origin, life, seq, chunk)
                if self._dropping or self._outbox_bytes + len(message) > self.buffer:
                    # Dropped with its sequence number spent: receivers see
                    # the gap and ask for a re-sync. On a room's channel
                    # there may be no next message to show it: one is sent
                    # when the backlog is through (_mark_holes).
                    self._drop(chunk)
                    if channel.startswith(self._room_prefix):
                        self._holes.add(channel)
                    continue
                self._outbox.append((channel, message))
                self._outbox_bytes += len(message)
        if self._wake is not None:
            self._wake.set()

    def _mark_holes(self) -> bool:
        """Send an empty message, with the next sequence number, on each room
        channel where messages were dropped: its followers see the gap now
        (and ask us again for the room's presence) rather than at our next
        message there, which may never come. True if any was queued."""
        holes, self._holes = self._holes, set()
        for channel in holes:
            seq = self._seq.get(channel, 0) + 1
            self._seq[channel] = seq
            message = pack_message(self._origin, self._stream(channel), seq, b"")
            self._outbox.append((channel, message))
            self._outbox_bytes += len(message)
        return bool(holes)

    def _stream(self, channel: str) -> int:
        """The life under which this process numbers ``channel``'s messages."""
        if not channel.startswith(self._room_prefix):
            return self._life
        streams = self._streams
        life = streams.get(channel)
        if life is not None:
            streams.move_to_end(channel)
            return life
        life = int.from_bytes(os.urandom(8), "big")
        streams[channel] = life
        self._seq.pop(channel, None)
        if len(streams) > _STREAMS:
            evicted, _ = streams.popitem(last=False)
            self._seq.pop(evicted, None)
        return life

    # -- interest: subscribing to the rooms this process has members of --------

    def interest(self, room: str, wanted: bool) -> None:
        room_state = self._rooms.get(room)
        if wanted:
            if room_state is None:
                self._rooms[room] = _Room()
                self._subscribe([room])
            else:
                room_state.wanted = True
                if room_state.linger is not None:
                    room_state.linger.cancel()
                    room_state.linger = None
        elif room_state is not None and room_state.wanted:
            # Kept a little: a room whose last member leaves and another
            # joins (a page reload) is not unsubscribed and resubscribed.
            room_state.wanted = False
            assert self._loop is not None
            room_state.linger = self._loop.call_later(
                2 * self.beat, self._unsubscribe, room
            )

    async def ready(self, room: str) -> None:
        room_state = self._rooms.get(room)
        if room_state is None or self.state is not LinkState.CONNECTED:
            return  # nothing to wait for, or an outage: nothing to wait on
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(room_state.subscribed.wait(), _IO_TIMEOUT)

    def _subscribe(self, rooms: list[str]) -> None:
        if not self._linked or self._link is None or not rooms:
            return  # (re)connecting subscribes every room we want
        channels = [self._room_prefix + room for room in rooms]
        self._command(self._link.subscribe(channels))

    def _unsubscribe(self, room: str) -> None:
        room_state = self._rooms.get(room)
        if room_state is None or room_state.wanted:
            return
        del self._rooms[room]
        channel = self._room_prefix + room
        # What was heard there is forgotten: a later subscription starts anew.
        channel_b = channel.encode()
        for key in [k for k in self._seen if k[0] == channel_b]:
            del self._seen[key]
        if self._linked and self._link is not None:
            self._command(self._link.unsubscribe(channel))

    def _command(self, command: Any) -> None:
        """Run a subscriber command; a failure is the link's (it reconnects)."""
        assert self._loop is not None

        async def run() -> None:
            try:
                await command
            except Exception as exc:
                log.warning(
                    "redis backplane: subscriber command failed (%s)", _describe(exc)
                )

        task = self._loop.create_task(run())
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    def _confirmed(self, channel: bytes) -> None:
        name = channel.decode()
        if name.startswith(self._room_prefix):
            room_state = self._rooms.get(name[len(self._room_prefix) :])
            if room_state is not None:
                room_state.subscribed.set()

    def _drop(self, chunk: bytes) -> None:
        """Count a message we cannot hold; drop all until the outbox drains.

        Dropping one message and keeping a later, smaller one would leave a
        hole in the middle of the stream: once full, everything goes until
        Redis has taken the whole backlog.
        """
        self.lost += sum(1 for _ in iter_records(chunk))
        if not self._dropping:
            self._dropping = True
            log.error(
                "redis backplane: buffer full (%d bytes, WS_BACKPLANE_BUFFER);"
                " dropping ops until Redis has taken the backlog",
                self.buffer,
            )
        self._set_state(LinkState.DOWN)

    # -- the link ----------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve until the link fails, back off, and again; forever."""
        assert self._loop is not None
        attempt = 0
        while True:
            cause: BaseException | None = None
            try:
                rooms = await self._connect()
                self._link_up(attempt)
                attempt = 0
                await self._serve(rooms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any fault means: reconnect
                cause = exc
            finally:
                if self._link is not None:
                    await self._link.release()
            self._link_down(cause, attempt)
            delay = min(RETRY_CAP, RETRY_FIRST * 2**attempt) * random.uniform(0.5, 1)
            attempt += 1
            await asyncio.sleep(delay)  # the backoff itself

    async def _connect(self) -> list[str]:
        """Connect and subscribe; the rooms subscribed to."""
        assert self._link is not None
        if not self._link_chosen:
            await self._choose_link()
        rooms = list(self._rooms)
        await self._link.connect(
            [self._room_prefix + room for room in rooms], self._plain_channels()
        )
        return rooms

    # Hooks: what a sender-only backplane (sanic_ws_ext.emitter) changes.

    def _plain_channels(self) -> list[str]:
        """The plain channels to subscribe: ``:all`` and our own."""
        return [self._all, self._mine.decode()]

    def _listeners_expected(self) -> int:
        """How many subscribers of ``:all`` to wait for after an outage."""
        return len(self._expected)

    async def _choose_link(self) -> None:
        """At the first connection: one Redis, or the shards of a Redis Cluster."""
        assert isinstance(self._link, SingleLink)
        if await self._link.serves_cluster():
            await self._link.close()
            self._link = ClusterLink(
                self.url,
                room_prefix=self._room_prefix,
                # Plain channels go through the master owning this name's
                # slot: homes spread over the masters.
                home_key=self._mine.decode(),
                # Subscribed on every master so that each connection is
                # read; nothing is published to it.
                anchor=self._anchor,
                message=self._deliver,
                confirmed=self._confirmed,
                heard=self._subscriber_read,
            )
        self._link_chosen = True

    def _link_up(self, attempts: int) -> None:
        assert self._loop is not None and self._connected_once is not None
        now = self._loop.time()
        if self._down_since is not None and self._ever_up:
            self.reconnects += 1
            log.warning(
                "redis backplane: reconnected after %.1f s (%d attempt(s));"
                " %d buffered message(s) to send, %d op(s) lost",
                now - self._down_since,
                attempts,
                len(self._outbox),
                self.lost,
            )
        if self._ever_up:
            # Peers reconnect on their own schedule: give them time to be
            # heard before their silence counts (not at the first connect).
            self._hearing_since = now
        self._down_since = None
        self.generation += 1
        self._ever_up = True
        self._connected_once.set()
        self._set_state(LinkState.DOWN if self._dropping else LinkState.CONNECTED)

    def _link_down(self, cause: BaseException | None, attempt: int) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if self._down_since is None:
            self._down_since = now
            self._requeue_recent(now)
            log.warning(
                "redis backplane: %s %s (%s); retrying",
                "link lost to" if self._ever_up else "cannot connect to",
                _redact(self.url),
                _describe(cause),
            )
            if not self._recovering:
                # Who must be listening again before our buffer goes out.
                horizon = now - 3 * self.beat
                self._expected = {p for p, t in self._heard.items() if t >= horizon}
                self._recovering = True
                self._resubscribe_deadline = None
        elif attempt % 10 == 0:
            log.warning(
                "redis backplane: still reconnecting to %s (%d attempts, %s)",
                _redact(self.url),
                attempt,
                _describe(cause),
            )
        if self.state is LinkState.CONNECTED:
            self._set_state(
                LinkState.DOWN if self._dropping else LinkState.RECONNECTING
            )

    async def _serve(self, rooms: list[str]) -> None:
        """Read, send and watch until any of them fails (raises)."""
        assert self._loop is not None and self._link is not None
        link = self._link
        self._last_heard = self._loop.time()
        self._linked = True
        # Rooms wanted or dropped while connecting (their subscription
        # commands found no link): catch up now.
        self._subscribe(
            [r for r, st in self._rooms.items() if not st.subscribed.is_set()]
        )
        for room in set(rooms) - self._rooms.keys():
            self._command(link.unsubscribe(self._room_prefix + room))
        tasks = {
            asyncio.ensure_future(link.read()),
            asyncio.ensure_future(self._send()),
            asyncio.ensure_future(self._watch()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise ConnectionError("backplane link task ended")
        finally:
            self._linked = False
            for room_state in self._rooms.values():
                room_state.subscribed.clear()
            # Close the sockets first: a read blocked inside redis-py ends
            # with an error even where it would not end on cancel alone.
            await link.disconnect()
            for task in tasks:
                task.cancel()
            ended, stuck = await asyncio.wait(tasks, timeout=_IO_TIMEOUT)
            for task in ended:  # several may fail at once: collect them all
                if not task.cancelled():
                    task.exception()
            if stuck:
                log.error("redis backplane: %d link task(s) did not stop", len(stuck))

    def _subscriber_read(self) -> None:
        """The subscriber that carries ``:all`` read something."""
        assert self._loop is not None
        self._last_heard = self._loop.time()

    def _deliver(self, channel: bytes, data: bytes) -> None:
        try:
            self._receive(channel, data)
        except Exception:
            log.exception("redis backplane: a message could not be read")

    async def _watch(self) -> None:
        """Fail the link when the subscriber hears nothing, not even our beat."""
        assert self._loop is not None
        deaf_after = max(DEAF_BEATS * self.beat, 2.0)
        pruned = self._loop.time()
        while True:
            await asyncio.sleep(self.beat)  # a periodic check, not a sync point
            now = self._loop.time()
            if self._recovering:
                # Our beat waits behind the buffer while peers resubscribe:
                # silence now says nothing about the subscriber.
                self._last_heard = now
            silent = now - self._last_heard
            if silent > deaf_after:
                raise Deaf(f"nothing heard for {silent:.1f} s")
            assert self._link is not None
            await self._link.watch(deaf_after)  # each shard's connection
            if now - pruned > _PRUNE_EVERY:
                pruned = now
                self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget processes not heard for ``_FORGET_AFTER`` (long dead)."""
        gone = {p for p, t in self._heard.items() if now - t > _FORGET_AFTER}
        for process in gone:
            del self._heard[process]
            # A sequence restarting at 1 would look like a resend to a
            # receiver that still remembers us: forget only the dead's.
            self._seq.pop(self._direct + process, None)
        # Emitters come and go (one per cron run, say): forget the silent.
        senders = {p for p, t in self._senders.items() if now - t > _FORGET_AFTER}
        for sender in senders:
            del self._senders[sender]
        gone |= senders
        if gone:
            for key in [k for k in self._seen if k[1] in gone]:
                del self._seen[key]

    async def _send(self) -> None:
        assert self._wake is not None
        while True:
            if not self._outbox:
                if self._dropping:  # the backlog is through: hold ops again
                    self._dropping = False
                    log.warning(
                        "redis backplane: backlog sent; %d op(s) lost", self.lost
                    )
                    self._set_state(LinkState.CONNECTED)
                    if self._mark_holes():
                        continue
                if self._drained is not None:
                    self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._recovering:
                await self._await_subscribers()
                self._recovering = False
                self._resubscribe_deadline = None
            batch = list(itertools.islice(self._outbox, _BATCH))
            # On failure the batch stays queued and goes again after the
            # reconnect; receivers drop what they already got.
            assert self._link is not None
            await self._link.publish(batch)
            now = self._loop.time() if self._loop is not None else 0.0
            for _ in batch:
                channel, message = self._outbox.popleft()
                self._outbox_bytes -= len(message)
                self._recent.append((now, channel, message))
                self._recent_bytes += len(message)
            self._trim_recent(now)
            self.published += len(batch)

    def _trim_recent(self, now: float) -> None:
        recent = self._recent
        while recent and (
            now - recent[0][0] > _RESEND_WINDOW or self._recent_bytes > _RESEND_BYTES
        ):
            self._recent_bytes -= len(recent.popleft()[2])

    def _requeue_recent(self, now: float) -> None:
        """Put what Redis acknowledged just before a failure back in front."""
        self._trim_recent(now)
        for _, channel, message in reversed(self._recent):
            self._outbox.appendleft((channel, message))
            self._outbox_bytes += len(message)
        self._recent.clear()
        self._recent_bytes = 0

    async def _await_subscribers(self) -> None:
        """Wait (bounded) until the processes heard before the outage listen."""
        assert self._loop is not None
        want = self._listeners_expected()
        direct = {ch for ch, _ in self._outbox if ch.startswith(self._direct)}
        channels = [self._all, *direct]
        if self._resubscribe_deadline is None:
            self._resubscribe_deadline = self._loop.time() + RESUBSCRIBE_WAIT
        deadline = self._resubscribe_deadline
        assert self._link is not None
        while True:
            counts = await self._link.numsub(channels)
            if counts.get(self._all, 0) >= want and all(
                counts.get(ch, 0) for ch in direct
            ):
                # Counted is not reached: a restarted node's cluster bus may
                # not forward plain messages yet (a cluster only).
                if await self._link.reaches(deadline):
                    return
                log.warning(
                    "redis backplane: our home node's cluster bus forwarded"
                    " no probe in %.0f s; sending the buffer anyway",
                    RESUBSCRIBE_WAIT,
                )
                return
            if self._loop.time() > deadline:
                log.warning(
                    "redis backplane: %d of %d processes resubscribed after %.0f s;"
                    " sending the buffer anyway",
                    counts.get(self._all, 0),
                    want,
                    RESUBSCRIBE_WAIT,
                )
                return
            await asyncio.sleep(0.05)  # polling Redis: there is no event to await

    # -- receiving ---------------------------------------------------------------

    def _receive(self, channel: bytes, data: bytes) -> None:
        origin, life, seq, chunk = unpack_message(data)
        assert self._loop is not None
        # A sender-only origin ("~..."): the Redis sequencer of history rooms,
        # or an emitter. It never subscribes, so it is not awaited after an
        # outage, and has no state to re-sync.
        sender = origin.startswith(SENDER_ONLY)
        if sender:
            self._senders[origin] = self._loop.time()
        else:
            self._heard[origin] = self._loop.time()
        if origin.startswith(self._node_prefix):
            return  # ours, or this machine's: already delivered over the relay
        if channel.startswith(self._room_prefix_b):
            room = channel[len(self._room_prefix_b) :].decode()
            if room not in self._rooms:
                return  # unsubscribing: nobody here is in that room any more
        key = (channel, origin)
        last = self._seen.get(key)
        if last is not None and last[0] == life:
            if seq <= last[1]:
                self.duplicates += 1
                return
            if seq > last[1] + 1:
                gap = seq - last[1] - 1
                self.missed += gap
                log.warning(
                    "redis backplane: missed %d message(s) from %s%s",
                    gap,
                    origin,
                    "" if sender else "; asking it to re-sync",
                )
                if not sender:  # nothing to re-sync (history: clients see offsets)
                    self._events.missed(origin)
        self._seen[key] = (life, seq)
        self.received += 1
        assert self._apply is not None
        apply_records(self._apply, chunk, log, origin)

    def _set_state(self, state: LinkState) -> None:
        if state is self.state:
            return
        self.state = state
        log.info("redis backplane: %s", state.value)
        try:
            self._events.link(state)
        except Exception:
            log.exception("redis backplane: a state hook failed")


def _describe(exc: BaseException | None) -> str:
    """An error with its message: redis-py 8's repr leaves the message out."""
    return "no error" if exc is None else f"{type(exc).__name__}: {exc}"


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
