"""Rooms, users and presence in one process (local delivery)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic_ext import Extend

from sanic_ws_ext import Accept, Connection, Envelope, WSExtension, WSHandlers
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units

AppFactory = Callable[..., Sanic[Any, Any]]


def build(make_app: AppFactory, **config: Any) -> tuple[Sanic[Any, Any], WSHandlers]:
    app = make_app(**config)
    Extend(app).register(WSExtension)
    handlers = WSHandlers(app)

    @handlers.verify
    async def identify(request: Request) -> Accept:
        name = request.args.get("name")
        return Accept(
            user=request.args.get("user"), presence={"name": name} if name else {}
        )

    @handlers.on_connect
    async def hello(conn: Connection) -> None:
        await conn.send("hello", conn.id)

    @handlers.on("join")
    async def join(conn: Connection, msg: Envelope) -> None:
        await conn.join(msg.data)
        await conn.send("joined", msg.data)

    @handlers.on("leave")
    async def leave(conn: Connection, msg: Envelope) -> None:
        await conn.leave(msg.data)
        await conn.send("left", msg.data)

    @handlers.on("say")
    async def say(conn: Connection, msg: Envelope) -> None:
        await conn.manager.publish(msg.data["room"], "said", msg.data["text"])

    @handlers.on("status")
    async def status(conn: Connection, msg: Envelope) -> None:
        await conn.update_presence({"name": "Ann", "status": msg.data})

    return app, handlers


async def connect(url: str) -> tuple[WSTestClient, str]:
    client = await WSTestClient.connect(url)
    return client, (await client.expect("hello")).data


async def test_rooms_and_users(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        ws = app.ctx.ws
        a, a_id = await connect(server.ws_url() + "?user=alice")
        b, b_id = await connect(server.ws_url() + "?user=bob")
        c, _ = await connect(server.ws_url() + "?user=alice")
        for client in (a, b):
            await client.send("join", "r")
            await client.expect("joined")
        assert sorted(m.id for m in await ws.members("r")) == sorted([a_id, b_id])
        assert await ws.rooms() == {"r": 2}
        assert await ws.users() == {"alice": 2, "bob": 1}
        await c.send("say", {"room": "r", "text": "hi room"})
        assert (await a.expect("said")).data == "hi room"
        assert (await b.expect("said")).data == "hi room"
        await ws.send_user("alice", "dm", "for alice")
        assert (await a.expect("dm")).data == "for alice"
        assert (await c.expect("dm")).data == "for alice"
        # c got no room message: the next thing after the dm is our marker.
        await ws.broadcast("marker")
        assert (await c.recv()).type == "marker"  # type: ignore[union-attr]
        # An undeclared room has no presence: a got nothing about b.
        assert (await a.recv()).type == "marker"  # type: ignore[union-attr]
        await b.send("leave", "r")
        await b.expect("left")
        assert [m.id for m in await ws.members("r")] == [a_id]
        await b.close()
        assert await ws.count() == 2
        await a.close()
        await c.close()


async def test_a_connections_rooms_are_a_set_like_view_of_untracked_strings(
    make_app: AppFactory,
) -> None:
    """``conn.rooms`` reads like a set; underneath, a dict of strings that the
    garbage collector does not walk (one object less per connection in every
    full collection), and nothing at all while the connection is in no room."""
    app, _ = build(make_app)
    async with serve(app) as server:
        ws = app.ctx.ws
        a, a_id = await connect(server.ws_url())
        conn = ws.get(a_id)
        assert conn is not None
        assert conn.rooms == set() and not conn.rooms and conn._rooms is None
        for room in ("r", "s"):
            await a.send("join", room)
            await a.expect("joined")
        assert conn.rooms == {"r", "s"} and "r" in conn.rooms and len(conn.rooms) == 2
        assert conn.rooms & {"s", "t"} == {"s"} and conn.rooms - {"r"} == {"s"}
        assert conn._rooms is not None and not gc.is_tracked(conn._rooms)
        for room in ("r", "s"):
            await a.send("leave", room)
            await a.expect("left")
        assert conn.rooms == set() and conn._rooms is None
        await a.close()


async def test_full_presence_is_state_then_diffs_keyed_by_user(
    make_app: AppFactory,
) -> None:
    app, handlers = build(make_app)
    handlers.room("doc:{doc_id}", presence="full")
    async with serve(app) as server:
        ws = app.ctx.ws
        a, _ = await connect(server.ws_url() + "?user=alice&name=Alice")
        await a.send("join", "doc:1")
        state = (await a.expect("presence.state", units(5))).data
        assert state["room"] == "doc:1"
        ((meta,),) = state["users"].values()
        assert list(state["users"]) == ["alice"]
        assert meta["name"] == "Alice" and isinstance(meta["ref"], str)
        # No connection id or worker unless the room exposes them.
        assert set(meta) == {"ref", "name"}

        b, b_id = await connect(server.ws_url() + "?user=bob&name=Bob")
        await b.send("join", "doc:1")
        diff = (await a.expect("presence.diff", units(5))).data
        assert diff["room"] == "doc:1" and diff["leaves"] == {}
        assert [m["name"] for m in diff["joins"]["bob"]] == ["Bob"]
        state = (await b.expect("presence.state", units(5))).data
        assert sorted(state["users"]) == ["alice", "bob"]

        # A second tab of alice: the same key, a second meta.
        a2, _ = await connect(server.ws_url() + "?user=alice&name=Alice")
        await a2.send("join", "doc:1")
        for client in (a, b):
            diff = (await client.expect("presence.diff", units(5))).data
            assert list(diff["joins"]) == ["alice"] and diff["leaves"] == {}
        assert len((await a2.expect("presence.state")).data["users"]["alice"]) == 2
        members = await ws.members("doc:1")
        assert sorted(m.user for m in members) == ["alice", "alice", "bob"]
        assert {m.presence["name"] for m in members if m.id == b_id} == {"Bob"}

        # A metadata update: the old ref leaves and a new one joins, one key.
        await b.send("status", "away")
        diff = (await a.expect("presence.diff", units(5))).data
        assert list(diff["joins"]) == list(diff["leaves"]) == ["bob"]
        assert diff["joins"]["bob"][0]["status"] == "away"
        assert diff["joins"]["bob"][0]["ref"] != diff["leaves"]["bob"][0]["ref"]
        assert set(diff["leaves"]["bob"][0]) == {"ref"}  # the ref alone

        # One tab leaving: alice is still there with one meta.
        await a2.close()
        diff = (await a.expect("presence.diff", units(5))).data
        assert list(diff["leaves"]) == ["alice"] and diff["joins"] == {}
        assert len(next(iter(diff["leaves"].values()))) == 1
        await b.close()
        diff = (await a.expect("presence.diff", units(5))).data
        assert list(diff["leaves"]) == ["bob"]
        assert [m.user for m in await ws.members("doc:1")] == ["alice"]
        await a.close()


async def test_changes_within_an_interval_are_one_frame(make_app: AppFactory) -> None:
    """However many come and go within an interval, each member gets one frame."""
    app, handlers = build(make_app, WS_PRESENCE_INTERVAL=3600)  # flushed by hand
    handlers.room("lobby", presence="full")
    async with serve(app) as server:
        tracker = app.ctx.ws._tracker
        first, _ = await connect(server.ws_url() + "?user=first")
        await first.send("join", "lobby")
        await first.expect("joined")
        tracker.flush()
        await first.expect("presence.state")
        others = [
            (await connect(server.ws_url() + f"?user=u{i}"))[0] for i in range(20)
        ]
        for client in others:
            await client.send("join", "lobby")
            await client.expect("joined")
        # One that came and went within the interval is never mentioned.
        ghost, _ = await connect(server.ws_url() + "?user=ghost")
        await ghost.send("join", "lobby")
        await ghost.expect("joined")
        await ghost.send("leave", "lobby")
        await ghost.expect("left")
        tracker.flush()
        diff = (await first.expect("presence.diff")).data
        assert sorted(diff["joins"]) == sorted(f"u{i}" for i in range(20))
        assert diff["leaves"] == {}
        for client in others:  # newcomers get the state, not the diff
            state = (await client.expect("presence.state")).data
            assert len(state["users"]) == 21
        # Nothing more: the next frame is a marker.
        await app.ctx.ws.broadcast("marker")
        assert (await first.recv()).type == "marker"  # type: ignore[union-attr]
        assert (await others[0].recv()).type == "marker"  # type: ignore[union-attr]
        for client in (first, ghost, *others):
            await client.close()


@pytest.mark.parametrize("next_interval_at_once", [False, True])
async def test_rooms_are_told_a_pass_at_a_time_and_a_late_joiner_gets_the_next_state(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, next_interval_at_once: bool
) -> None:
    """Members are told a room per loop pass here (the work per pass at its
    least); one who joins a room while it waits its turn is not sent that
    interval's diff (it holds nothing to apply it to) but the next state,
    also when the next interval ends before the room's turn came."""
    monkeypatch.setattr("sanic_ws_ext.telling._TELL_WORK", 1)
    app, handlers = build(make_app, WS_PRESENCE_INTERVAL=3600)  # flushed by hand
    handlers.room("a", presence="full")
    handlers.room("b", presence="full")
    async with serve(app) as server:
        ws = app.ctx.ws
        tracker = ws._tracker
        first, _ = await connect(server.ws_url() + "?user=first")
        for room in ("a", "b"):
            await first.send("join", room)
            await first.expect("joined")
        tracker.flush()
        for _ in range(2):
            await first.expect("presence.state")
        second, _ = await connect(server.ws_url() + "?user=second")
        for room in ("a", "b"):
            await second.send("join", room)
            await second.expect("joined")
        late, late_id = await connect(server.ws_url() + "?user=late")
        tracker.flush()  # tells "a" now, "b" in the next pass
        ws._sessions.join(ws.connections[late_id], "b")  # before b's turn
        if next_interval_at_once:
            tracker.flush()
        diffs = {}
        for _ in range(2):
            diff = (await first.expect("presence.diff", units(5))).data
            diffs[diff["room"]] = diff
        assert sorted(diffs) == ["a", "b"]
        assert all(list(d["joins"]) == ["second"] for d in diffs.values())
        states = [(await second.expect("presence.state")).data for _ in range(2)]
        assert sorted(s["room"] for s in states) == ["a", "b"]
        if not next_interval_at_once:
            tracker.flush()
        state = (await late.expect("presence.state", units(5))).data
        assert state["room"] == "b"
        assert sorted(state["users"]) == ["first", "late", "second"]
        # Nothing before it or after it: the next frame is a marker.
        await ws.broadcast("marker")
        assert (await late.recv()).type == "marker"  # type: ignore[union-attr]
        for client in (first, second, late):
            await client.close()


