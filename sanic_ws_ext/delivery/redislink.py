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

Channels on a cluster:

- room channels ``<prefix>:room:<room>`` are *sharded* (``SPUBLISH``,
  ``SSUBSCRIBE``): each lives on the shard that owns its hash slot, and only
  that shard carries its messages, so room capacity grows with shards;
- ``<prefix>:all`` and the per-process channels ``<prefix>:to:<process>``
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
master is seen at once as a closed socket) and pings each every beat; a
connection silent for the deafness bound, an error, a ``MOVED`` or
``CLUSTERDOWN`` reply, or a ``sunsubscribe`` we did not ask for (Redis sends
one when a shard channel's slot moves away) fails the whole link. The next
connection reads the slot map again (``CLUSTER SLOTS`` from the URL's node or
any node known from the last map) and subscribes each channel on its owner.
So one shard's failure is an outage of the whole link for that time, exactly
as a single Redis's restart: outgoing messages wait in the buffer and every
receiver's sequence numbers tell a resend from a gap.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

__all__ = ["REDIS_SLOTS", "ClusterLink", "Deaf", "SingleLink", "Topology", "client"]

log = logging.getLogger("sanic.root.sanic_ws_ext.backplane")

#: Hash slots of a Redis Cluster.
REDIS_SLOTS = 16384
#: Seconds for connecting and for a command's round trip.
IO_TIMEOUT = 5.0

Node = tuple[str, int]  # host, port
OnMessage = Callable[[bytes, bytes], None]
OnConfirmed = Callable[[bytes], None]
OnHeard = Callable[[], None]


class Deaf(Exception):
    """A subscriber connection heard nothing for too long."""


class Moved(Exception):
    """The cluster's slot map changed under a subscription or a publish."""


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
        socket_keepalive=True,
        health_check_interval=0,
    )
    return Redis(connection_pool=ConnectionPool(**kwargs))


async def _confirm(
    pubsub: Any,
    want: int,
    message: OnMessage,
    confirmed: OnConfirmed,
    heard: OnHeard | None = None,
) -> None:
    """Read until ``want`` subscriptions are confirmed (each reply bounded).

    Messages on channels confirmed first may come in between: delivered, not
    dropped (a drop would be a gap for the receiver to heal).
    """
    got = 0
    while got < want:
        reply = await asyncio.wait_for(pubsub.get_message(timeout=None), IO_TIMEOUT)
        if reply is None:
            continue
        if heard is not None:
            heard()
        if reply["type"] in ("subscribe", "ssubscribe"):
            got += 1
            confirmed(reply["channel"])
        elif reply["type"] in ("message", "smessage"):
            message(reply["channel"], reply["data"])


def _counts(reply: Iterable[tuple[Any, Any]]) -> dict[str, int]:
    return {(ch.decode() if isinstance(ch, bytes) else ch): int(n) for ch, n in reply}


