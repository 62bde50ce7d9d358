"""The Redis backplane with two nodes in this process, against real Redis.

Each node is an app served on its own port with its own manager, as two
machines would be; they meet only through Redis. Faults use a private
`redis-server` that the test kills and restarts by PID.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from sanic import Request, Sanic

from sanic_ws_ext import (
    Accept,
    Connection,
    ConnectionManager,
    Envelope,
    PublishTooLarge,
)
from sanic_ws_ext.delivery import OpKind
from sanic_ws_ext.delivery.backplane import RedisBackplane
from sanic_ws_ext.delivery.wire import decode_op, iter_records, unpack_message
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import AppFactory, eventually, ws_app
from .redisproc import SHARED_URL, RedisServer

BEAT = 0.2


def node_app(
    make_app: AppFactory, url: str, channel: str, **config: Any
) -> tuple[Sanic[Any, Any], asyncio.Queue[str], asyncio.Queue[Exception]]:
    """A node: welcome message, a few commands, and queues of hook calls."""
    config = {
        "WS_RELAY_BEAT": BEAT,
        "WS_PEER_SUSPECT": 3 * BEAT,
        "WS_PEER_TIMEOUT": 6 * BEAT,
        **config,
    }
    app, handlers, _ = ws_app(
        make_app, WS_BACKPLANE=url, WS_REDIS_CHANNEL=channel, **config
    )
    handlers.room("lobby", presence="full", expose_ids=True, client_join=True)
    states: asyncio.Queue[str] = asyncio.Queue()
    errors: asyncio.Queue[Exception] = asyncio.Queue()

    @handlers.verify
    async def identify(request: Request) -> Accept:
        return Accept(user=request.args.get("user"))

    @handlers.on_connect
    async def welcome(conn: Connection) -> None:
        await conn.send("welcome", {"id": conn.id, "worker": conn.worker})

    @handlers.on("broadcast")
    async def broadcast(conn: Connection, msg: Envelope) -> None:
        await conn.manager.broadcast("b", msg.data)

    @handlers.on("say")
    async def say(conn: Connection, msg: Envelope) -> None:
        await conn.manager.publish(msg.data["room"], "said", msg.data["text"])

    @handlers.on_error
    async def failed(conn: Connection, exc: Exception) -> None:
        errors.put_nowait(exc)

    @handlers.on_backplane
    async def changed(manager: ConnectionManager, state: str) -> None:
        states.put_nowait(state)

    return app, states, errors


class Node:
    def __init__(self, app: Sanic[Any, Any], ws_url: str) -> None:
        self.app = app
        self.ws_url = ws_url

    @property
    def ws(self) -> ConnectionManager:
        manager: ConnectionManager = self.app.ctx.ws
        return manager

    @property
    def backplane(self) -> RedisBackplane:
        delivery = self.ws._delivery
        assert isinstance(delivery, RedisBackplane)
        return delivery

    async def connect(self, user: str | None = None) -> tuple[WSTestClient, str]:
        query = f"?user={user}" if user else ""
        client = await WSTestClient.connect(self.ws_url + query)
        return client, (await client.expect("welcome")).data["id"]


@asynccontextmanager
async def nodes(
    make_app: AppFactory, url: str = SHARED_URL, n: int = 2, **config: Any
) -> AsyncIterator[list[tuple[Node, asyncio.Queue[str], asyncio.Queue[Exception]]]]:
    channel = f"test-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(n):
            app, states, errors = node_app(make_app, url, channel, **config)
            server = await stack.enter_async_context(serve(app))
            made.append((Node(app, server.ws_url()), states, errors))
        yield made


async def test_two_nodes_are_one_cluster(make_app: AppFactory) -> None:
    async with nodes(make_app) as [(a, *_), (b, *_)]:
        assert a.backplane.node != b.backplane.node
        assert a.ws.backplane_state == "connected"
        ca, ida = await a.connect(user="ann")
        cb, idb = await b.connect(user="bob")
        await eventually(lambda: _count(a, 2), "A sees both")
        await eventually(lambda: _count(b, 2), "B sees both")
        # Broadcast from either side: both clients, each message once.
        await ca.send("broadcast", "from a")
        await cb.send("broadcast", "from b")
        for client in (ca, cb):
            got = [(await client.expect("b")).data for _ in range(2)]
            assert sorted(got) == ["from a", "from b"]
        # Send to an id held by the other node; send to a user there.
        await a.ws.send(idb, "direct", 1)
        assert (await cb.expect("direct")).data == 1
        await a.ws.send_user("bob", "for_user", 2)
        assert (await cb.expect("for_user")).data == 2
        # Rooms: A puts B's connection in a room; presence reaches both.
        await a.ws.join(ida, "lobby")
        state = (await ca.expect("presence.state")).data
        assert [m["conn"] for m in state["users"]["ann"]] == [ida]
        await a.ws.join(idb, "lobby")
        diff = (await ca.expect("presence.diff")).data
        ((bob,),) = diff["joins"].values()
        assert (bob["conn"], bob["worker"]) == (idb, b.ws._worker)
        state = (await cb.expect("presence.state")).data
        assert sorted(state["users"]) == ["ann", "bob"]
        await cb.send("say", {"room": "lobby", "text": "hi"})
        for client in (ca, cb):
            assert (await client.expect("said")).data == "hi"
        members = sorted(m.id for m in await a.ws.members("lobby"))
        assert members == sorted([ida, idb])
        # Disconnect across nodes; A's view drops the member, rooms see it leave.
        await a.ws.disconnect(idb, 4000, "bye")
        assert await cb.wait_closed() == (4000, "bye")
        assert list((await ca.expect("presence.diff")).data["leaves"]) == ["bob"]
        await eventually(lambda: _count(a, 1), "A sees the disconnect")
        await ca.close()
        # No op came over Redis twice, none was missed.
        for node in (a, b):
            assert node.backplane.duplicates == 0
            assert node.backplane.missed == 0


async def test_publish_over_the_limit_is_refused_before_delivery(
    make_app: AppFactory,
) -> None:
    async with nodes(make_app, WS_MAX_PUBLISH=8192) as [(a, _, errors), (b, *_)]:
        ca, ida = await a.connect()
        cb, _ = await b.connect()
        await eventually(lambda: _count(a, 2), "A sees both")
        big = "x" * 10_000
        with pytest.raises(PublishTooLarge) as refused:
            await a.ws.broadcast("b", big)
        assert refused.value.limit == 8192
        # From a handler: the sender gets an error frame, the hook the error.
        await ca.send("broadcast", big)
        assert (await ca.expect("error")).data["code"] == "handler_error"
        assert isinstance(await errors.get(), PublishTooLarge)
        # Nothing of it reached anyone: the next broadcast is the first "b".
        await a.ws.broadcast("b", "small")
        for client in (ca, cb):
            assert (await client.expect("b")).data == "small"
        # A send to a connection on this node does not cross Redis: no limit.
        await a.ws.send(ida, "direct", big)
        assert (await ca.expect("direct")).data == big
        assert a.backplane.status()["state"] == "connected"


async def test_redis_restart_loses_nothing_within_the_buffer(
    make_app: AppFactory,
) -> None:
    n = 300
    async with (
        RedisServer() as redis_server,
        nodes(make_app, redis_server.url) as [(a, sa, _), (b, sb, _)],
    ):
        ca, ca_id = await a.connect()
        cb, _ = await b.connect()
        await eventually(lambda: _count(b, 2), "B sees both")
        for states in (sa, sb):
            assert await states.get() == "connected"
        redis_server.kill()
        for node, states in ((a, sa), (b, sb)):
            assert await asyncio.wait_for(states.get(), units(10)) == "reconnecting"
            assert node.ws.backplane_state == "reconnecting"
        for i in range(n):  # published while Redis is down: buffered
            await a.ws.broadcast("b", i)
            if i % 30 == 0:  # volatile: only worth sending now, so dropped
                await a.ws.broadcast("b", "stale", volatile=True, exclude=[ca_id])
        await eventually(
            lambda: _true(a.backplane.status()["buffered_bytes"] > 0), "buffered"
        )
        await redis_server.start()
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "connected"
        await a.ws.broadcast("b", "after")
        for client in (ca, cb):  # every one, once, in order, then "after"
            got = [(await client.expect("b", units(10))).data for _ in range(n + 1)]
            assert got == [*range(n), "after"]
        for node in (a, b):
            assert node.backplane.reconnects == 1
            assert (node.backplane.lost, node.backplane.missed) == (0, 0)
        # The outage was not taken for the death of the other node (the
        # replicas converge once both buffers are through).
        await eventually(lambda: _count(a, 2), "A still sees both")
        await eventually(lambda: _count(b, 2), "B still sees both")


#: An outage buffer that a few hundred ~1 kB ops overflow.
SMALL_BUFFER = {"WS_MAX_PUBLISH": 8192, "WS_BACKPLANE_BUFFER": 8192 + 64 * 1024}


async def test_overflow_is_counted_and_the_view_heals(make_app: AppFactory) -> None:
    async with (
        RedisServer() as redis_server,
        nodes(make_app, redis_server.url, **SMALL_BUFFER) as [(a, sa, _), (b, sb, _)],
    ):
        cb, idb = await b.connect()
        await b.ws.join(idb, "lobby")  # B follows the lobby's presence
        await eventually(lambda: _count(a, 1), "A sees B's client")
        await a.ws.broadcast("b", "before")
        assert (await cb.expect("b")).data == "before"
        for states in (sa, sb):
            assert await states.get() == "connected"
        redis_server.kill()
        assert await asyncio.wait_for(sa.get(), units(10)) == "reconnecting"
        for i in range(300):
            # One message per loop pass, big and small in turn: once one does
            # not fit, smaller ones that would must not jump the hole.
            await a.ws.broadcast("b", {"i": i, "pad": "x" * (900 if i % 2 else 10)})
            await asyncio.sleep(0)
        assert await asyncio.wait_for(sa.get(), units(5)) == "down"
        assert a.ws.backplane_state == "down"
        lost = a.backplane.lost
        assert lost > 0
        # A connection opened on A while its ops are being dropped.
        ca, ida = await a.connect()
        await a.ws.join(ida, "lobby")
        await redis_server.start()
        assert await asyncio.wait_for(sa.get(), units(10)) == "connected"
        # B learns A's connection (from A's presence op if it was buffered,
        # else by asking A again after the gap), and notices the gap left by
        # the broadcasts A dropped (at A's next op to everyone).
        await eventually(lambda: _in_lobby(b, ida), "B learns A's presence")
        await eventually(lambda: _true(b.backplane.missed > 0), "B sees the gap")
        await a.ws.broadcast("b", "after")
        # What A could not buffer is lost (counted, not delivered half-way):
        # B's client gets some prefix of the messages, then "after".
        got = []
        while (data := (await cb.expect("b", units(10))).data) != "after":
            got.append(data["i"])
        assert got == list(range(len(got))) and len(got) < 300
        await ca.close()
        await cb.close()


async def test_order_is_kept_across_channels(make_app: AppFactory) -> None:
    async with nodes(make_app) as [(a, *_), (b, *_)]:
        cb, idb = await b.connect()
        await eventually(lambda: _count(a, 1), "A sees B's client")
        # One loop pass: to B's connection alone, to everyone, to B alone.
        await a.ws.send(idb, "m", 1)
        await a.ws.broadcast("m", 2)
        await a.ws.send(idb, "m", 3)
        assert [(await cb.expect("m")).data for _ in range(3)] == [1, 2, 3]


async def test_a_peer_gone_during_the_outage_does_not_stall_recovery(
    make_app: AppFactory,
) -> None:
    async with (
        RedisServer() as redis_server,
        nodes(make_app, redis_server.url, n=1) as [(a, sa, _)],
    ):
        # B: a second node that will not come back after the outage.
        channel = a.app.config.WS_REDIS_CHANNEL
        b_app, _, _ = node_app(make_app, redis_server.url, channel)
        async with serve(b_app) as b_server:
            b = Node(b_app, b_server.ws_url())
            cb, _ = await b.connect()
            await eventually(lambda: _count(a, 1), "A sees B's client")
            assert await sa.get() == "connected"
            redis_server.kill()
            assert await asyncio.wait_for(sa.get(), units(10)) == "reconnecting"
            await a.ws.broadcast("b", "while down")
            await cb.close()
        # B is gone for good; A waits for it at most RESUBSCRIBE_WAIT,
        # once, then sends its buffer, and its link stays up.
        await redis_server.start()
        assert await asyncio.wait_for(sa.get(), units(10)) == "connected"
        await eventually(
            lambda: _true(a.backplane.status()["buffered_bytes"] == 0),
            "A's buffer sent",
        )
        assert a.backplane.reconnects == 1
        assert sa.empty()
        await eventually(lambda: _count(a, 0), "B's client is dropped")


async def test_socket_timeout_in_the_url_does_not_make_a_reconnect_loop(
    make_app: AppFactory,
) -> None:
    # redis-py reads URL query options; a read timeout shorter than the gap
    # between messages must not tear the subscriber down.
    url = SHARED_URL + "?socket_timeout=0.05"
    async with nodes(make_app, url, n=1, WS_RELAY_BEAT=1.0) as [(a, sa, _)]:
        assert await sa.get() == "connected"
        with pytest.raises(TimeoutError):  # three quiet beats: no state change
            await asyncio.wait_for(sa.get(), units(3))
        assert a.backplane.reconnects == 0
        ca, _ = await a.connect()
        await a.ws.broadcast("b", "still here")
        assert (await ca.expect("b")).data == "still here"


async def test_a_killed_subscriber_resubscribes(make_app: AppFactory) -> None:
    async with (
        RedisServer() as redis_server,
        nodes(make_app, redis_server.url) as [(a, sa, _), (b, sb, _)],
    ):
        cb, _ = await b.connect()
        await eventually(lambda: _count(a, 1), "A sees B's client")
        for states in (sa, sb):
            assert await states.get() == "connected"
        admin = aioredis.Redis(port=redis_server.port)
        try:
            killed = await admin.client_kill_filter(_type="pubsub")
        finally:
            await admin.aclose()
        assert killed == 2
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "reconnecting"
            assert await asyncio.wait_for(states.get(), units(10)) == "connected"
        await a.ws.broadcast("b", "heard again")
        assert (await cb.expect("b", units(10))).data == "heard again"
        assert a.backplane.reconnects == b.backplane.reconnects == 1


async def _count(node: Node, n: int) -> bool:
    return await node.ws.count() == n


async def _in_lobby(node: Node, conn_id: str) -> bool:
    return conn_id in {m.id for m in await node.ws.members("lobby")}


async def _true(value: bool) -> bool:
    return value


# -- interest routing: a room's messages go only where it has members ---------


async def _subscribers(url: str, channel: str) -> int:
    admin = aioredis.Redis.from_url(url)
    try:
        ((_, count),) = await admin.pubsub_numsub(channel)
        return int(count)
    finally:
        await admin.aclose()


async def test_a_node_hears_a_room_only_while_it_has_members(
    make_app: AppFactory,
) -> None:
    async with nodes(make_app) as [(a, *_), (b, *_)]:
        ca, ida = await a.connect()
        cb, idb = await b.connect()
        await eventually(lambda: _count(a, 2), "A sees both")
        channel = a.app.config.WS_REDIS_CHANNEL + ":room:news"
        await a.ws.join(ida, "news")
        assert await _subscribers(SHARED_URL, channel) == 1  # A only
        # The join returns once B listens: a publish right after it arrives.
        await b.ws.join(idb, "news")
        assert await _subscribers(SHARED_URL, channel) == 2
        for i in range(5):
            await a.ws.publish("news", "n", i)
        assert [(await cb.expect("n")).data for _ in range(5)] == list(range(5))
        assert [(await ca.expect("n")).data for _ in range(5)] == list(range(5))
        # B's last member leaves: after a short linger B unsubscribes, and
        # A's messages to the room no longer cross to B at all.
        await b.ws.leave(idb, "news")

        async def unsubscribed() -> bool:
            return await _subscribers(SHARED_URL, channel) == 1

        await eventually(unsubscribed, "B unsubscribed")
        await a.ws.publish("news", "n", "not for b")
        assert (await ca.expect("n")).data == "not for b"
        # Back in the room: a fresh start, neither a gap nor a duplicate.
        await b.ws.join(idb, "news")
        await a.ws.publish("news", "n", "again")
        assert (await cb.expect("n")).data == "again"
        await a.ws.broadcast("b", "marker")
        assert (await cb.recv()).data == "marker"  # type: ignore[union-attr]
        assert b.backplane.missed == b.backplane.duplicates == 0


async def test_a_client_join_is_answered_once_the_room_is_heard(
    make_app: AppFactory,
) -> None:
    async with nodes(make_app) as [(a, *_), (b, *_)]:
        ca, ida = await a.connect()
        cb, _ = await b.connect()
        await a.ws.join(ida, "lobby")
        await cb.send("room.join", {"room": "lobby"})
        await cb.expect("room.joined")
        await ca.send("say", {"room": "lobby", "text": "right away"})
        assert (await cb.expect("said")).data == "right away"


async def test_room_subscriptions_come_back_after_a_redis_restart(
    make_app: AppFactory,
) -> None:
    async with (
        RedisServer() as redis_server,
        nodes(make_app, redis_server.url) as [(a, sa, _), (b, sb, _)],
    ):
        _, ida = await a.connect()
        cb, idb = await b.connect()
        for node, conn_id in ((a, ida), (b, idb)):
            await node.ws.join(conn_id, "news")
        for states in (sa, sb):
            assert await states.get() == "connected"
        redis_server.kill()
        await redis_server.start()
        for states in (sa, sb):
            assert await asyncio.wait_for(states.get(), units(10)) == "reconnecting"
            assert await asyncio.wait_for(states.get(), units(10)) == "connected"
        channel = a.app.config.WS_REDIS_CHANNEL + ":room:news"

        async def both_back() -> bool:
            return await _subscribers(redis_server.url, channel) == 2

        await eventually(both_back, "both nodes resubscribed to the room")
        await a.ws.publish("news", "n", "after the restart")
        assert (await cb.expect("n", units(10))).data == "after the restart"


async def test_presence_reaches_only_the_nodes_with_members(
    make_app: AppFactory,
) -> None:
    """A room's presence ops go on its own channel, never to everyone; a node
    holds nothing of a room until it has a member, then gets its whole state
    (asking the others) and its changes."""
    async with nodes(make_app) as [(a, *_), (b, *_)]:
        prefix = a.app.config.WS_REDIS_CHANNEL
        listener = aioredis.Redis.from_url(SHARED_URL)
        pubsub = listener.pubsub()
        await pubsub.subscribe(prefix + ":all", prefix + ":room:lobby")
        try:
            ca, ida = await a.connect(user="ann")
            cb, idb = await b.connect(user="bob")
            await eventually(lambda: _count(b, 2), "B sees both")
            await a.ws.join(ida, "lobby")
            assert (await ca.expect("presence.state")).data["users"].keys() == {"ann"}
            kinds: dict[str, set[OpKind]] = {"all": set(), "room": set()}

            async def heard_presence() -> bool:
                while message := await pubsub.get_message(timeout=0.01):
                    if message["type"] != "message":
                        continue
                    where = "room" if message["channel"].endswith(b"lobby") else "all"
                    chunk = unpack_message(message["data"])[3]
                    kinds[where].update(decode_op(r).kind for r in iter_records(chunk))
                return OpKind.PRESENCE in kinds["room"]

            await eventually(heard_presence, "A's presence op on the room's channel")
            assert OpKind.PRESENCE not in kinds["all"]
            assert b.ws._tracker.table.count("lobby") == (0, 0)
            assert b.ws.status()["presence"]["followed"] == 0
            # B's first member gets the whole state: B asked A for its part.
            await b.ws.join(idb, "lobby")
            state = (await cb.expect("presence.state", units(5))).data
            assert sorted(state["users"]) == ["ann", "bob"]
            diff = (await ca.expect("presence.diff", units(5))).data
            assert list(diff["joins"]) == ["bob"]
            await ca.close()
            diff = (await cb.expect("presence.diff", units(5))).data
            assert list(diff["leaves"]) == ["ann"]
            await heard_presence()
            assert OpKind.PRESENCE not in kinds["all"]
            assert b.backplane.missed == 0
            await cb.close()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await listener.aclose()


async def test_a_leave_dropped_in_an_outage_still_reaches_the_room(
    make_app: AppFactory,
) -> None:
    """A's buffer overflows during an outage with messages to a room, and
    its member's leave is dropped with them; A sends nothing more to that
    room. Once the backlog is through, A marks the hole on the room's
    channel: B sees the gap, asks A again, and its view loses the member."""
    async with (
        RedisServer() as redis_server,
        nodes(make_app, redis_server.url, **SMALL_BUFFER) as [(a, sa, _), (b, sb, _)],
    ):
        ca, ida = await a.connect()
        cb, idb = await b.connect()
        await a.ws.join(ida, "lobby")
        await b.ws.join(idb, "lobby")
        await eventually(lambda: _in_lobby(b, ida), "B holds A's member")
        for states in (sa, sb):
            assert await states.get() == "connected"
        redis_server.kill()
        assert await asyncio.wait_for(sa.get(), units(10)) == "reconnecting"
        for i in range(200):  # only to the room: nothing to everyone is lost
            await a.ws.publish("lobby", "m", {"i": i, "pad": "x" * 900})
            await asyncio.sleep(0)
        assert await asyncio.wait_for(sa.get(), units(5)) == "down"
        await a.ws.leave(ida, "lobby")
        a.ws._tracker.flush()  # the leave goes out now: dropped
        await redis_server.start()
        assert await asyncio.wait_for(sa.get(), units(10)) == "connected"

        async def gone() -> bool:
            return not await _in_lobby(b, ida)

        await eventually(gone, "B's view loses A's member")
        assert b.backplane.missed > 0
        await ca.close()
        await cb.close()