async def test_counted_presence(make_app: AppFactory) -> None:
    app, handlers = build(make_app)
    handlers.room("stream:{id}", presence="counts")
    async with serve(app) as server:
        a, _ = await connect(server.ws_url())
        await a.send("join", "stream:1")
        assert (await a.expect("presence.count", units(5))).data == {
            "room": "stream:1",
            "connections": 1,
        }
        b, _ = await connect(server.ws_url())
        await b.send("join", "stream:1")
        assert (await a.expect("presence.count", units(5))).data["connections"] == 2
        assert (await b.expect("presence.count", units(5))).data["connections"] == 2
        await b.close()
        assert (await a.expect("presence.count", units(5))).data["connections"] == 1
        await a.close()


async def test_declared_rooms_and_their_guards(make_app: AppFactory) -> None:
    app, handlers = build(make_app)
    asked: list[tuple[str, str]] = []

    @handlers.room("doc:{doc_id}", presence="full")
    async def may_open(conn: Connection, room: str, doc_id: str) -> bool:
        asked.append((room, doc_id))
        return doc_id != "secret"

    handlers.room("lobby", client_join=True)
    handlers.room("admin")  # declared, clients may not join by themselves

    async with serve(app) as server:
        a, _ = await connect(server.ws_url() + "?user=ann")
        await a.send("room.join", {"room": "doc:7"})
        assert (await a.expect("room.joined")).data == {"room": "doc:7"}
        assert list((await a.expect("presence.state", units(5))).data["users"]) == [
            "ann"
        ]
        await a.send("room.join", {"room": "doc:secret"})
        assert (await a.expect("error")).data["code"] == "room_refused"
        assert asked == [("doc:7", "7"), ("doc:secret", "secret")]
        await a.send("room.join", {"room": "lobby"})
        assert (await a.expect("room.joined")).data == {"room": "lobby"}
        for refused in ("admin", "undeclared"):
            await a.send("room.join", {"room": refused})
            assert (await a.expect("error")).data["code"] == "room_refused"
        assert await app.ctx.ws.rooms() == {"doc:7": 1, "lobby": 1}
        await a.close()