class SingleLink:
    """One Redis server: one publishing client, one subscriber connection."""

    def __init__(
        self,
        url: str,
        *,
        message: OnMessage,
        confirmed: OnConfirmed,
        heard: OnHeard,
    ) -> None:
        self._message = message
        self._confirmed = confirmed
        self._heard = heard
        self._pub = client(url, socket_timeout=IO_TIMEOUT, max_connections=2)
        # No read timeout on the subscriber: silence is not a fault here;
        # deafness is caught by not hearing our own beat.
        self._sub = client(url, socket_timeout=None, max_connections=1)
        self._pubsub: Any = None
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
        pubsub = self._sub.pubsub()
        try:
            await asyncio.wait_for(pubsub.subscribe(*plain, *rooms), IO_TIMEOUT)
            # Subscribed once every confirmation is back.
            await _confirm(
                pubsub, len(plain) + len(rooms), self._message, self._confirmed
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        self._pubsub = pubsub

    async def read(self) -> None:
        pubsub = self._pubsub
        while True:
            message = await pubsub.get_message(timeout=None)
            self._heard()
            if message is None:
                continue
            if message["type"] == "message":
                self._message(message["channel"], message["data"])
            elif message["type"] == "subscribe":
                self._confirmed(message["channel"])

    async def subscribe(self, channels: Sequence[str]) -> None:
        await self._pubsub.subscribe(*channels)

    async def unsubscribe(self, channel: str) -> None:
        await self._pubsub.unsubscribe(channel)

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> None:
        pipe = self._pub.pipeline(transaction=False)
        for channel, message in batch:
            pipe.publish(channel, message)
        await pipe.execute()

    async def numsub(self, channels: Sequence[str]) -> dict[str, int]:
        return _counts(await self._pub.pubsub_numsub(*channels))

    async def watch(self, deaf_after: float) -> None:
        """Nothing beyond hearing our own beat (the backplane checks that)."""

    async def disconnect(self) -> None:
        """Close the subscriber's socket: a blocked read then ends with an error."""
        if self._pubsub is not None and self._pubsub.connection is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.connection.disconnect(nowait=True)

    async def release(self) -> None:
        """Drop the subscriber after a failure (the next connect makes another)."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        await self.release()
        for redis in (self._pub, self._sub):
            with contextlib.suppress(Exception):
                await redis.aclose(close_connection_pool=True)


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
        from redis.crc import key_slot

        slot = key_slot(channel.encode())
        start, end, master = self._ranges[bisect.bisect_right(self._starts, slot) - 1]
        assert start <= slot <= end
        return master


def _by_slot(channels: Iterable[str]) -> list[list[str]]:
    """Channels grouped by hash slot: one SSUBSCRIBE may not span slots."""
    from redis.crc import key_slot

    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel.encode()), []).append(channel)
    return list(groups.values())


class ClusterLink:
    """A Redis Cluster: sharded room channels, plain ones through a home node."""

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
        self._room_prefix = room_prefix
        self._home_key = home_key
        self._anchor = anchor
        self._message = message
        self._confirmed = confirmed
        self._heard = heard
        self.topology: Topology | None = None
        self._home: Node = self._seed
        self._pubs: dict[Node, Any] = {}  # publishing clients, per node
        self._subs: dict[Node, Any] = {}  # subscriber clients, per master
        self._pubsubs: dict[Node, Any] = {}  # their subscriptions, while linked
        self._heard_at: dict[Node, float] = {}
        # Shard channels we unsubscribe from, until Redis confirms: any other
        # sunsubscribe is Redis telling us the slot moved.
        self._leaving: set[bytes] = set()
        self._broken: asyncio.Future[None] | None = None

    @property
    def shards(self) -> int:
        return len(self.topology.masters) if self.topology is not None else 0

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
        self._leaving.clear()
        now = loop.time()
        placed: dict[Node, list[str]] = {node: [] for node in topology.masters}
        for channel in rooms:
            placed[topology.owner(channel)].append(channel)
        for node in topology.masters:
            sub = self._client(self._subs, node, socket_timeout=None, max_connections=1)
            self._pubsubs[node] = sub.pubsub()
            self._heard_at[node] = now
        try:

            async def first(node: Node) -> None:
                # Every master gets a plain channel nobody publishes to, so
                # its connection is subscribed (read, pinged) even without rooms.
                pubsub = self._pubsubs[node]
                await asyncio.wait_for(pubsub.subscribe(self._anchor), IO_TIMEOUT)
                for group in _by_slot(placed[node]):
                    await asyncio.wait_for(pubsub.ssubscribe(*group), IO_TIMEOUT)
                await _confirm(
                    pubsub, 1 + len(placed[node]), self._message, self._confirmed
                )

            await self._together([first(node) for node in topology.masters])
            # :all and our own channel last: once other processes count us
            # on :all (the resubscribe wait), our rooms are heard too.
            home = self._pubsubs[self._home]
            await asyncio.wait_for(home.subscribe(*plain), IO_TIMEOUT)
            await _confirm(
                home, len(plain), self._message, self._confirmed, self._heard
            )
        except BaseException:
            await self.release()
            raise

    async def _together(self, steps: Sequence[Awaitable[None]]) -> None:
        """Run ``steps`` at once; on the first failure end the others, raise it."""
        tasks = [asyncio.ensure_future(step) for step in steps]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            await self.disconnect()  # a read blocked in redis-py ends with it
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=IO_TIMEOUT)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()
            raise

    async def read(self) -> None:
        readers = [
            asyncio.ensure_future(self._read(node, pubsub))
            for node, pubsub in self._pubsubs.items()
        ]
        assert self._broken is not None
        try:
            done, _ = await asyncio.wait(
                [*readers, self._broken], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()
            raise ConnectionError("a shard's reader ended")
        finally:
            await self.disconnect()
            for task in readers:
                task.cancel()
            ended, _ = await asyncio.wait(readers, timeout=IO_TIMEOUT)
            for task in ended:
                if not task.cancelled():
                    task.exception()

    async def _read(self, node: Node, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        home = node == self._home
        while True:
            message = await pubsub.get_message(timeout=None)
            self._heard_at[node] = loop.time()
            if message is None:
                continue
            kind = message["type"]
            if kind in ("message", "smessage"):
                if home:
                    self._heard()
                self._message(message["channel"], message["data"])
            elif kind in ("subscribe", "ssubscribe"):
                if home:
                    self._heard()
                self._confirmed(message["channel"])
            elif kind == "sunsubscribe":
                channel = message["channel"]
                if channel not in self._leaving:
                    raise Moved(f"{node[0]}:{node[1]} dropped {channel!r}")
                self._leaving.discard(channel)

    def _fail(self, exc: BaseException) -> None:
        if self._broken is not None and not self._broken.done():
            self._broken.set_exception(exc)

    async def subscribe(self, channels: Sequence[str]) -> None:
        try:
            assert self.topology is not None
            for group in _by_slot(channels):
                node = self.topology.owner(group[0])
                for channel in group:
                    self._leaving.discard(channel.encode())
                await self._pubsubs[node].ssubscribe(*group)
        except Exception as exc:
            self._fail(exc)  # the link reconnects and subscribes them all
            raise

    async def unsubscribe(self, channel: str) -> None:
        try:
            assert self.topology is not None
            node = self.topology.owner(channel)
            self._leaving.add(channel.encode())
            await self._pubsubs[node].sunsubscribe(channel)
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
        assert self.topology is not None
        pipes: dict[Node, Any] = {}
        for channel, message in batch:
            sharded = channel.startswith(self._room_prefix)
            node = self.topology.owner(channel) if sharded else self._home
            pipe = pipes.get(node)
            if pipe is None:
                pipe = pipes[node] = self._pub(node).pipeline(transaction=False)
            if sharded:
                pipe.spublish(channel, message)
            else:
                pipe.publish(channel, message)
        results = await asyncio.gather(
            *(pipe.execute() for pipe in pipes.values()), return_exceptions=True
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

    async def watch(self, deaf_after: float) -> None:
        """Fail when a master's connection went silent; ping each for next time."""
        now = asyncio.get_running_loop().time()
        for node, pubsub in self._pubsubs.items():
            silent = now - self._heard_at.get(node, now)
            if silent > deaf_after:
                raise Deaf(f"{node[0]}:{node[1]}: nothing heard for {silent:.1f} s")
            await asyncio.wait_for(pubsub.ping(), IO_TIMEOUT)

    async def disconnect(self) -> None:
        for pubsub in self._pubsubs.values():
            if pubsub.connection is not None:
                with contextlib.suppress(Exception):
                    await pubsub.connection.disconnect(nowait=True)

    async def release(self) -> None:
        pubsubs, self._pubsubs = self._pubsubs, {}
        for pubsub in pubsubs.values():
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        broken, self._broken = self._broken, None
        if broken is not None:
            if broken.done() and not broken.cancelled():
                broken.exception()  # seen: the reader raised it already
            else:
                broken.cancel()

    async def close(self) -> None:
        await self.release()
        await self._forget(set())
