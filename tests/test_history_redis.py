"""History rooms across machines: Redis is their sequencer (issue 17, part 4).

Real servers and a private Redis (never the shared one): two `sanic
--workers 2` nodes, in-process nodes whose Redis is killed and restarted by
PID, and a private three-master Redis Cluster.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from sanic import Sanic

from sanic_ws_ext import ConnectionManager, SequencerUnavailable
from sanic_ws_ext.delivery import Op, OpKind
from sanic_ws_ext.delivery.redis_history import history_keys
from sanic_ws_ext.delivery.wire import frame_record
from sanic_ws_ext.history import History, Position
from sanic_ws_ext.index import LocalIndex
from sanic_ws_ext.sequencer import Sequencer, _send_kept
from sanic_ws_ext.testing import WSTestClient, serve
from sanic_ws_ext.wire import ConnectionState

from .conftest import units
from .helpers import AppFactory
from .procs import SanicProcess
from .rediscluster import RedisCluster
from .redisproc import RedisServer
from .test_backplane_cluster import cover
from .test_cluster import Client, Cluster
from .test_history import build, said
from .test_history_cluster import Reader, connect_to

ROOM = "chat:1"
BIG = "big:1"  # keeps 5,000
# Beats of a second and the default peer timeouts: a starved 2-core machine
# takes short beats for deafness.
CALM: dict[str, Any] = {
    "WS_RELAY_BEAT": 1.0,
    "WS_PEER_SUSPECT": 3.0,
    "WS_PEER_TIMEOUT": 15.0,
}


@pytest.mark.parametrize(
    "room",
    ["chat:1", "chat:{eu}", "a}b", "{}x", "x{y", "{a}{b}", "\u00e9t\u00e9"],
)
def test_history_keys_live_in_the_room_channels_slot(room: str) -> None:
    channel = "ws:room:" + room
    hash_key, stream_key = history_keys(channel)
    assert {_slot(hash_key), _slot(stream_key)} == {_slot(channel)}
    assert channel in hash_key  # one room's keys are not another's
    if "{" not in room and "}" not in room:
        assert (hash_key, stream_key) == ("{" + channel + "}:h", "{" + channel + "}:s")


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


# -- two `sanic --workers 2` nodes --------------------------------------------------


@asynccontextmanager
async def two_sanic_nodes(url: str) -> AsyncIterator[list[Cluster]]:
    env = {
        "SANIC_WS_BACKPLANE": url,
        "SANIC_WS_REDIS_CHANNEL": f"test-{uuid.uuid4().hex[:12]}",
        "TEST_RELAY_BEAT": "1.0",
    }
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(2):
            server = SanicProcess("tests.apps.history:app", "--workers", "2", env=env)
            made.append(Cluster(await stack.enter_async_context(server)))
        try:
            yield made
        finally:
            for reader in list(Reader.running):
                await reader.stop()
            for node in made:
                for client in node.clients:
                    await client.ws.close()


async def start_publishing(publishers: list[Client]) -> None:
    for publisher in publishers:
        await publisher.ws.send(
            "publish.start", {"room": ROOM, "tag": publisher.worker, "pause": 0.005}
        )
        await publisher.ws.expect("publish.started")


async def stop_publishing(publishers: list[Client]) -> int:
    sent = 0
    for publisher in publishers:
        await publisher.ws.send("publish.stop")
        stopped = (await publisher.ws.expect("publish.stopped", units(20))).data
        assert stopped["failed"] == 0, stopped
        sent += stopped["sent"]
    return sent


async def test_a_client_away_gets_exactly_what_it_missed_on_the_other_node() -> None:
    """Away while 200+ are published from all four workers of two machines;
    back on the other machine: exactly the missed ones in order, then live."""
    async with RedisServer() as redis, two_sanic_nodes(redis.url) as (one, two):
        publishers = await cover(one) + await cover(two)
        assert len({p.worker for p in publishers}) == 4
        away = await one.connect()
        monitor = await two.connect()
        await monitor.ws.join(ROOM)
        await away.ws.join(ROOM)
        watch, mine = Reader(monitor), Reader(away)
        await start_publishing(publishers)
        await mine.until(50)
        await mine.stop()
        await away.ws.close()
        one.clients.remove(away)
        before = list(mine.got)
        positions = dict(away.ws.positions)
        left_at = positions[ROOM]["offset"]
        assert left_at == len(before)
        await watch.until(left_at + 200)  # 200 published while away
        back = await connect_to(two, lambda worker: True)
        back.ws.positions = positions
        joined = await back.ws.join(ROOM)
        assert joined["recovered"] is True, joined
        assert joined["position"]["epoch"] == positions[ROOM]["epoch"]
        caught_up = joined["position"]["offset"]
        assert caught_up >= left_at + 200
        again = Reader(back)
        await again.until(caught_up - left_at + 100)  # and live ones
        sent = await stop_publishing(publishers)
        await watch.until(sent)
        await again.until(sent - left_at)
        assert len(watch.got) == sent  # nothing twice, nothing more
        assert before + again.got == watch.got
        assert back.ws.duplicates == back.ws.gaps == 0
        assert monitor.ws.gaps == monitor.ws.duplicates == 0
        tags = {p.worker for p in publishers}
        for tag in tags:  # each worker's publications in its order
            own = [i for t, i in watch.got if t == tag]
            assert own == list(range(len(own))) and own


# -- nodes in this process, on a Redis killed and restarted -----------------------


@asynccontextmanager
async def history_nodes(
    make_app: AppFactory, url: str, n: int = 2, **config: Any
) -> AsyncIterator[list[tuple[Sanic[Any, Any], str]]]:
    channel = f"test-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(n):
            app = build(
                make_app, WS_BACKPLANE=url, WS_REDIS_CHANNEL=channel, **CALM, **config
            )
            server = await stack.enter_async_context(serve(app))
            made.append((app, server.ws_url()))
        yield made


def manager(app: Sanic[Any, Any]) -> ConnectionManager:
    ws: ConnectionManager = app.ctx.ws
    return ws


async def link_is(apps: list[Sanic[Any, Any]], connected: bool) -> None:
    """Wait until every node's backplane is (not) connected (bounded poll: the
    link's state is reported to hooks, but a test here only reads it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(20)
    while any((manager(a).backplane_state == "connected") != connected for a in apps):
        assert loop.time() < deadline, [manager(a).backplane_state for a in apps]
        await asyncio.sleep(0.02)


