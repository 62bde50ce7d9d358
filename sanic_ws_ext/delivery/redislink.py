"""The backplane's connections to Redis: one server, or a Redis Cluster.

:class:`~sanic_ws_ext.delivery.backplane.RedisBackplane` decides what goes
where and when (numbering, the outage buffer, resends, the resubscribe wait);
a link only carries it: it connects and subscribes, reads, publishes, counts
subscribers, and raises on any fault (the backplane then tears it down and
connects again, with backoff). Nothing here retries on its own.

Which link is used is decided at the backplane's first connection: a
``redis://`` or ``rediss://`` URL naming a node of a Redis Cluster (``INFO
cluster`` says ``cluster_enabled:1``) of Redis 7 or later gets a
:class:`ClusterLink`; anything else a :class:`SingleLink`, which is the
one-server link as it always was.

Messages travel on connections of :mod:`~sanic_ws_ext.delivery.resp` (a
subscriber and a publisher per server, redis-py's twins for ``rediss://``);
redis-py's clients send the rest (``PING``, ``INFO``, ``CLUSTER SLOTS``,
``PUBSUB NUMSUB``).

Channels on a cluster:

- room channels ``<prefix>:room:<room>`` are *sharded* (``SPUBLISH``,
  ``SSUBSCRIBE``): each lives on the shard that owns its hash slot, and only
  that shard carries its messages, so room capacity grows with shards;
- ``<prefix>:all`` and the per-process channels ``<prefix>:to:<process>``
  and ``<prefix>:link:<process>`` (the anchor)
  stay *plain* (``PUBLISH``, ``SUBSCRIBE``), which Redis Cluster forwards to
  every node. A process publishes all its plain messages to one node, its
  *home* (the master owning the slot of its own channel's name, so homes
  spread over the masters), and subscribes to both channels there. Plain
  messages from one sender thus travel one path (its home, then the cluster
  bus to each receiver's home) and keep their order across the two channels:
  a send to a connection, a broadcast and another send arrive in that order,
  and so do a state transfer and the presence batches after it. Two sharded
  channels on two shards could not keep it. The price is that a message to
  one process crosses every node's cluster bus (see the cost model in
  docs/architecture.md).

Faults on a cluster: the link holds a subscriber connection to every master
(each subscribed at least to a plain channel nobody publishes to, so a dead
master is seen at once as a closed socket; a sender only, an emitter, holds
publishers only) and pings each every beat; a
connection silent for the deafness bound, an error, a ``MOVED`` or
``CLUSTERDOWN`` reply, or a ``sunsubscribe`` we did not ask for (Redis sends
one when a shard channel's slot moves away) fails the whole link. The next
connection reads the slot map again (``CLUSTER SLOTS`` from the URL's node or
any node known from the last map) and subscribes each channel on its owner.
Before the backplane sends what it buffered, :meth:`ClusterLink.reaches`
checks that the home's cluster bus forwards to every master again (a probe
on the process's own anchor channel). So one shard's failure is an outage of
the whole link for that time, exactly as a single Redis's restart: outgoing
messages wait in the buffer and every receiver's sequence numbers tell a
resend from a gap.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from .resp import (
    IO_TIMEOUT,
    Hooks,
    Moved,
    OnConfirmed,
    OnHeard,
    OnMessage,
    Publisher,
    PyPublisher,
    PySubscriber,
    Subscriber,
    raw_ok,
)

__all__ = [
    "IO_TIMEOUT",
    "REDIS_SLOTS",
    "ClusterLink",
    "Deaf",
    "Moved",
    "SingleLink",
    "Topology",
    "client",
]

log = logging.getLogger("sanic.root.sanic_ws_ext.backplane")

#: Hash slots of a Redis Cluster.
REDIS_SLOTS = 16384

Node = tuple[str, int]  # host, port
AnySubscriber = Subscriber | PySubscriber
AnyPublisher = Publisher | PyPublisher


class Deaf(Exception):
    """A subscriber connection heard nothing for too long."""


def client(url: str, **options: Any) -> Any:
    """A redis-py asyncio client whose faults we see, not retried silently."""
    from redis.asyncio import ConnectionPool, Redis
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    kwargs: dict[str, Any] = dict(parse_url(url))
    # Ours win over the URL's query string: these are what make faults visible.
    kwargs.update(
        options,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=IO_TIMEOUT,
        health_check_interval=0,
    )
    if "path" not in kwargs:  # TCP (a Unix socket's connection takes no keepalive)
        kwargs["socket_keepalive"] = True
    return Redis(connection_pool=ConnectionPool(**kwargs))


def _counts(reply: Iterable[tuple[Any, Any]]) -> dict[str, int]:
    return {(ch.decode() if isinstance(ch, bytes) else ch): int(n) for ch, n in reply}


def _end(connections: Iterable[AnySubscriber | AnyPublisher]) -> None:
    """Fail each connection: whoever waits on one raises, and the link with it."""
    for connection in connections:
        connection.fail(ConnectionError("the link is disconnecting"))


class SingleLink:
    """One Redis server: one publishing connection, one subscriber connection.

    Both are :mod:`~sanic_ws_ext.delivery.resp`'s own (redis-py's for a
    ``rediss://`` URL); a redis-py client does the rest (``PING``, ``INFO``,
    ``PUBSUB NUMSUB``).
    """

    def __init__(
        self,
        url: str,
        *,
        message: OnMessage,
        confirmed: OnConfirmed,
        heard: OnHeard,
    ) -> None:
        self.url = url
        self._hooks = Hooks(("", 0), message, confirmed, heard)
        self._pub = client(url, socket_timeout=IO_TIMEOUT, max_connections=2)
        self._raw = raw_ok(url)
        # TLS: redis-py subscribes too. No read timeout on a subscriber:
        # silence is not a fault here; deafness is caught by not hearing our
        # own beat.
        self._sub = (
            None if self._raw else client(url, socket_timeout=None, max_connections=1)
        )
        self._subscriber: AnySubscriber | None = None
        self._publisher: AnyPublisher | None = None
        self.scheme = url.partition("://")[0]

    @property
    def shards(self) -> int:
        return 1

    async def serves_cluster(self) -> bool:
        """Whether the URL names a node of a Redis Cluster with sharded pub/sub."""
        from redis.exceptions import ResponseError

        await asyncio.wait_for(self._pub.ping(), IO_TIMEOUT)
        if self.scheme not in ("redis", "rediss"):
            return False  # a Unix socket: a cluster's nodes are found over TCP
        try:
            info = await asyncio.wait_for(self._pub.info("cluster"), IO_TIMEOUT)
            if not int(info.get("cluster_enabled", 0)):
                return False
            server = await asyncio.wait_for(self._pub.info("server"), IO_TIMEOUT)
        except ResponseError:  # INFO refused (a proxy, say): one server to us
            return False
        version = str(server.get("redis_version", "0"))
        if int(version.split(".")[0]) < 7:
            log.warning(
                "redis backplane: Redis %s has no sharded pub/sub (Redis 7+):"
                " using plain pub/sub through this one node of the cluster",
                version,
            )
            return False
        return True

    async def connect(self, rooms: Sequence[str], plain: Sequence[str]) -> None:
        await asyncio.wait_for(self._pub.ping(), IO_TIMEOUT)
        try:
            if plain or rooms:  # else a sender only (an emitter): no subscriber
                if self._raw:
                    sub: AnySubscriber = await Subscriber.open(
                        self.url, None, self._hooks
                    )
                else:
                    sub = await PySubscriber.open(self._sub, self._hooks)
                self._subscriber = sub
                sub.send("SUBSCRIBE", *plain, *rooms)
                # Subscribed once every confirmation is back.
                await sub.until_confirmed(len(plain) + len(rooms))
            if self._raw:
                self._publisher = await Publisher.open(self.url, None)
            else:
                self._publisher = await PyPublisher.open(self._pub)
        except BaseException:
            await self.release()
            raise

    async def read(self) -> None:
        if self._subscriber is None:  # a sender only: its publisher may fail
            assert self._publisher is not None
            await self._publisher.wait_failed()
            raise ConnectionError("the publisher ended")
        await self._subscriber.wait_failed()  # raises what failed it
        raise ConnectionError("the subscriber ended")

    async def subscribe(self, channels: Sequence[str]) -> None:
        assert self._subscriber is not None
        self._subscriber.send("SUBSCRIBE", *channels)

    async def unsubscribe(self, channel: str) -> None:
        assert self._subscriber is not None
        self._subscriber.send("UNSUBSCRIBE", channel)

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> None:
        assert self._publisher is not None
        await self._publisher.publish(batch)

    async def numsub(self, channels: Sequence[str]) -> dict[str, int]:
        return _counts(await self._pub.pubsub_numsub(*channels))

    async def reaches(self, deadline: float) -> bool:
        """One server: whoever it counts hears what we publish."""
        return True

    async def watch(self, deaf_after: float) -> None:
        """Nothing beyond hearing our own beat (the backplane checks that)."""

    async def disconnect(self) -> None:
        """Fail the connections: a read or publish waiting on them raises."""
        _end(c for c in (self._subscriber, self._publisher) if c is not None)

    async def release(self) -> None:
        """Drop the connections after a failure (the next connect makes more)."""
        sub, self._subscriber = self._subscriber, None
        pub, self._publisher = self._publisher, None
        for connection in (sub, pub):
            if connection is not None:
                connection.close()

    async def close(self) -> None:
        await self.release()
        for redis in (self._pub, self._sub):
            if redis is not None:
                with contextlib.suppress(Exception):
                    await redis.aclose(close_connection_pool=True)


_OWNERS = 65536  # channels whose owner a Topology remembers
_PROBE_EVERY = 0.1  # seconds before a probe of the cluster bus is sent again


class Topology:
    """A Redis Cluster's slot map: which master owns each hash slot."""

    def __init__(self, ranges: Sequence[tuple[int, int, Node, Sequence[Node]]]) -> None:
        ordered = sorted(ranges)
        self._starts = [start for start, _, _, _ in ordered]
        self._ranges = [(start, end, master) for start, end, master, _ in ordered]
        self.masters = sorted({master for _, _, master, _ in ordered})
        self.replicas = sorted(
            {r for _, _, _, replicas in ordered for r in replicas} - set(self.masters)
        )
        self._owners: dict[str, Node] = {}  # a cache of owner()
        covered = sum(end - start + 1 for start, end, _ in self._ranges)
        if covered != REDIS_SLOTS:
            raise Moved(f"the cluster serves {covered} of {REDIS_SLOTS} slots")

    @classmethod
    def parse(cls, reply: Sequence[Any], asked: Node) -> Topology:
        """From a ``CLUSTER SLOTS`` reply given by node ``asked``."""

        def node(entry: Sequence[Any]) -> Node:
            host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
            # "" or "?": the node does not know its own address; it is the
            # one we asked.
            return (host if host not in ("", "?") else asked[0], int(entry[1]))

        return cls(
            [
                (int(e[0]), int(e[1]), node(e[2]), [node(r) for r in e[3:]])
                for e in reply
            ]
        )

    def owner(self, channel: str) -> Node:
        """The master whose shard carries ``channel``."""
        master = self._owners.get(channel)
        if master is not None:
            return master
        from redis.crc import key_slot

        slot = key_slot(channel.encode())
        start, end, master = self._ranges[bisect.bisect_right(self._starts, slot) - 1]
        assert start <= slot <= end
        if len(self._owners) >= _OWNERS:
            self._owners.clear()
        self._owners[channel] = master
        return master


