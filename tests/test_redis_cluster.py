"""The Redis backplane on a Redis Cluster of its own (three masters).

Two nodes served in this process (as in tests/test_backplane.py) and two real
`sanic --workers 2` processes (as in tests/test_backplane_cluster.py) meet
through a cluster the test starts on free ports and ends by PID: room
channels are sharded over its masters, `:all` and per-process channels are
plain; a shard's restart, a failover and killed subscribers are recovered
from with neither a duplicate nor a silent hole.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from sanic_ws_ext.delivery.redislink import ClusterLink, Topology

from .conftest import units
from .helpers import AppFactory, eventually
from .rediscluster import RedisCluster
from .test_backplane import Node, _count, nodes
from .test_backplane_cluster import act_as_one

# Beats of a second and the default peer timeouts: on a starved machine the
# in-process nodes' 0.2 s beats would take a late beat for deafness or death.
CALM: dict[str, Any] = {
    "WS_RELAY_BEAT": 1.0,
    "WS_PEER_SUSPECT": 3.0,
    "WS_PEER_TIMEOUT": 15.0,
}


def _room_prefix(node: Node) -> str:
    return f"{node.app.config.WS_REDIS_CHANNEL}:room:"


async def test_two_nodes_over_a_redis_cluster(make_app: AppFactory) -> None:
    async with (
        RedisCluster() as cluster,
        nodes(make_app, cluster.url, **CALM) as [(a, sa, _), (b, sb, _)],
    ):
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "connected"
        assert a.backplane.status()["shards"] == b.backplane.status()["shards"] == 3
        ca, ida = await a.connect(user="ann")
        cb, idb = await b.connect(user="bob")
        await eventually(lambda: _count(a, 2), "A sees both")
        await eventually(lambda: _count(b, 2), "B sees both")
        # Broadcasts both ways, a send to an id and to a user on the other node.
        await a.ws.broadcast("b", "from a")
        await b.ws.broadcast("b", "from b")
        for client in (ca, cb):
            got = [(await client.expect("b")).data for _ in range(2)]
            assert sorted(got) == ["from a", "from b"]
        await a.ws.send(idb, "direct", 1)
        assert (await cb.expect("direct")).data == 1
        await a.ws.send_user("bob", "for_user", 2)
        assert (await cb.expect("for_user")).data == 2
        # Plain channels keep one sender's order across them.
        await a.ws.send(idb, "m", 1)
        await a.ws.broadcast("m", 2)
        await a.ws.send(idb, "m", 3)
        assert [(await cb.expect("m")).data for _ in range(3)] == [1, 2, 3]

        # A room on each shard, members on both nodes.
        prefix = _room_prefix(a)
        rooms = await cluster.one_room_per_shard(prefix)
        assert len(rooms) == 3
        for room in rooms.values():
            await a.ws.join(ida, room)
            await b.ws.join(idb, room)
        for master, room in rooms.items():
            channel = prefix + room
            assert await cluster.owner(channel) == master
            assert await cluster.shard_subscribers(channel) == 2
            assert await cluster.plain_subscribers(channel) == 0
        for i in range(5):
            for room in rooms.values():
                await a.ws.publish(room, room, i)
                await b.ws.publish(room, room, -i)
        for client in (ca, cb):  # per room: each sender's order, each once
            for room in rooms.values():
                got = [(await client.expect(room)).data for _ in range(10)]
                assert [x for x in got if x > 0] == [1, 2, 3, 4]
                assert [x for x in got if x < 0] == [-1, -2, -3, -4]
                assert got.count(0) == 2

        # B's last member leaves one room: B unsubscribes from that shard's
        # channel; A's messages there no longer reach B.
        room = rooms[min(rooms)]
        channel = prefix + room
        await b.ws.leave(idb, room)

        async def unsubscribed() -> bool:
            return await cluster.shard_subscribers(channel) == 1

        await eventually(unsubscribed, "B unsubscribed")
        await a.ws.publish(room, room, "not for b")
        assert (await ca.expect(room)).data == "not for b"
        # A's own member has it at once; Redis gets it when A's outbox is
        # sent. B re-joining before that would hear it (Redis publishes to
        # whoever is subscribed when the message arrives there).
        assert await a.backplane.drain(units(10))
        await b.ws.join(idb, room)
        await a.ws.publish(room, room, "again")
        assert (await cb.expect(room)).data == "again"
        # (No assertion on the link's counters: on a starved machine a
        # deafness check may fire and reconnect; what clients got is the test.)
        await ca.close()
        await cb.close()


async def test_a_shard_master_restart_loses_nothing(make_app: AppFactory) -> None:
    n = 100
    async with (
        RedisCluster() as cluster,
        nodes(make_app, cluster.url, **CALM) as [(a, sa, _), (b, sb, _)],
    ):
        ca, ida = await a.connect()
        cb, idb = await b.connect()
        await eventually(lambda: _count(a, 2), "A sees both")
        await eventually(lambda: _count(b, 2), "B sees both")
        prefix = _room_prefix(a)
        rooms = await cluster.one_room_per_shard(prefix)
        # B's home: what A buffers for B's connection and for everyone comes
        # in to B through the restarted node, which the cluster bus of A's
        # home must have reconnected to (about 1 run in 2 lost it before the
        # probe, when the two homes differ).
        link = b.backplane.link
        assert isinstance(link, ClusterLink)
        victim = link.home[1]
        down, up = rooms[victim], rooms[max(set(rooms) - {victim})]
        for room in (down, up):
            await a.ws.join(ida, room)
            await b.ws.join(idb, room)
        for states in (sa, sb):
            assert await states.get() == "connected"
        cluster.node(victim).kill()
        # Every process holds a connection to every master: both notice.
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "reconnecting"
        for i in range(n):  # published while a shard is down: buffered
            await a.ws.publish(down, "down", i)
            await a.ws.publish(up, "up", i)
            await a.ws.broadcast("b", i)
            await a.ws.send(idb, "d", i)
        await cluster.node(victim).start()
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(30)) == "connected"
        await a.ws.broadcast("b", "after")
        # Every message once, in order per channel.
        for kind in ("down", "up", "d"):
            got = [(await cb.expect(kind, units(10))).data for _ in range(n)]
            assert got == list(range(n)), kind
        got = [(await cb.expect("b", units(10))).data for _ in range(n + 1)]
        assert got == [*range(n), "after"]
        for kind in ("down", "up"):
            got = [(await ca.expect(kind, units(10))).data for _ in range(n)]
            assert got == list(range(n)), kind
        # Resubscribed on the restarted shard, and nothing more came.
        assert await cluster.shard_subscribers(prefix + down) == 2
        await a.ws.publish(down, "down", "last")
        assert (await cb.expect("down")).data == "last"
        for node in (a, b):
            assert node.backplane.reconnects >= 1
            assert (node.backplane.lost, node.backplane.missed) == (0, 0)
        await ca.close()
        await cb.close()


async def test_a_failover_is_followed_without_loss(make_app: AppFactory) -> None:
    """A replica takes over a shard (CLUSTER FAILOVER): publishers get MOVED,
    read the new slot map and go on; subscribers keep hearing the room."""
    n = 50
    async with (
        RedisCluster(replicas=1) as cluster,
        nodes(make_app, cluster.url, **CALM) as [(a, *_), (b, *_)],
    ):
        ca, ida = await a.connect()
        cb, idb = await b.connect()
        await eventually(lambda: _count(b, 2), "B sees both")
        prefix = _room_prefix(a)
        room = next(iter((await cluster.one_room_per_shard(prefix)).values()))
        channel = prefix + room
        await a.ws.join(ida, room)
        await b.ws.join(idb, room)
        old = await cluster.owner(channel)
        new = await cluster.replica_of(old)
        await a.ws.publish(room, "n", -1)
        assert (await cb.expect("n")).data == -1
        await cluster.failover(new)
        assert await cluster.owner(channel) == new
        for i in range(n):  # from both sides: both follow the move
            await a.ws.publish(room, "n", i)
            await b.ws.publish(room, "m", i)
        assert [(await cb.expect("n", units(10))).data for _ in range(n)] == list(
            range(n)
        )
        assert [(await ca.expect("m", units(10))).data for _ in range(n)] == list(
            range(n)
        )

        # Not asserted: that both are subscribed at the new master by now. A
        # subscription left on the demoted master still hears the shard (a
        # replica gets its master's shard messages), and in one CI run at
        # load average 10 it had not moved within 10 time units. What the
        # clients got, in order and once, is the test.
        for node in (a, b):
            assert node.backplane.missed == 0
            assert node.backplane.reconnects >= 1  # MOVED: a new slot map
            assert node.ws.backplane_state == "connected"
        await ca.close()
        await cb.close()


async def test_killed_subscribers_resubscribe_on_every_shard(
    make_app: AppFactory,
) -> None:
    async with (
        RedisCluster() as cluster,
        nodes(make_app, cluster.url, **CALM) as [(a, sa, _), (b, sb, _)],
    ):
        _, ida = await a.connect()
        cb, idb = await b.connect()
        prefix = _room_prefix(a)
        rooms = await cluster.one_room_per_shard(prefix)
        for room in rooms.values():
            await a.ws.join(ida, room)
            await b.ws.join(idb, room)
        for states in (sa, sb):
            assert await states.get() == "connected"
        # One shard drops both nodes' subscriber connections: each node
        # connects again and subscribes on every shard.
        admin = aioredis.Redis(port=min(rooms))
        try:
            assert await admin.client_kill_filter(_type="pubsub") == 2
        finally:
            await admin.aclose()
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "reconnecting"
            assert await asyncio.wait_for(states.get(), units(20)) == "connected"

        async def all_back() -> bool:
            for room in rooms.values():
                if await cluster.shard_subscribers(prefix + room) != 2:
                    return False
            return await cluster.plain_subscribers(prefix[: -len("room:")] + "all") == 2

        await eventually(all_back, "both nodes resubscribed everywhere")
        for room in rooms.values():
            await a.ws.publish(room, room, "heard again")
            assert (await cb.expect(room, units(10))).data == "heard again"


async def test_a_silent_shard_is_taken_for_deaf(make_app: AppFactory) -> None:
    """A master that keeps its connections open but answers nothing (CLIENT
    PAUSE) is not heard for the deafness bound: the link reconnects, once
    the master answers again, and delivery goes on.

    A paused master still delivers what the cluster bus brings (the other
    process's beats on `:all`), so a process at home there goes deaf only
    once that process has: the pause lasts for both bounds and then some.
    """
    async with (
        RedisCluster() as cluster,
        nodes(make_app, cluster.url) as [(a, sa, _), (b, sb, _)],
    ):
        _, ida = await a.connect()
        cb, idb = await b.connect()
        prefix = _room_prefix(a)
        rooms = await cluster.one_room_per_shard(prefix)
        quiet = min(rooms)
        for node, conn_id in ((a, ida), (b, idb)):
            await node.ws.join(conn_id, rooms[quiet])
        for states in (sa, sb):
            assert await states.get() == "connected"
        # The bound is max(5 beats, 2 s); writes from us pause too.
        await cluster.command(quiet, "CLIENT", "PAUSE", int(units(8) * 1000), "ALL")
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "reconnecting"
            assert await asyncio.wait_for(states.get(), units(30)) == "connected"
        await a.ws.publish(rooms[quiet], "n", "after the pause")
        assert (await cb.expect("n", units(10))).data == "after the pause"


async def test_two_sanic_nodes_of_two_workers_over_a_redis_cluster() -> None:
    async with RedisCluster() as cluster:
        await act_as_one(cluster.url)


def test_the_slot_map_names_each_channels_master() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [10923, 16383, [b"", 7002, b"id3"]],  # "": the node we asked
        [5461, 10922, [b"10.0.0.2", 7001, b"id2"]],
    ]
    topology = Topology.parse(reply, ("10.0.0.3", 7002))
    assert topology.masters == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 7001),
        ("10.0.0.3", 7002),
    ]
    assert topology.replicas == [("10.0.0.4", 7003)]
    # "{a}" hashes to slot 15495, "{b}" to 3300 (hash tags: only the braces count).
    assert topology.owner("x:room:{a}") == ("10.0.0.3", 7002)
    assert topology.owner("y:to:{b}") == ("10.0.0.1", 7000)
    with pytest.raises(Exception, match="serves 5461 of 16384"):
        Topology.parse(reply[:1], ("10.0.0.1", 7000))


async def test_an_emitter_over_a_redis_cluster(make_app: AppFactory) -> None:
    """The async emitter publishes rooms to their shards and the rest through
    one node, in order; the sync one refuses a cluster with a clear error."""
    from sanic_ws_ext import EmitFailed, Emitter, SyncEmitter

    async with (
        RedisCluster() as cluster,
        nodes(make_app, cluster.url, **CALM) as [(a, sa, _), (b, sb, _)],
    ):
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "connected"
        ca, ida = await a.connect()
        cb, idb = await b.connect(user="bob")
        await a.ws.join(ida, "lobby")
        await b.ws.join(idb, "lobby")
        channel = a.app.config.WS_REDIS_CHANNEL
        async with Emitter(cluster.url, channel=channel) as em:
            assert em.status()["shards"] == 3
            # Publishers only: the anchor counts the two nodes' subscribers
            # on each of the three masters, not the emitter.
            link = em._backplane.link
            assert link is not None
            anchors = [f"{channel}:link:{n.backplane.process}" for n in (a, b)]
            assert sum((await link.numsub(anchors)).values()) == 2 * 3
            for i in range(50):
                await em.broadcast("e", i)
            await em.publish("lobby", "e.room", "news")
            await em.send(idb, "e.direct", "to b")
            await em.send_user("bob", "e.user", "bob")
            assert await em.flush(units(10))
        for client in (ca, cb):
            assert [(await client.expect("e")).data for _ in range(50)] == list(
                range(50)
            )
            assert (await client.expect("e.room")).data == "news"
        assert (await cb.expect("e.direct")).data == "to b"
        assert (await cb.expect("e.user")).data == "bob"
        with (
            SyncEmitter(cluster.url, channel=channel) as sync,
            pytest.raises(EmitFailed, match="Redis Cluster"),
        ):
            sync.broadcast("e", "never")
        for node in (a, b):
            assert (node.backplane.missed, node.backplane.duplicates) == (0, 0)
        await ca.close()
        await cb.close()