async def test_a_redis_restart_starts_a_new_epoch(make_app: AppFactory) -> None:
    """Redis restarts from an older snapshot: the offsets it lost are not
    handed out again (new epoch, ``recovered: false``); while it is down,
    publishing is refused at once and a join is answered without a position."""
    async with (
        RedisServer() as redis,
        history_nodes(make_app, redis.url) as [(a, a_url), (b, _)],
    ):
        async with await WSTestClient.connect(a_url) as member:
            old = (await member.join(ROOM))["position"]
            for i in range(3):
                await manager(b).publish(ROOM, "said", i)
            assert await said(member, 3) == [0, 1, 2]
            # The snapshot Redis will come back from: 3 publications...
            client = aioredis.Redis(port=redis.port)
            try:
                await client.save()
            finally:
                await client.aclose()
            # ...and 2 more it will have forgotten.
            for i in range(3, 5):
                await manager(b).publish(ROOM, "said", i)
            assert await said(member, 2) == [3, 4]
            left = dict(member.positions[ROOM])
            assert left == {"offset": 5, "epoch": old["epoch"]}

            redis.kill()
            await link_is([a, b], connected=False)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(3):
                with pytest.raises(SequencerUnavailable):
                    await asyncio.wait_for(
                        manager(b).publish(ROOM, "said", "lost"), units(5)
                    )
            assert loop.time() - started < units(5)  # refused, not hung
            with pytest.raises(SequencerUnavailable):
                await manager(a).history(ROOM)
            async with await WSTestClient.connect(a_url) as during:
                during.positions = {ROOM: left}
                joined = await during.join(ROOM)
                assert joined == {"room": ROOM, "recovered": False, "position": None}

            await redis.start()  # same port and directory: loads the snapshot
            state_key = history_keys(f"{a.config.WS_REDIS_CHANNEL}:room:{ROOM}")[0]
            client = aioredis.Redis(port=redis.port)
            try:  # offsets 4 and 5 are forgotten: Redis says 3, in the old epoch
                kept = await client.hmget(state_key, ["e", "o"])
            finally:
                await client.aclose()
            assert kept == [old["epoch"].encode(), b"3"]
            await link_is([a, b], connected=True)
            first = await manager(b).publish(ROOM, "said", "after")
            assert first is not None
            assert first.epoch != old["epoch"] and first.offset == 1
            assert int(first.epoch) > int(old["epoch"])  # epochs grow
            got = await member.expect("said")
            assert got.data == "after"
            assert member.positions[ROOM] == first.as_dict()
            assert member.duplicates == member.gaps == 0
        async with await WSTestClient.connect(a_url) as late:
            late.positions = {ROOM: left}
            joined = await late.join(ROOM)
            assert joined == {
                "room": ROOM,
                "recovered": False,
                "position": first.as_dict(),
            }
            page = await manager(a).history(ROOM)
            assert [p["data"] for p in page.publications] == ["after"]