def _by_slot(channels: Iterable[str]) -> list[list[str]]:
    """Channels grouped by hash slot: one SSUBSCRIBE may not span slots."""
    from redis.crc import key_slot

    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel.encode()), []).append(channel)
    return list(groups.values())


class ClusterLink:
    """A Redis Cluster: sharded room channels, plain ones through a home node.

    Per master, a subscriber and a publishing connection of
    :mod:`~sanic_ws_ext.delivery.resp` (redis-py's for ``rediss://``); a
    redis-py client per node for the rest (``CLUSTER SLOTS``, ``PUBSUB
    NUMSUB``).
    """

    def __init__(
        self,
        url: str,
        *,
        room_prefix: str,
        home_key: str,
        anchor: str,
        message: OnMessage,
        confirmed: OnConfirmed,
        heard: OnHeard,
    ) -> None:
        from redis.asyncio.connection import parse_url

        self.url = url
        seed = parse_url(url)
        self._seed: Node = (
            str(seed.get("host", "localhost")),
            int(seed.get("port", 6379)),
        )
        self._raw = raw_ok(url)
        self._room_prefix = room_prefix
        self._home_key = home_key
        self._anchor = anchor
        self._message = message
        self._confirmed = confirmed
        self._heard = heard
        self.topology: Topology | None = None
        self._home: Node = self._seed
        self._pubs: dict[Node, Any] = {}  # redis-py clients, per node
        self._subs: dict[Node, Any] = {}  # redis-py subscriber clients (TLS)
        # The connections, per master, while linked.
        self._subscribers: dict[Node, AnySubscriber] = {}
        self._publishers: dict[Node, AnyPublisher] = {}
        self._broken: asyncio.Future[None] | None = None
        # The probe in flight (see reaches): its token, the masters that have
        # not heard it yet, and an event set when none is left.
        self._probe: tuple[bytes, set[Node], asyncio.Event] | None = None
        self._probes = 0

    @property
    def shards(self) -> int:
        return len(self.topology.masters) if self.topology is not None else 0

    @property
    def home(self) -> Node:
        """The master our plain channels go through."""
        return self._home

    def _client(self, pool: dict[Node, Any], node: Node, **options: Any) -> Any:
        redis = pool.get(node)
        if redis is None:
            redis = pool[node] = client(self.url, host=node[0], port=node[1], **options)
        return redis

    def _pub(self, node: Node) -> Any:
        return self._client(
            self._pubs, node, socket_timeout=IO_TIMEOUT, max_connections=2
        )

    async def _discover(self) -> Topology:
        """The slot map, from the URL's node or any node we knew."""
        known = self.topology
        candidates = [self._seed]
        if known is not None:
            candidates += [n for n in known.masters + known.replicas if n != self._seed]
        failure: BaseException = ConnectionError("no cluster node to ask")
        for node in candidates:
            try:
                reply = await asyncio.wait_for(
                    self._pub(node).execute_command("CLUSTER SLOTS"), IO_TIMEOUT
                )
                return Topology.parse(reply, node)
            except Exception as exc:  # unreachable, or not serving: the next one
                failure = exc
        raise failure

    async def _forget(self, keep: set[Node]) -> None:
        """Close clients of nodes no longer in the map."""
        for pool in (self._pubs, self._subs):
            for node in [n for n in pool if n not in keep]:
                with contextlib.suppress(Exception):
                    await pool.pop(node).aclose(close_connection_pool=True)

    async def _open(self, node: Node, subscriber: bool) -> None:
        """The subscriber (unless a sender only) and the publisher on ``node``."""
        if subscriber:
            await self._open_subscriber(node)
        if self._raw:
            pub: AnyPublisher = await Publisher.open(self.url, node, self._room_prefix)
        else:
            pub = await PyPublisher.open(self._pub(node), self._room_prefix)
        self._publishers[node] = pub

    async def _open_subscriber(self, node: Node) -> None:
        anchor, forward = self._anchor.encode(), self._message

        def message(channel: bytes, data: bytes) -> None:
            if channel == anchor:
                self._probe_heard(node, data)
            else:
                forward(channel, data)

        hooks = Hooks(
            node,
            message,
            self._confirmed,
            # The backplane's deafness watch hears the home's traffic (its
            # beat comes on :all); every connection's own is watched here.
            self._heard if node == self._home else None,
        )
        if self._raw:
            sub: AnySubscriber = await Subscriber.open(self.url, node, hooks)
        else:
            sub = await PySubscriber.open(
                self._client(self._subs, node, socket_timeout=None, max_connections=1),
                hooks,
            )
        self._subscribers[node] = sub

    async def connect(self, rooms: Sequence[str], plain: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        # After a fault, every connection is new: a pooled one to a node that
        # restarted would fail its next command and make a second outage.
        for redis in self._pubs.values():
            with contextlib.suppress(Exception):
                await redis.connection_pool.disconnect()
        topology = await self._discover()
        self.topology = topology
        await self._forget({*topology.masters, *topology.replicas, self._seed})
        self._home = topology.owner(self._home_key)
        self._broken = loop.create_future()
        placed: dict[Node, list[str]] = {node: [] for node in topology.masters}
        for channel in rooms:
            placed[topology.owner(channel)].append(channel)
        try:
            sender = not plain and not rooms  # an emitter: publishers only

            async def first(node: Node) -> None:
                await self._open(node, not sender)
                if sender:
                    return
                # Every master gets a plain channel nobody publishes to, so
                # its connection is subscribed (read, pinged) even without rooms.
                sub = self._subscribers[node]
                sub.send("SUBSCRIBE", self._anchor)
                for group in _by_slot(placed[node]):
                    sub.send("SSUBSCRIBE", *group)
                await sub.until_confirmed(1 + len(placed[node]))

            await self._together([first(node) for node in topology.masters])
            # :all and our own channel last: once other processes count us
            # on :all (the resubscribe wait), our rooms are heard too.
            if plain:  # none for a sender only (an emitter)
                home = self._subscribers[self._home]
                confirmed = home.confirms
                home.send("SUBSCRIBE", *plain)
                await home.until_confirmed(confirmed + len(plain))
        except BaseException:
            await self.release()
            raise

    async def _together(self, steps: Sequence[Awaitable[None]]) -> None:
        """Run ``steps`` at once; on the first failure end the others, raise it."""
        tasks = [asyncio.ensure_future(step) for step in steps]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            await self.disconnect()  # a wait on a connection ends with it
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=IO_TIMEOUT)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()
            raise

    async def read(self) -> None:
        """Until a master's subscriber fails (or a command did): raise that."""
        assert self._broken is not None
        waits = [sub.failed for sub in self._subscribers.values()]
        # A sender only has no subscriber: its own publishers' failures.
        waits += [
            pub.failed
            for pub in self._publishers.values()
            if isinstance(pub, Publisher)
        ]
        waits.append(self._broken)
        try:
            # asyncio.wait never cancels what it waits on.
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for done in waits:
                if done.done():
                    done.result()
            raise ConnectionError("a shard's reader ended")
        finally:
            await self.disconnect()

    def _fail(self, exc: BaseException) -> None:
        if self._broken is not None and not self._broken.done():
            self._broken.set_exception(exc)

    async def subscribe(self, channels: Sequence[str]) -> None:
        try:
            assert self.topology is not None
            for group in _by_slot(channels):
                sub = self._subscribers[self.topology.owner(group[0])]
                for channel in group:
                    sub.leaving.discard(channel.encode())
                sub.send("SSUBSCRIBE", *group)
        except Exception as exc:
            self._fail(exc)  # the link reconnects and subscribes them all
            raise

    async def unsubscribe(self, channel: str) -> None:
        try:
            assert self.topology is not None
            sub = self._subscribers[self.topology.owner(channel)]
            # Until Redis confirms, a sunsubscribe for it is ours, not a move.
            sub.leaving.add(channel.encode())
            sub.send("SUNSUBSCRIBE", channel)
        except Exception as exc:
            self._fail(exc)
            raise

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """Room messages to their shards, the rest to our home; all at once.

        Each channel lives on one node and batches go one after another, so
        each channel keeps its order; a failure anywhere fails the batch,
        which is sent again whole after the reconnect (receivers drop what
        they already had).
        """
        topology = self.topology
        assert topology is not None
        prefix, home = self._room_prefix, self._home
        owner = topology.owner
        parts: dict[Node, list[tuple[str, bytes]]] = {}
        for item in batch:
            channel = item[0]
            node = owner(channel) if channel.startswith(prefix) else home
            part = parts.get(node)
            if part is None:
                parts[node] = [item]
            else:
                part.append(item)
        publishers = self._publishers
        if len(parts) == 1:
            ((node, part),) = parts.items()
            await publishers[node].publish(part)
            return
        results = await asyncio.gather(
            *(publishers[node].publish(part) for node, part in parts.items()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def numsub(self, channels: Sequence[str]) -> dict[str, int]:
        """Plain subscribers, summed over the nodes (each counts only its own).

        A process subscribes on a master; one that did not notice a failover
        may still be subscribed on what is now a replica, so replicas count
        too, and an unreachable replica counts nothing.
        """
        assert self.topology is not None
        total: dict[str, int] = dict.fromkeys(channels, 0)

        async def count(node: Node, replica: bool) -> None:
            try:
                reply = await asyncio.wait_for(
                    self._pub(node).pubsub_numsub(*channels), IO_TIMEOUT
                )
            except Exception:
                if replica:
                    return
                raise
            for channel, n in _counts(reply).items():
                total[channel] = total.get(channel, 0) + n

        await asyncio.gather(
            *(count(n, False) for n in self.topology.masters),
            *(count(n, True) for n in self.topology.replicas),
        )
        return total

    async def reaches(self, deadline: float) -> bool:
        """Until a probe published through our home is heard on every master.

        Plain channels cross the cluster bus, and a node that just restarted
        forwards nothing to a node its bus has not reconnected to yet (Redis
        drops the message for that node): counting subscribers is not enough
        before our buffer goes out. The probe goes to our own anchor channel,
        which our subscriber on every master listens to, and is sent again
        every ``_PROBE_EVERY`` until all heard one or ``deadline`` (loop time)
        passes. False then.
        """
        assert self.topology is not None
        if not self._subscribers:
            return True  # a sender only (an emitter) cannot hear a probe
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._probes += 1
                token = b"probe:%d" % self._probes
                missing = set(self.topology.masters)
                done = asyncio.Event()
                self._probe = (token, missing, done)
                await self._publishers[self._home].publish([(self._anchor, token)])
                wait = min(_PROBE_EVERY, deadline - loop.time())
                if wait <= 0:
                    return False
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(done.wait(), wait)
                if not missing:
                    return True
        finally:
            self._probe = None

    def _probe_heard(self, node: Node, token: bytes) -> None:
        probe = self._probe
        if probe is None or token != probe[0]:
            return  # an older probe's late echo
        missing = probe[1]
        missing.discard(node)
        if not missing:
            probe[2].set()

    async def watch(self, deaf_after: float) -> None:
        """Fail when a master's connection went silent; ping each for next time."""
        now = asyncio.get_running_loop().time()
        for node, sub in self._subscribers.items():
            silent = now - sub.heard_at
            if silent > deaf_after:
                raise Deaf(f"{node[0]}:{node[1]}: nothing heard for {silent:.1f} s")
            sub.send("PING")

    async def disconnect(self) -> None:
        _end([*self._subscribers.values(), *self._publishers.values()])

    async def release(self) -> None:
        subscribers, self._subscribers = self._subscribers, {}
        publishers, self._publishers = self._publishers, {}
        for connection in [*subscribers.values(), *publishers.values()]:
            connection.close()
        broken, self._broken = self._broken, None
        if broken is not None:
            if broken.done() and not broken.cancelled():
                broken.exception()  # seen: the reader raised it already
            else:
                broken.cancel()

    async def close(self) -> None:
        await self.release()
        await self._forget(set())
