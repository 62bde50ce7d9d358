"""History rooms in one process: positions, recovery, bad input (issue 17)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ujson
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import (
    Connection,
    Envelope,
    History,
    WSExtension,
    WSHandlers,
)
from sanic_ws_ext.history import Position, RoomLog, parse_since, stamp
from sanic_ws_ext.testing import WSTestClient, serve

from .redisproc import RedisServer

AppFactory = Callable[..., Sanic[Any, Any]]


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    """One private redis-server for the module's Redis runs (never the shared one)."""
    server = RedisServer()
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture(params=["process", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where history is kept: the process's own sequencer, or Redis (the
    backplane's mode), on a channel of the test's own."""
    if request.param == "process":
        return {}
    server: RedisServer = request.getfixturevalue("private_redis")
    return {
        "WS_BACKPLANE": server.url,
        "WS_REDIS_CHANNEL": f"t-{uuid.uuid4().hex[:12]}",
    }


def build(make_app: AppFactory, **config: Any) -> Sanic[Any, Any]:
    app = make_app(**config)
    Extend(app).register(WSExtension)
    chat = WSHandlers(app)
    chat.room("chat:{id}", client_join=True, history=History(size=20))
    chat.room("ticker:{sym}", client_join=True, history="latest")
    chat.room("big:{id}", client_join=True, history=History(size=5000))
    chat.room("plain", client_join=True)

    @chat.on("say")
    async def say(conn: Connection, msg: Envelope) -> None:
        position = await conn.manager.publish(msg.data["room"], "said", msg.data["n"])
        await conn.send("said.at", None if position is None else position.as_dict())

    return app


async def said(client: WSTestClient, n: int) -> list[Any]:
    return [(await client.expect("said")).data for _ in range(n)]


# -- the pure parts --------------------------------------------------------------


def test_a_log_numbers_keeps_and_forgets() -> None:
    log = RoomLog(0.0)
    spec = History(size=3)
    for i in range(5):
        log.append("r", ujson.dumps({"type": "t", "data": i}).encode(), 0.0, spec)
    assert log.position == Position(5, log.epoch)
    assert [
        ujson.loads(e)["offset"] for e in log.after(Position(2, log.epoch)) or []
    ] == [
        3,
        4,
        5,
    ]
    assert log.after(Position(1, log.epoch)) is None  # offset 2 is gone
    assert log.after(Position(5, log.epoch)) == []
    assert log.after(Position(6, log.epoch)) is None  # ahead of the sequencer
    assert log.after(Position(4, "another")) is None
    log.expire(10.0, 5.0)
    assert not log.entries and log.bytes == 0


def test_stamp_adds_the_position_as_top_level_keys() -> None:
    body = b'{"type":"t","data":{"room":"inner"},"timestamp":1}'
    assert ujson.loads(stamp(body, "r/\u00e9", 7, "e1")) == {
        "room": "r/\u00e9",
        "offset": 7,
        "epoch": "e1",
        "type": "t",
        "data": {"room": "inner"},
        "timestamp": 1,
    }


@pytest.mark.parametrize(
    "since",
    [
        [1, "e"],
        {"offset": "1", "epoch": "e"},
        {"offset": -1, "epoch": "e"},
        {"offset": True, "epoch": "e"},
        {"offset": 1.5, "epoch": "e"},
        {"offset": 1, "epoch": 5},
        {"offset": 1, "epoch": ""},
        {"offset": 1, "epoch": "x" * 65},
        {"offset": 1},
    ],
)
def test_a_bad_since_is_refused(since: Any) -> None:
    with pytest.raises(ValueError):
        parse_since(since)


def test_history_declarations() -> None:
    assert History.of(None) is None
    assert History.of(10) == History(10)
    assert History.of("latest") == History(1, on_join=1)
    for bad in (0, -1, True, "many", 1.5):
        with pytest.raises((TypeError, ValueError)):
            History.of(bad)
    with pytest.raises(ValueError):
        History(5, ttl=0)
    with pytest.raises(ValueError):
        History(5, on_join=6)


# -- one process, served -----------------------------------------------------------


async def test_publish_returns_positions_and_members_get_them(
    make_app: AppFactory, store: dict[str, Any]
) -> None:
    app = build(make_app, **store)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        joined = await client.join("chat:1")
        assert joined["room"] == "chat:1" and "recovered" not in joined
        epoch = joined["position"]["epoch"]
        assert joined["position"] == {"offset": 0, "epoch": epoch}
        first = await app.ctx.ws.publish("chat:1", "said", "a")
        second = await app.ctx.ws.publish("chat:1", "said", "b")
        assert (first.offset, second.offset) == (1, 2)
        assert first.epoch == second.epoch == epoch
        raw = ujson.loads(await client.connection.recv())
        assert raw["room"] == "chat:1" and raw["offset"] == 1
        assert raw["epoch"] == epoch and raw["data"] == "a"
        assert (await client.expect("said")).data == "b"
        assert client.positions["chat:1"] == {"offset": 2, "epoch": epoch}
        kept = app.ctx.ws.status()["history"]["store"]
        assert kept == ("redis" if store else "process")
        # A plain room is unchanged: no position.
        assert await app.ctx.ws.publish("plain", "said", "c") is None


async def test_a_client_that_reconnects_gets_what_it_missed(
    make_app: AppFactory, store: dict[str, Any]
) -> None:
    app = build(make_app, **store)
    ws = app.ctx
    async with serve(app) as server:
        async with await WSTestClient.connect(server.ws_url()) as first:
            await first.join("chat:1")
            for i in range(3):
                await ws.ws.publish("chat:1", "said", i)
            assert await said(first, 3) == [0, 1, 2]
            positions = dict(first.positions)
        for i in range(3, 8):
            await ws.ws.publish("chat:1", "said", i)
        async with await WSTestClient.connect(server.ws_url()) as again:
            again.positions = positions
            joined = await again.join("chat:1")
            assert joined["recovered"] is True
            assert joined["position"]["offset"] == 8
            await ws.ws.publish("chat:1", "said", 8)
            assert await said(again, 6) == [3, 4, 5, 6, 7, 8]
            assert again.duplicates == again.gaps == 0


async def test_a_room_the_server_joined_is_resumed_after_a_reconnect(
    make_app: AppFactory,
) -> None:
    """A history room the server puts a connection in (here in on_connect, a
    room clients may not join) tells it the room's position, and its client
    resumes from its own after a reconnect; the guards are not asked again,
    and rooms it is not in stay closed to it."""
    app = build(make_app)
    chat = WSHandlers(app)
    chat.room("feed:{user}", history=History(size=20))  # no client joins

    @chat.on_connect
    async def subscribe(conn: Connection) -> None:
        await conn.join("feed:1")

    ws = app.ctx
    async with serve(app) as server:
        async with await WSTestClient.connect(server.ws_url()) as first:
            told = (await first.expect("room.joined")).data
            assert told["room"] == "feed:1" and "recovered" not in told
            epoch = told["position"]["epoch"]
            assert told["position"] == {"offset": 0, "epoch": epoch}
            for i in range(3):
                await ws.ws.publish("feed:1", "said", i)
            assert await said(first, 3) == [0, 1, 2]
            positions = dict(first.positions)
        for i in range(3, 8):
            await ws.ws.publish("feed:1", "said", i)
        async with await WSTestClient.connect(server.ws_url()) as again:
            told = (await again.expect("room.joined")).data
            assert told == {"room": "feed:1", "position": {"offset": 8, "epoch": epoch}}
            # What the browser client does on its own: ahead of what it has,
            # resume from its own position.
            again.positions = positions
            resumed = await again.join("feed:1")
            assert resumed["recovered"] is True
            assert resumed["position"]["offset"] == 8
            await ws.ws.publish("feed:1", "said", 8)
            assert await said(again, 6) == [3, 4, 5, 6, 7, 8]
            assert again.duplicates == again.gaps == 0
            # Being in feed:1 opens no other room of the pattern.
            await again.send("room.join", {"room": "feed:2"})
            refused = await again.expect("error")
            assert refused.data["code"] == "room_refused"


async def test_too_old_or_another_epoch_is_not_recovered(
    make_app: AppFactory, store: dict[str, Any]
) -> None:
    app = build(make_app, **store)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        joined = await client.join("chat:2")
        epoch = joined["position"]["epoch"]
        for i in range(30):  # the room keeps 20
            await app.ctx.ws.publish("chat:2", "said", i)
        assert await said(client, 30) == list(range(30))
        for since in (
            {"offset": 1, "epoch": epoch},  # 2 to 10 are gone
            {"offset": 25, "epoch": "old"},
            {"offset": 99, "epoch": epoch},  # ahead of the room
        ):
            await client.send("room.join", {"room": "chat:2", "since": since})
            answer = await client.expect("room.joined")
            assert answer.data == {
                "room": "chat:2",
                "recovered": False,
                "position": {"offset": 30, "epoch": epoch},
            }
        # Still in the room, still served.
        await app.ctx.ws.publish("chat:2", "said", "live")
        assert (await client.expect("said")).data == "live"


async def test_bad_since_gets_an_error_frame_and_nothing_breaks(
    make_app: AppFactory, store: dict[str, Any]
) -> None:
    app = build(make_app, **store)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        for since in ("5", {"offset": -1, "epoch": "e"}, {"offset": 1, "epoch": None}):
            await client.send("room.join", {"room": "chat:3", "since": since})
            error = await client.expect("error")
            assert error.data["code"] == "invalid_envelope"
        await client.send("room.join", {"room": "nowhere", "since": {"offset": 1}})
        assert (await client.expect("error")).data["code"] == "room_refused"
        # A plain room ignores since.
        await client.send("room.join", {"room": "plain", "since": {"offset": 1}})
        assert (await client.expect("room.joined")).data == {"room": "plain"}
        joined = await client.join("chat:3")
        assert joined["position"]["offset"] == 0


async def test_latest_value_is_delivered_on_join(
    make_app: AppFactory, store: dict[str, Any]
) -> None:
    app = build(make_app, **store)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        for price in (10, 11, 12):
            await app.ctx.ws.publish("ticker:ACME", "price", price)
        await client.send("room.join", {"room": "ticker:ACME"})
        latest = await client.recv()  # before room.joined
        assert isinstance(latest, Envelope)
        assert (latest.type, latest.data) == ("price", 12)
        assert (await client.expect("room.joined")).data["position"]["offset"] == 3


async def test_a_replay_past_the_backpressure_limit_is_refused_not_1008(
    make_app: AppFactory, store: dict[str, Any]
) -> None:
    app = build(make_app, **store, WS_MAX_BACKPRESSURE=4096)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        for i in range(10):  # nobody in the room: kept only
            await app.ctx.ws.publish("chat:4", "said", "x" * 1000 + str(i))
        epoch = (await app.ctx.ws.history("chat:4")).position.epoch
        await client.send(
            "room.join", {"room": "chat:4", "since": {"offset": 0, "epoch": epoch}}
        )
        joined = await client.expect("room.joined")
        assert joined.data["recovered"] is False
        assert joined.data["position"] == {"offset": 10, "epoch": epoch}
        await app.ctx.ws.publish("chat:4", "said", "after")
        message = await client.recv()  # the first frame after room.joined
        assert isinstance(message, Envelope) and message.data == "after"
        assert client.duplicates == 0


async def test_server_side_history(make_app: AppFactory, store: dict[str, Any]) -> None:
    app = build(make_app, **store)
    async with serve(app):
        ws = app.ctx.ws
        for i in range(25):
            await ws.publish("chat:5", "said", i)
        page = await ws.history("chat:5")
        assert page.recovered and page.position.offset == 25
        assert [p["data"] for p in page.publications] == list(range(5, 25))
        page = await ws.history(
            "chat:5", since={"offset": 10, "epoch": page.position.epoch}, limit=3
        )
        assert [p["offset"] for p in page.publications] == [11, 12, 13]
        page = await ws.history("chat:5", since=Position(1, page.position.epoch))
        assert not page.recovered and len(page.publications) == 20
        huge = await ws.history("chat:5", limit=10**9)
        assert len(huge.publications) == 20
        for bad in (0, -1, "5", True):
            with pytest.raises(ValueError):
                await ws.history("chat:5", limit=bad)
        with pytest.raises(ValueError):
            await ws.history("plain")
        with pytest.raises(ValueError):
            await ws.history("chat:5", since={"offset": -3, "epoch": "e"})
        with pytest.raises(TypeError):
            await ws.publish("chat:5", raw="raw")


async def test_a_page_is_bounded_in_bytes(
    make_app: AppFactory, store: dict[str, Any]
) -> None:
    app = build(make_app, **store, WS_MAX_PUBLISH=8192)
    async with serve(app):
        ws = app.ctx.ws
        for i in range(10):
            await ws.publish("chat:6", "said", f"{i}" + "x" * 3000)
        latest = await ws.history("chat:6")
        assert [p["offset"] for p in latest.publications] == [9, 10]
        epoch = latest.position.epoch
        first = await ws.history("chat:6", since={"offset": 0, "epoch": epoch})
        assert [p["offset"] for p in first.publications] == [1, 2]