async def test_bad_input_across_nodes(make_app: AppFactory) -> None:
    """Wrong types, negative and future offsets, unknown rooms, huge limits:
    error frames or ``recovered: false``, and the room keeps working."""
    async with (
        RedisServer() as redis,
        history_nodes(make_app, redis.url) as [(a, a_url), (b, b_url)],
        await WSTestClient.connect(a_url) as client,
        await WSTestClient.connect(b_url) as other,
    ):
        epoch = (await client.join(ROOM))["position"]["epoch"]
        for i in range(5):
            await manager(b).publish(ROOM, "said", i)
        assert await said(client, 5) == list(range(5))
        for since in (
            "5",
            [1, epoch],
            {"offset": -1, "epoch": epoch},
            {"offset": "1", "epoch": epoch},
            {"offset": 1, "epoch": None},
            {"offset": 1, "epoch": "x" * 65},
        ):
            await other.send("room.join", {"room": ROOM, "since": since})
            error = await other.expect("error")
            assert error.data["code"] == "invalid_envelope", since
        for since in (
            {"offset": 10**12, "epoch": epoch},  # ahead of the room
            {"offset": 2, "epoch": "not-an-epoch"},
        ):
            await other.send("room.join", {"room": ROOM, "since": since})
            answer = await other.expect("room.joined")
            assert answer.data == {
                "room": ROOM,
                "recovered": False,
                "position": {"offset": 5, "epoch": epoch},
            }
        await other.send("room.join", {"room": "nowhere", "since": {"offset": 1}})
        assert (await other.expect("error")).data["code"] == "room_refused"
        page = await manager(a).history(ROOM, limit=10**9)
        assert [p["offset"] for p in page.publications] == [1, 2, 3, 4, 5]
        with pytest.raises(ValueError):
            await manager(a).history(ROOM, since={"offset": -1, "epoch": epoch})
        # Nothing broke: both get what comes next, once.
        await manager(a).publish(ROOM, "said", "next")
        assert (await client.expect("said")).data == "next"
        assert (await other.expect("said")).data == "next"
        assert client.duplicates == client.gaps == other.duplicates == 0


# -- a Redis Cluster -------------------------------------------------------------


async def test_history_rooms_on_a_redis_cluster(make_app: AppFactory) -> None:
    """Keys and channel on one shard, a room per shard and one whose name
    has its own hash tag; recovery from the other node."""
    async with (
        RedisCluster() as cluster,
        history_nodes(make_app, cluster.url) as [(a, a_url), (b, b_url)],
    ):
        await link_is([a, b], connected=True)
        prefix = f"{a.config.WS_REDIS_CHANNEL}:room:"
        rooms: dict[int, str] = {}
        i = 0
        while len(rooms) < 3:
            room = f"chat:{i}"
            rooms.setdefault(await cluster.owner(prefix + room), room)
            i += 1
        tagged = "chat:{eu}"
        everyone = [*rooms.values(), tagged]
        async with (
            await WSTestClient.connect(a_url) as on_a,
            await WSTestClient.connect(b_url) as on_b,
        ):
            for room in everyone:
                await on_a.join(room)
                await on_b.join(room)
            for n in range(10):
                for room in everyone:
                    node = a if n % 2 else b
                    await manager(node).publish(room, "said", f"{room}/{n}")
            for client in (on_a, on_b):
                got = await said(client, 10 * len(everyone))
                for room in everyone:
                    assert [x for x in got if x.startswith(room + "/")] == [
                        f"{room}/{n}" for n in range(10)
                    ]
                assert client.duplicates == client.gaps == 0
            # Each room's keys live on the master carrying its channel.
            for room in everyone:
                channel = prefix + room
                master = await cluster.owner(channel)
                for key in history_keys(channel):
                    assert await cluster.owner(key) == master
                    assert await cluster.command(master, "EXISTS", key) == 1
            assert history_keys(prefix + tagged)[0].startswith("{eu}")
            positions = dict(on_a.positions)
        for room in everyone:
            await manager(a).publish(room, "said", f"{room}/missed")
        async with await WSTestClient.connect(b_url) as back:
            back.positions = positions
            for room in everyone:
                joined = await back.join(room)
                assert joined["recovered"] is True, joined
                assert (await back.expect("said")).data == f"{room}/missed"
            assert back.duplicates == back.gaps == 0


