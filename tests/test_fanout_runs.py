"""Consecutive broadcasts to the same receivers share one run of frames.

A handler broadcasting in a loop queues its frames once for all receivers
(sanic_ws_ext.wire.Run) instead of once per receiver. These tests pin what
must not change with it: each client's order, who gets what when membership
or exclusions change between two broadcasts, and the backlog each connection
counts. Each scenario first checks that a run really formed, so it cannot
pass by going the per-receiver way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from sanic import Sanic

from sanic_ws_ext import Accept, CloseCode, Connection
from sanic_ws_ext.envelope import message_body
from sanic_ws_ext.frames import OP_TEXT, RSV1, encode_frame
from sanic_ws_ext.index import _KEEP_FROM
from sanic_ws_ext.manager import ConnectionManager
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import until, ws_app
from .test_deflate import inflate, raw_connect, read_raw

AppFactory = Callable[..., Sanic[Any, Any]]


async def connect(ws: ConnectionManager, url: str) -> tuple[WSTestClient, str]:
    """A client and its connection id."""
    before = set(ws.connections)
    client = await WSTestClient.connect(url)
    (conn_id,) = set(ws.connections) - before
    return client, conn_id


async def types(client: WSTestClient, count: int) -> list[str]:
    got = []
    for _ in range(count):
        message = await client.recv(units(10))
        assert not isinstance(message, bytes)
        got.append(message.type)
    return got


def run_frames(ws: ConnectionManager) -> int:
    """Frames in the flusher's open run (0: none open)."""
    run = ws._flusher.run if ws._flusher is not None else None
    return 0 if run is None else len(run.frames)


def users_app(
    make_app: AppFactory,
) -> tuple[Sanic[Any, Any], asyncio.Queue[Connection]]:
    """An app whose connections are the user ``?user=`` names, and a queue
    of connections as they close."""
    app, handlers, gone = ws_app(make_app, WS_PING_INTERVAL=None)

    @handlers.verify
    async def identify(request: Any) -> Accept | None:
        user = request.args.get("user")
        return Accept(user=user) if user else None

    return app, gone


