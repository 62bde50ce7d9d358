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

    @handlers.on("meta")
    async def meta(conn: Connection, msg: Envelope) -> None:
        await conn.update_presence({"x": msg.data})
        await conn.send("meta")

    return app


async def view_of(client: WSTestClient, room: str, keys: int) -> dict[str, set[str]]:
    """``client``'s view of ``room`` (key -> refs), from its state and the
    diffs after it, once it has ``keys`` keys. A member that joins while its
    process is still meeting its peers may get the state in two steps."""
    view: dict[str, set[str]] | None = None
    while view is None or len(view) != keys:
        frame = await client.recv()
        assert isinstance(frame, Envelope)
        if frame.type not in ("presence.state", "presence.diff"):
            continue
        if frame.data["room"] != room:
            continue
        if frame.type == "presence.state":
            view = {k: {m["ref"] for m in ms} for k, ms in frame.data["users"].items()}
            continue
        assert view is not None, "a diff before the state"
        for key, metas in frame.data["leaves"].items():
            view[key] -= {m["ref"] for m in metas}
            if not view[key]:
                del view[key]
        for key, metas in frame.data["joins"].items():
            view.setdefault(key, set()).update(m["ref"] for m in metas)
    return view


async def of_room(client: WSTestClient, type_: str, room: str) -> Envelope:
    """The next ``type_`` envelope about ``room`` (others of it are skipped)."""
    while True:
        envelope = await client.expect(type_)
        if envelope.data["room"] == room:
            return envelope


async def test_a_state_larger_than_max_publish_reaches_a_new_follower(
    make_app: AppFactory,
) -> None:
    """A's part of a room is about 10 kB with WS_MAX_PUBLISH at 8 KiB (parts
    of 3.5 kB): a node whose first member joins later gets all of it; it
    holds only the rooms it has members of, and A gets B's member."""
    channel = f"test-{uuid.uuid4().hex[:12]}"
    small = {"WS_MAX_PUBLISH": 8 * 1024, "WS_BACKPLANE_BUFFER": 1 << 20}
    rooms = [f"r:{i}" for i in range(10)]
    async with AsyncExitStack() as stack:
        a = node(make_app, channel, **small)
        a_server = await stack.enter_async_context(serve(a))
        clients = []
        for _ in range(10):
            client = await WSTestClient.connect(a_server.ws_url())
            await client.send("meta", "x" * 900)  # an entry is about 1 kB
            await client.expect("meta")
            await client.send("join", ["big:one", *rooms])
            await client.expect("joined")
            clients.append(client)
        assert len(a.ctx.ws._tracker.table) == 110

        b = node(make_app, channel, **small)
        b_server = await stack.enter_async_context(serve(b))
        late = await WSTestClient.connect(b_server.ws_url())
        await late.send("join", ["big:one", *rooms[:5]])
        await late.expect("joined")
        await view_of(late, "big:one", 11)  # anonymous: a key each
        # B follows 6 rooms: A's 10 entries of each, and its own.
        await until(lambda: len(b.ctx.ws._tracker.table) == 6 * 11)
        await until(lambda: len(a.ctx.ws._tracker.table) == 110 + 6)
        members = await b.ctx.ws.members("r:3")
        assert sorted(m.id for m in members) == sorted(
            m.id for m in await a.ctx.ws.members("r:3")
        )
        assert len(members) == 11
        # A room B does not follow is asked for, with each one's presence.
        far = await b.ctx.ws.members("r:7")
        assert len(far) == 10 and all(m.presence == {"x": "x" * 900} for m in far)
        assert not b.ctx.ws._tracker.table.count("r:7")[0]
        for client in (*clients, late):
            await client.close()


async def test_a_leave_reaches_a_follower_that_an_answer_told_of_the_join(
    make_app: AppFactory,
) -> None:
    """An entry not published yet when a follower asked: the answer lists it
    (its join is published first), and its leave then reaches the follower
    (a ghost before issue 14's review, when a leave could be netted out)."""
    channel = f"test-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        a = node(make_app, channel, WS_PRESENCE_INTERVAL=3600)  # flushed by hand
        a_server = await stack.enter_async_context(serve(a))
        x = await WSTestClient.connect(a_server.ws_url())
        await x.send("join", ["lobby"])
        await x.expect("joined")  # joined, not yet published
        b = node(make_app, channel)
        b_server = await stack.enter_async_context(serve(b))
        y = await WSTestClient.connect(b_server.ws_url())
        await y.send("join", ["lobby"])
        await y.expect("joined")
        # B's first member makes B ask; A's answer lists x.
        await view_of(y, "lobby", 2)
        await x.close()
        await until(lambda: not a.ctx.ws.connections)
        a.ctx.ws._tracker.flush()
        diff = await of_room(y, "presence.diff", "lobby")
        assert len(diff.data["leaves"]) == 1
        await until(lambda: b.ctx.ws._tracker.table.count("lobby")[0] == 1)
        await y.close()


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