async def test_joins_while_publishing_meet_live_publications_exactly(
    make_app: AppFactory,
) -> None:
    """Clients join (with and without ``since``) on both nodes while both
    publish: each gets every publication after its position once, in order."""
    async with (
        RedisServer() as redis,
        history_nodes(make_app, redis.url) as [(a, a_url), (b, b_url)],
        await WSTestClient.connect(a_url) as monitor,
    ):
        await monitor.join(BIG)
        total = 600

        async def publish() -> None:
            for i in range(total):
                await manager(a if i % 2 else b).publish(BIG, "said", i)

        publisher = asyncio.ensure_future(publish())
        joined: list[tuple[WSTestClient, int]] = []
        try:
            async with AsyncExitStack() as stack:
                for k in range(12):
                    url = a_url if k % 2 else b_url
                    client = await stack.enter_async_context(
                        await WSTestClient.connect(url)
                    )
                    if k % 3:  # from where the monitor is: a replay, then live
                        client.positions = {BIG: dict(monitor.positions[BIG])}
                        while (await monitor.expect("said")).data < 10 * k:
                            pass  # let the room move on a little
                    answer = await client.join(BIG)
                    assert answer.get("recovered", True) is True, answer
                    start = answer["position"]["offset"]
                    if k % 3:
                        start = client.positions[BIG]["offset"] - len(
                            client._skipped  # the replay, kept for recv
                        )
                    joined.append((client, start))
                await asyncio.wait_for(publisher, units(30))
                mid_stream = [s for _, s in joined if 0 < s < total]
                assert len(mid_stream) >= 6, joined
                for client, start in joined:
                    got = await said(client, total - start)
                    assert got == list(range(start, total))
                    assert client.duplicates == client.gaps == 0
                    assert client.positions[BIG]["offset"] == total
        finally:
            publisher.cancel()


# -- the seam's bookkeeping, alone ------------------------------------------------


def _op(offset: int, epoch: str = "1700000000000001", **more: Any) -> Op:
    return Op(
        OpKind.ROOM_SEND,
        f'{{"o":{offset}}}'.encode(),
        target="r",
        reason=f"{offset} {epoch}",
        **more,
    )


def test_a_floor_drops_what_the_replay_had_until_a_newer_one_passes() -> None:
    seq = Sequencer(
        cast(Any, None),
        cast(Any, None),
        LocalIndex(),
        publish=lambda *a, **k: None,
        join=lambda conn, room: None,
    )
    epoch = "1700000000000001"
    seq.floors = {"r": {"c1": Position(5, epoch), "c2": Position(3, epoch)}}
    assert seq.hold_back(_op(3)) == {"c1", "c2"}  # both had it in their replay
    assert seq.hold_back(_op(4, exclude=frozenset({"x"}))) == {"c1", "x"}
    assert list(seq.floors["r"]) == ["c1"]  # c2's floor was passed: gone
    assert seq.hold_back(_op(6)) == frozenset()
    assert not seq.floors
    seq.floors = {"r": {"c1": Position(5, epoch)}}
    assert seq.hold_back(_op(1, "1700000000000002")) == frozenset()  # a new epoch
    assert not seq.floors


class _Wire:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.sent.append(frame)


class _Conn:
    id = "c1"
    state = ConnectionState.OPEN

    def __init__(self) -> None:
        self._wire = _Wire()
        self.sent = self._wire.sent
        self.rooms: set[str] = set()


def test_kept_publications_newer_than_the_read_follow_room_joined() -> None:
    old, read, new = "1700000000000001", "1700000000000002", "1700000000000003"
    conn = _Conn()
    kept = [_op(1, old), _op(4, read), _op(5, read), _op(6, read), _op(7, read)]
    kept.append(_op(8, read, exclude=frozenset({"c1"})))
    assert _send_kept(cast(Any, conn), kept, Position(5, read)) is True
    assert [b'{"o":6}' in f for f in conn.sent] == [True, False]
    assert b'{"o":7}' in conn.sent[1]
    conn.sent.clear()
    assert _send_kept(cast(Any, conn), [_op(9, read)], Position(9, read)) is False
    assert conn.sent == []  # all in the replay: the floor takes over
    assert _send_kept(cast(Any, conn), [_op(1, new)], Position(9, read)) is True
    assert len(conn.sent) == 1  # a newer epoch began after the read