def test_room_declarations_are_checked() -> None:
    handlers = WSHandlers()
    with pytest.raises(ValueError, match="presence"):
        handlers.room("x", presence="some")
    with pytest.raises(ValueError, match="repeats"):
        handlers.room("a:{id}:{id}")
    with pytest.raises(TypeError):
        handlers.room("")


async def test_undeclared_rooms_use_on_join_guards(make_app: AppFactory) -> None:
    closed, _ = build(make_app)  # no on_join guard: the server decides alone
    async with serve(closed) as server:
        a, _ = await connect(server.ws_url())
        await a.send("room.join", {"room": "r"})
        assert (await a.expect("error")).data["code"] == "room_refused"
        assert await closed.ctx.ws.rooms() == {}
        await a.close()

    guarded, handlers = build(make_app)
    asked: list[tuple[str, str]] = []

    @handlers.on_join
    async def only_public(conn: Connection, room: str) -> bool:
        asked.append((conn.id, room))
        return room.startswith("public.")

    async with serve(guarded) as server:
        a, a_id = await connect(server.ws_url())
        await a.send("room.join", {"room": "public.news"})
        assert (await a.expect("room.joined")).data == {"room": "public.news"}
        await a.send("room.join", {"room": "private"})
        assert (await a.expect("error")).data["code"] == "room_refused"
        await a.send("room.join", {"room": ""})
        assert (await a.expect("error")).data["code"] == "invalid_envelope"
        assert asked == [(a_id, "public.news"), (a_id, "private")]
        assert await guarded.ctx.ws.rooms() == {"public.news": 1}
        await a.send("room.leave", {"room": "public.news"})
        assert (await a.expect("room.left")).data == {"room": "public.news"}
        assert await guarded.ctx.ws.rooms() == {}
        await a.close()