async def test_a_send_between_broadcasts_keeps_each_clients_order(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        (a, a_id), (b, _) = [await connect(ws, server.ws_url()) for _ in range(2)]
        await ws.broadcast("one")
        await ws.broadcast("two")
        assert run_frames(ws) == 2  # the second broadcast joined the first's run
        await ws.send(a_id, "own")  # must come after "two" and before "three"
        await ws.broadcast("three")
        await ws.broadcast("four")
        assert await types(a, 5) == ["one", "two", "own", "three", "four"]
        assert await types(b, 4) == ["one", "two", "three", "four"]
        await a.close()
        await b.close()


async def test_who_joins_or_leaves_between_two_broadcasts_gets_only_its_share(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        clients = [await connect(ws, server.ws_url()) for _ in range(3)]
        (a, a_id), (b, b_id), (c, c_id) = clients
        for conn_id in (a_id, b_id):
            await ws.join(conn_id, "r")
        await ws.publish("r", "one")
        await ws.publish("r", "two")
        assert run_frames(ws) == 2
        await ws.join(c_id, "r")  # the room's receivers change mid-run
        await ws.publish("r", "three")
        await ws.leave(b_id, "r")
        await ws.publish("r", "four")
        for _, conn_id in clients:
            await ws.send(conn_id, "end")
        assert await types(a, 5) == ["one", "two", "three", "four", "end"]
        assert await types(b, 4) == ["one", "two", "three", "end"]
        assert await types(c, 3) == ["three", "four", "end"]
        for client, _ in clients:
            await client.close()


async def test_who_connects_or_leaves_between_two_sends_gets_only_its_share(
    make_app: AppFactory,
) -> None:
    """Broadcasts and sends to a user hand fan_out the index's receiver
    tuple, kept until a connection comes or goes (LocalIndex.everyone, .of):
    one kept past an arrival would miss the newcomer, past a departure write
    to a closed wire."""
    app, gone = users_app(make_app)
    async with serve(app) as server:
        ws = app.ctx.ws
        url = server.ws_url()
        a, a_id = await connect(ws, url + "?user=ann")
        await ws.broadcast("one")
        await ws.send_user("ann", "u-one")
        await ws.send_user("ann", "u-two")
        assert run_frames(ws) == 3  # one receiver either way: one run
        b, b_id = await connect(ws, url + "?user=ann")  # ann's second connection
        await ws.broadcast("two")
        await ws.send_user("ann", "u-three")
        await ws.broadcast("three")
        assert await types(a, 5) == ["one", "u-one", "u-two", "two", "u-three"]
        assert await types(a, 1) == ["three"]
        await a.close()
        assert (await gone.get()).id == a_id
        await ws.broadcast("four")
        await ws.send_user("ann", "u-four")
        await ws.send(b_id, "end")
        assert await types(b, 6) == ["two", "u-three", "three", "four", "u-four", "end"]
        await b.close()


async def test_a_big_rooms_and_users_kept_receivers_follow_its_members(
    make_app: AppFactory,
) -> None:
    """From _KEEP_FROM members a room's and a user's receiver tuple is kept
    between sends (LocalIndex.of): kept past a join, a connection or a
    departure, it would miss the newcomer or write to a wire that left."""
    app, gone = users_app(make_app)
    async with serve(app) as server:
        ws = app.ctx.ws
        url = server.ws_url() + "?user=ann"
        first = [await connect(ws, url) for _ in range(_KEEP_FROM)]
        for _, conn_id in first:
            await ws.join(conn_id, "big")
        await ws.publish("big", "one")
        await ws.send_user("ann", "u-one")
        assert set(ws._local._room_tuples) == {"big"}
        assert set(ws._local._user_tuples) == {"ann"}
        late, late_id = await connect(ws, url)  # ann's connection, not in "big"
        await ws.send_user("ann", "u-two")
        await ws.join(late_id, "big")
        await ws.publish("big", "two")
        left, left_id = first[0]
        await ws.leave(left_id, "big")
        await ws.publish("big", "three")
        await ws.send(left_id, "end")
        assert await types(left, 5) == ["one", "u-one", "u-two", "two", "end"]
        await left.close()
        assert (await gone.get()).id == left_id
        # Nothing kept holds the wire that left.
        assert left_id not in {w.conn.id for w in ws._local.of(False, "ann")}
        await ws.send_user("ann", "u-three")
        for client, _ in first[1:]:
            assert await types(client, 6) == [
                "one", "u-one", "u-two", "two", "three", "u-three"
            ]  # fmt: skip
        assert await types(late, 4) == ["u-two", "two", "three", "u-three"]
        for client, _ in [*first[1:], (late, late_id)]:
            await client.close()


async def test_exclusions_are_part_of_what_a_run_is_for(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        (a, a_id), (b, b_id) = [await connect(ws, server.ws_url()) for _ in range(2)]
        await ws.broadcast("not-a", exclude=[a_id])
        await ws.broadcast("not-a-again", exclude=[a_id])
        assert run_frames(ws) == 2
        await ws.broadcast("all")
        await ws.broadcast("not-b", exclude=[b_id])
        for conn_id in (a_id, b_id):
            await ws.send(conn_id, "end")
        assert await types(a, 3) == ["all", "not-b", "end"]
        assert await types(b, 4) == ["not-a", "not-a-again", "all", "end"]
        await a.close()
        await b.close()


async def test_a_connections_backlog_counts_every_frame_of_a_run(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        clients = [await connect(ws, server.ws_url()) for _ in range(3)]
        sizes = []
        for i in range(20):
            body = f"message {i}"
            await ws.broadcast("tick", body)
            sizes.append(
                len(encode_frame(OP_TEXT, message_body("tick", body, None)[0]))
            )
        assert run_frames(ws) == 20
        conn = ws.get(clients[0][1])
        assert conn is not None
        # Read before the loop wrote anything: all twenty, not the first.
        assert conn.backlog == sum(sizes)
        assert run_frames(ws) == 0  # reading it closed the run
        for client, _ in clients:
            assert await types(client, 20) == ["tick"] * 20
            await client.close()


async def test_a_run_carries_each_window_sizes_compressed_frames(
    make_app: AppFactory,
) -> None:
    """With permessage-deflate, a run keeps each frame compressed once per
    window size: every client gets every message, in order, compressed where
    it agreed to it (RSV1) and plain where not, and each compressed frame is
    counted once per receiver."""
    app, _, _ = ws_app(make_app, WS_COMPRESSION=True, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        offers = [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=10",
            None,
            "permessage-deflate",  # a second member with a 15-bit window
        ]
        clients = [await raw_connect(server.host, server.port, o) for o in offers]
        await until(lambda: len(ws.connections) == 4)
        before = ws._counters.compressed_out
        bodies = [f"{i} " + "compressible text " * 40 for i in range(6)]
        for body in bodies[:3]:
            await ws.broadcast("tick", body)
        assert run_frames(ws) == 3
        await ws.broadcast("small", "x")  # too small to compress: plain to all
        for body in bodies[3:]:
            await ws.broadcast("tick", body)
        for (reader, _, _), bits, compressed in (
            (clients[0], 15, True),
            (clients[1], 10, True),
            (clients[2], 15, False),
            (clients[3], 15, True),
        ):
            got: list[str] = []
            for _ in range(7):
                first, payload = await read_raw(reader)
                is_tick = len(got) != 3
                assert bool(first & RSV1) == (compressed and is_tick)
                text = inflate(payload, bits) if first & RSV1 else payload
                got.append(json.loads(text)["data"])
            assert got == [*bodies[:3], "x", *bodies[3:]]
        # 6 compressed frames for each of the three compressing clients.
        assert ws._counters.compressed_out - before == 18
        for _, writer, _ in clients:
            writer.transport.abort()


async def test_a_keyed_replacement_during_a_run_is_held_to_the_limit(
    make_app: AppFactory,
) -> None:
    """A keyed send that replaces a small pending frame with a big one ends
    the open run: the next broadcast checks the grown backlog and drops the
    connection past WS_MAX_BACKPRESSURE (1008), as without runs."""
    limit = 100_000
    app, _, gone = ws_app(make_app, WS_MAX_BACKPRESSURE=limit, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        (a, a_id), (b, _) = [await connect(ws, server.ws_url()) for _ in range(2)]
        await ws.send(a_id, "progress", "0%", key="k")
        await ws.broadcast("one")
        await ws.broadcast("two")
        assert run_frames(ws) == 2
        await ws.send(a_id, "progress", "x" * (limit + 50_000), key="k")
        assert run_frames(ws) == 0
        await ws.broadcast("three")
        dropped = await asyncio.wait_for(gone.get(), units(10))
        assert dropped.id == a_id and dropped.close_code == CloseCode.POLICY_VIOLATION
        assert await types(b, 3) == ["one", "two", "three"]
        await b.close()
        await a.close()


async def test_an_ended_run_lets_go_of_its_receivers(make_app: AppFactory) -> None:
    """A run stays in the pending list of every member that has not written
    yet; once ended it must not keep the receiver lists (every connection of
    every broadcast) alive, nor its frames once joined."""
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        clients = [await connect(ws, server.ws_url()) for _ in range(3)]
        await ws.broadcast("one")
        await ws.broadcast("two")
        assert ws._flusher is not None
        run = ws._flusher.run
        assert run is not None and len(run.members) == 3
        for client, _ in clients:
            assert await types(client, 2) == ["one", "two"]  # written: ended
        assert ws._flusher.run is None
        assert (run.source, run.members, run.frames) == ((), (), [])
        for client, _ in clients:
            await client.close()
