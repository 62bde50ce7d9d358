"""Issue 14's reproductions: cluster state that holds at real sizes.

Each of these broke before presence was batched and transfers bounded: a
state bigger than WS_MAX_PUBLISH never reached a new node; a peer dying with
a big room sent every survivor one frame per member that left; a worker
blocked for 3 s was declared dead. Speeds are measured in bench/scale.py;
these tests check counts of frames and what each process ends up knowing.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import ujson
from sanic import Sanic
from websockets.frames import Opcode

from sanic_ws_ext import Connection, Envelope
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import until, ws_app
from .procs import SanicProcess
from .rawws import RawClient
from .redisproc import SHARED_URL
from .test_cluster import Client, cluster, presence_of, worker_names

AppFactory = Callable[..., Sanic[Any, Any]]


def node(make_app: AppFactory, channel: str, **config: Any) -> Sanic[Any, Any]:
    app, handlers, _ = ws_app(
        make_app,
        WS_BACKPLANE=SHARED_URL,
        WS_REDIS_CHANNEL=channel,
        WS_RELAY_BEAT=0.2,
        **config,
    )
    # The same declarations as tests/apps/cluster.py: every process of a
    # cluster must declare its rooms alike.
    handlers.room("r:{n}", presence="full")
    handlers.room("lobby", presence="full")
    handlers.room("big:{name}", presence="full")

    @handlers.on("join")
    async def join(conn: Connection, msg: Envelope) -> None:
        for room in msg.data:
            await conn.join(room)
        await conn.send("joined")

    return app


async def test_a_state_larger_than_max_publish_reaches_a_new_node(
    make_app: AppFactory,
) -> None:
    """1000 entries (about 90 kB) with WS_MAX_PUBLISH at 32 KiB: a node that
    starts later gets them all, in parts, and so does the first from it."""
    channel = f"test-{uuid.uuid4().hex[:12]}"
    small = {"WS_MAX_PUBLISH": 32 * 1024, "WS_BACKPLANE_BUFFER": 1 << 20}
    rooms = [f"r:{i}" for i in range(100)]
    async with AsyncExitStack() as stack:
        a = node(make_app, channel, **small)
        a_server = await stack.enter_async_context(serve(a))
        clients = []
        for _ in range(10):
            client = await WSTestClient.connect(a_server.ws_url())
            await client.send("join", rooms)
            await client.expect("joined")
            clients.append(client)
        assert len(a.ctx.ws._tracker.table) == 1000

        b = node(make_app, channel, **small)
        b_server = await stack.enter_async_context(serve(b))
        late = await WSTestClient.connect(b_server.ws_url())
        await late.send("join", rooms[:50])
        await late.expect("joined")
        await until(lambda: len(b.ctx.ws._tracker.table) == 1050)
        await until(lambda: len(a.ctx.ws._tracker.table) == 1050)
        members = await b.ctx.ws.members("r:7")
        assert sorted(m.id for m in members) == sorted(
            m.id for m in await a.ctx.ws.members("r:7")
        )
        assert len(members) == 11
        for client in (*clients, late):
            await client.close()


async def test_a_leave_reaches_a_node_that_a_transfer_told_of_the_join(
    make_app: AppFactory,
) -> None:
    """Review of issue 14: an entry listed by a SYNC and gone before its join
    was published left a ghost on the receiver (its leave was netted out)."""
    channel = f"test-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        a = node(make_app, channel, WS_PRESENCE_INTERVAL=3600)  # flushed by hand
        a_server = await stack.enter_async_context(serve(a))
        x = await WSTestClient.connect(a_server.ws_url())
        await x.send("join", ["lobby"])
        await x.expect("joined")  # joined, not yet published
        b = node(make_app, channel)
        await stack.enter_async_context(serve(b))
        # B's HELLO makes A send it a transfer, which lists x.
        await until(lambda: b.ctx.ws._tracker.table.count("lobby")[0] == 1)
        await x.close()
        await until(lambda: not a.ctx.ws.connections)
        a.ctx.ws._tracker.flush()
        await until(lambda: b.ctx.ws._tracker.table.count("lobby")[0] == 0)


async def test_a_peer_dying_with_a_big_room_sends_each_survivor_one_diff(
    make_app: AppFactory,
) -> None:
    """A process holding 800 members of a room is killed: each member left
    elsewhere gets a few presence frames (one per interval), not 800."""
    channel = f"test-{uuid.uuid4().hex[:12]}"
    env = {
        "SANIC_WS_BACKPLANE": SHARED_URL,
        "SANIC_WS_REDIS_CHANNEL": channel,
        "TEST_RELAY_BEAT": "0.2",
    }
    doomed = SanicProcess("tests.apps.cluster:app", "--single-process", env=env)
    app = node(make_app, channel)
    async with AsyncExitStack() as stack:
        here = await stack.enter_async_context(serve(app))
        await stack.enter_async_context(doomed)
        watchers = []
        for _ in range(3):
            watcher = await WSTestClient.connect(here.ws_url())
            await watcher.send("join", ["big:room"])
            await watcher.expect("joined")
            watchers.append(watcher)
        raws = []
        join = ujson.dumps({"type": "do", "data": {"op": "join", "room": "big:room"}})
        for _ in range(800):
            raw = await RawClient.connect("127.0.0.1", doomed.port)
            raw.send_frame(Opcode.TEXT, join.encode())
            raws.append(raw)
        table = app.ctx.ws._tracker.table
        await until(lambda: table.count("big:room")[0] == 803, 60)
        # Everything so far told and read: from here on, count what each
        # watcher gets.
        app.ctx.ws._tracker.flush()
        await app.ctx.ws.broadcast("mark")
        for watcher in watchers:
            await watcher.expect("mark", units(10))
            watcher._skipped.clear()
        os.kill(doomed.pid, signal.SIGKILL)
        await until(lambda: table.count("big:room")[0] == 3)
        app.ctx.ws._tracker.flush()  # whatever is pending goes out now
        await app.ctx.ws.broadcast("after")
        for watcher in watchers:
            frames = []
            while True:
                frame = await watcher.recv(units(10))
                assert isinstance(frame, Envelope)
                if frame.type == "after":
                    break
                frames.append(frame)
            assert all(f.type == "presence.diff" for f in frames), frames
            assert 1 <= len(frames) <= 3
            left = sum(
                len(metas) for f in frames for metas in f.data["leaves"].values()
            )
            assert left == 800
        for watcher in watchers:
            await watcher.close()
        for raw in raws:
            raw.close_socket()


async def test_a_worker_blocked_for_3s_is_not_declared_dead() -> None:
    async with cluster(env={"TEST_RELAY_BEAT": "0.5"}) as c:
        await c.cover(per_worker=1)
        watcher = c.on(worker_names()[0])[0]
        blocked = c.on(worker_names()[1])[0]
        for member in (watcher, blocked):
            await member.do("join", room="lobby")
        await presence_of(watcher, blocked.id)
        await blocked.do("block", seconds=3)
        await watcher.do("broadcast", data="after")
        while True:
            frame = await watcher.ws.recv(units(10))
            assert isinstance(frame, Envelope)
            if frame.type == "b":
                break
            # Nobody left: no diff with leaves came before the marker.
            assert frame.type != "presence.diff" or not frame.data["leaves"], frame
        status = await watcher.do("status")
        assert status["membership"]["peers"] == len(worker_names()) - 1


async def test_tabs_and_counts_across_workers() -> None:
    async with cluster() as c:
        await c.cover(per_worker=1)
        watcher = c.on(worker_names()[0])[0]
        await watcher.do("join", room="lobby")
        # Two tabs of alice, on two workers: one key with two metas.
        tabs: list[Client] = []
        while len({t.worker for t in tabs}) < 2:
            tab = await c.connect(user="alice")
            if tab.worker in {t.worker for t in tabs}:
                continue
            await tab.do("join", room="lobby")
            await presence_of(watcher, tab.id)
            tabs.append(tab)
        members = await watcher.do("members", room="lobby")
        assert sorted(members) == sorted([watcher.id, *(t.id for t in tabs)])
        # Counted presence: every member hears the room's total.
        counted = [c.on(w)[0] for w in worker_names()]
        for i, member in enumerate(counted, 1):
            await member.do("join", room="counted:x")
            for present in counted[:i]:
                while True:
                    frame = await present.ws.expect("presence.count", units(10))
                    if frame.data["connections"] == i:
                        break