async def test_a_client_cannot_leave_a_room_the_server_chose(
    make_app: AppFactory,
) -> None:
    app, handlers = build(make_app)
    handlers.room("tenant:{id}", client_join=True)
    async with serve(app) as server:
        a, _ = await connect(server.ws_url())
        await a.send("join", "tenant:42")  # the app's own handler: conn.join
        await a.expect("joined")
        await a.send("room.leave", {"room": "tenant:42"})
        assert (await a.expect("room.left")).data == {"room": "tenant:42"}
        assert await app.ctx.ws.rooms() == {"tenant:42": 1}
        await a.close()


async def test_presence_metadata_is_bounded(make_app: AppFactory) -> None:
    app, handlers = build(make_app, WS_PRESENCE_META_MAX=64)
    errors: list[Exception] = []

    @handlers.on("big")
    async def big(conn: Connection, msg: Envelope) -> None:
        try:
            await conn.update_presence({"bio": "x" * 100})
        except ValueError as exc:
            errors.append(exc)
        await conn.send("done")

    async with serve(app) as server:
        a, _ = await connect(server.ws_url())
        await a.send("big")
        await a.expect("done")
        assert "WS_PRESENCE_META_MAX" in str(errors[0])
        await a.close()
        # From the verify hook, before the upgrade: the app's error, a 500.
        with pytest.raises(Exception, match="500"):
            await WSTestClient.connect(server.ws_url() + "?name=" + "n" * 100)
    await asyncio.sleep(0)
