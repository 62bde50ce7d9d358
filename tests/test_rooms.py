"""Rooms, users and presence in one process (local delivery)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sanic import Request, Sanic
from sanic_ext import Extend

from sanic_ws_ext import Accept, Connection, Envelope, WSExtension, WSHandlers
from sanic_ws_ext.testing import WSTestClient, serve

AppFactory = Callable[..., Sanic[Any, Any]]


def build(make_app: AppFactory, **config: Any) -> Sanic[Any, Any]:
    app = make_app(**config)
    Extend(app).register(WSExtension)
    handlers = WSHandlers(app)

    @handlers.verify
    async def identify(request: Request) -> Accept:
        return Accept(user=request.args.get("user"))

    @handlers.on_connect
    async def hello(conn: Connection) -> None:
        await conn.send("hello", conn.id)

    @handlers.on("join")
    async def join(conn: Connection, msg: Envelope) -> None:
        await conn.join(msg.data)

    @handlers.on("leave")
    async def leave(conn: Connection, msg: Envelope) -> None:
        await conn.leave(msg.data)

    @handlers.on("say")
    async def say(conn: Connection, msg: Envelope) -> None:
        await conn.manager.publish(msg.data["room"], "said", msg.data["text"])

    return app


async def connect(url: str) -> tuple[WSTestClient, str]:
    client = await WSTestClient.connect(url)
    return client, (await client.expect("hello")).data


async def test_rooms_presence_and_users(make_app: AppFactory) -> None:
    app = build(make_app)
    async with serve(app) as server:
        ws = app.ctx.ws
        a, a_id = await connect(server.ws_url() + "?user=alice")
        b, b_id = await connect(server.ws_url() + "?user=bob")
        c, _ = await connect(server.ws_url() + "?user=alice")
        await a.send("join", "r")
        assert (await a.expect("presence.join")).data == {
            "room": "r",
            "id": a_id,
            "user": "alice",
            "worker": "main",
        }
        await b.send("join", "r")
        assert (await a.expect("presence.join")).data["id"] == b_id
        assert (await b.expect("presence.join")).data["id"] == b_id
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
        await b.send("leave", "r")
        assert (await a.expect("presence.leave")).data["id"] == b_id
        await b.send("join", "r")
        await a.expect("presence.join")
        await b.close()  # disconnecting leaves every room
        assert (await a.expect("presence.leave")).data["id"] == b_id
        assert [m.id for m in await ws.members("r")] == [a_id]
        assert await ws.count() == 2
        await a.close()
        await c.close()


async def test_presence_events_can_be_turned_off(make_app: AppFactory) -> None:
    app = build(make_app, WS_PRESENCE_EVENTS=False)
    async with serve(app) as server:
        a, _ = await connect(server.ws_url())
        await a.send("join", "r")
        await a.send("say", {"room": "r", "text": "x"})
        assert (await a.recv()).type == "said"  # type: ignore[union-attr]
        await a.close()


async def test_clients_join_rooms_only_where_a_guard_allows(
    make_app: AppFactory,
) -> None:
    closed = build(make_app)  # no on_join guard: the server decides alone
    async with serve(closed) as server:
        a, _ = await connect(server.ws_url())
        await a.send("room.join", {"room": "r"})
        assert (await a.expect("error")).data["code"] == "room_refused"
        assert await closed.ctx.ws.rooms() == {}
        await a.close()

    guarded = build(make_app)
    asked: list[tuple[str, str]] = []

    @WSHandlers(guarded).on_join
    async def only_public(conn: Connection, room: str) -> bool:
        asked.append((conn.id, room))
        return room.startswith("public.")

    async with serve(guarded) as server:
        a, a_id = await connect(server.ws_url())
        await a.send("room.join", {"room": "public.news"})
        assert (await a.expect("room.joined")).data == {"room": "public.news"}
        assert (await a.expect("presence.join")).data["id"] == a_id
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
    app = build(make_app)

    @WSHandlers(app).on_join
    async def anything(conn: Connection, room: str) -> bool:
        return True

    async with serve(app) as server:
        a, _ = await connect(server.ws_url())
        await a.send("join", "tenant.42")  # the app's own handler: conn.join
        await a.expect("presence.join")
        await a.send("room.leave", {"room": "tenant.42"})
        assert (await a.expect("room.left")).data == {"room": "tenant.42"}
        assert await app.ctx.ws.rooms() == {"tenant.42": 1}
        await a.close()