def _joining(asked: list[Op], conn: _Conn) -> tuple[Sequencer, str]:
    """Worker slot 0 of 2 holding ``conn``, and a room slot 1 sequences;
    what it publishes is recorded in ``asked`` (no other worker: nobody
    answers)."""
    local = LocalIndex()
    local.conns[conn.id] = cast(Any, conn)
    seq = Sequencer(
        cast(Any, SimpleNamespace(query_timeout=0.05, max_backpressure=None)),
        cast(Any, None),
        local,
        publish=lambda kind, to=None, **fields: asked.append(Op(kind, **fields)),
        join=lambda joiner, room: cast(_Conn, joiner).rooms.add(room),
    )
    relay = SimpleNamespace(status=lambda: {"name": "relay", "slots": 2, "slot": 0})
    seq.start(asyncio.get_running_loop(), cast(Any, relay))
    room = next(r for r in map(str, range(99)) if zlib.crc32(r.encode()) % 2 == 1)
    return seq, room


def _live(room: str, body: bytes) -> Op:
    """A publication of ``room`` as the sequencer relays it (no position)."""
    return Op(OpKind.ROOM_SEND, body, target=room)


async def test_without_an_answer_what_was_held_back_follows_room_joined() -> None:
    """The sequencer never answers a join (it died with the question, or is
    slower than WS_QUERY_TIMEOUT): room.joined without a position, then the
    publications held back meanwhile, in order. None lost for want of a
    replay; none held for ever."""
    asked: list[Op] = []
    conn = _Conn()
    seq, room = _joining(asked, conn)
    joining = asyncio.ensure_future(
        seq.join(cast(Any, conn), room, History(size=10), None)
    )
    await asyncio.sleep(0)  # the join runs until it awaits the answer
    assert [op.kind for op in asked] == [OpKind.FETCH]
    for body in (b'{"n":1}', b'{"n":2}'):
        assert conn.id in seq.hold_back(_live(room, body))
    assert conn.sent == []
    await asyncio.wait_for(joining, units(5))
    assert b'"room.joined"' in conn.sent[0] and b'"position":null' in conn.sent[0]
    assert [b'{"n":1}' in f for f in conn.sent[1:]] == [True, False]
    assert b'{"n":2}' in conn.sent[2]
    assert len(conn.sent) == 3
    assert not seq.holds and not seq._kept
    assert seq.hold_back(_live(room, b"3")) == frozenset()  # live again


async def test_an_answer_covers_what_was_held_back() -> None:
    """The answer left the sequencer after what was held back: its replay
    has them, and they are not sent twice."""
    asked: list[Op] = []
    conn = _Conn()
    seq, room = _joining(asked, conn)
    joining = asyncio.ensure_future(
        seq.join(cast(Any, conn), room, History(size=10), None)
    )
    await asyncio.sleep(0)
    seq.hold_back(_live(room, b'{"n":1}'))
    answer = b'{"offset":1,"epoch":"e","ok":true}\n' + frame_record(b'{"n":1}')
    seq.apply(Op(OpKind.HISTORY, answer, reason=asked[0].reason))
    await asyncio.wait_for(joining, units(5))
    assert len(conn.sent) == 2
    assert b'{"n":1}' in conn.sent[0]
    assert b'"room.joined"' in conn.sent[1] and b'"offset":1' in conn.sent[1]
    assert not seq.holds and not seq._kept


async def test_a_join_overtaken_by_a_newer_one_sends_nothing_when_unanswered() -> None:
    """The client joined again while its first join waited: the newer join's
    answer covers what was held back, and the older one's timeout sends no
    stray room.joined and nothing twice."""
    asked: list[Op] = []
    conn = _Conn()
    seq, room = _joining(asked, conn)
    joins = []
    for _ in range(2):
        joins.append(
            asyncio.ensure_future(
                seq.join(cast(Any, conn), room, History(size=10), None)
            )
        )
        await asyncio.sleep(0)  # each join runs until it awaits its answer
    seq.hold_back(_live(room, b'{"n":1}'))
    answer = b'{"offset":1,"epoch":"e","ok":true}\n' + frame_record(b'{"n":1}')
    seq.apply(Op(OpKind.HISTORY, answer, reason=asked[1].reason))
    await asyncio.wait_for(asyncio.gather(*joins), units(5))  # the first times out
    assert len(conn.sent) == 2
    assert b'{"n":1}' in conn.sent[0]
    assert b'"room.joined"' in conn.sent[1] and b'"offset":1' in conn.sent[1]
    assert not seq.holds and not seq._kept and not seq._pending
