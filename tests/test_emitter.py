"""Emitters: sending to a Redis cluster from a process that is no worker.

Two nodes of two workers (real `sanic` processes) over the shared Redis, and
an emitter in this test process (asyncio) or in a plain child process
(``SyncEmitter``, tests/emit_calls.py). Every kind of send arrives once, in
order, where it should; the emitter is never a member of the cluster. A
private `redis-server` is restarted while the async emitter publishes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest
import redis.asyncio as aioredis
import ujson

from sanic_ws_ext import EmitFailed, Emitter, PublishTooLarge, SyncEmitter
from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .helpers import AppFactory, eventually
from .redisproc import SHARED_URL, RedisServer
from .test_backplane import nodes
from .test_backplane_cluster import cover, two_nodes
from .test_cluster import Client, Cluster, drain

Call = tuple[str, list[Any], dict[str, Any]]


class Sender(Protocol):
    async def run(self, calls: list[Call]) -> None: ...


class AsyncSender:
    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter

    async def run(self, calls: list[Call]) -> None:
        for method, args, kwargs in calls:
            await getattr(self.emitter, method)(*args, **kwargs)
        assert await self.emitter.flush(units(10))


class ProcessSender:
    """A SyncEmitter in a plain child process, driven over its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def run(self, calls: list[Call]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(ujson.dumps(calls).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), units(20))
        assert line == b"ok\n", line


@asynccontextmanager
async def sender(kind: str, channel: str) -> AsyncIterator[Sender]:
    if kind == "async":
        async with Emitter(SHARED_URL, channel=channel) as emitter:
            yield AsyncSender(emitter)
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.emit_calls",
        SHARED_URL,
        channel,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        yield ProcessSender(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # it ends at the end of its input
        try:
            await asyncio.wait_for(proc.wait(), units(10))
        except TimeoutError:
            proc.kill()  # by its handle: the process this test started
            await proc.wait()


@pytest.mark.parametrize("kind", ["async", "sync-process"])
async def test_every_send_of_an_emitter_arrives_once_in_order(kind: str) -> None:
    n = 200
    channel = f"test-{uuid.uuid4().hex[:12]}"
    extra = {"SANIC_WS_REDIS_CHANNEL": channel}
    async with two_nodes(extra=extra) as (one, two), sender(kind, channel) as em:
        first = await cover(one)
        second = await cover(two)
        bob = await two.connect(user="bob")
        everyone = one.clients + two.clients
        a = first[0]
        assert await one.until(a, "count", lambda k: k == len(everyone))
        # Everything in one go: the order between kinds is the emitter's.
        far = second[1]
        members = [first[1], second[0]]
        await em.run(
            [("broadcast", ["e", {"i": i}], {}) for i in range(n)]
            + [
                ("send", [far.id, "e.direct", "to far"], {}),
                ("send_user", ["bob", "e.user", "hi bob"], {}),
                ("broadcast", ["e.x", "not a"], {"exclude": [a.id]}),
            ]
            + [("join", [m.id, "emitted"], {}) for m in members]
        )
        for client in everyone:
            assert [d["i"] for d in await drain(client, "e", n)] == list(range(n))
            if client is not a:
                assert (await client.ws.expect("e.x")).data == "not a"
        assert (await far.ws.expect("e.direct")).data == "to far"
        assert (await bob.ws.expect("e.user")).data == "hi bob"
        # A join reaches the holder, which then subscribes to the room: the
        # room's messages are for it once it is a member.
        want = sorted(m.id for m in members)
        assert await one.until(a, "members", lambda m: m == want, room="emitted")
        await em.run([("publish", ["emitted", "e.room", "news"], {})])
        for member in members:
            assert (await member.ws.expect("e.room")).data == "news"
        await em.run([("leave", [members[0].id, "emitted"], {})])
        rest = [members[1].id]
        assert await one.until(a, "members", lambda m: m == rest, room="emitted")
        await em.run(
            [
                ("publish", ["emitted", "e.room", "later"], {}),
                ("disconnect", [far.id], {"code": 4001, "reason": "emitted"}),
                ("broadcast", ["e.end", None], {}),
            ]
        )
        assert (await members[1].ws.expect("e.room")).data == "later"
        assert await far.ws.wait_closed() == (4001, "emitted")
        two.clients.remove(far)
        everyone.remove(far)
        for client in everyone:
            await client.ws.expect("e.end")
            # Nothing twice, nothing where it did not belong.
            extra_frames = [
                m
                for m in client.ws._skipped
                if getattr(m, "type", "").startswith("e")
                and getattr(m, "type", "") != "e.end"
            ]
            assert not extra_frames, (client.id, extra_frames)
        assert not [
            m for m in members[0].ws._skipped if getattr(m, "type", "") == "e.room"
        ]
        await em.run([("disconnect_user", ["bob"], {"code": 4003, "reason": "out"})])
        assert await bob.ws.wait_closed() == (4003, "out")
        two.clients.remove(bob)
        everyone.remove(bob)
        # Never a member of the cluster; nothing missed or doubled anywhere.
        for node in (one, two):
            for client in node.clients[:2]:
                status = await client.do("status")
                assert status["membership"]["peers"] == 3
                assert status["delivery"]["missed"] == 0
                assert status["delivery"]["duplicates"] == 0
        # Counts come from the workers' beats: only the workers' connections.
        total = len(everyone)
        assert await one.until(a, "count", lambda k: k == total) == total


async def test_the_emitter_is_no_subscriber_and_checks_sizes() -> None:
    channel = f"test-{uuid.uuid4().hex[:12]}"
    redis = aioredis.Redis.from_url(SHARED_URL)
    try:
        async with Emitter(SHARED_URL, channel=channel, max_publish=8192) as em:
            assert em.state == "connected"
            assert em.name.startswith("~emitter/")
            with pytest.raises(PublishTooLarge):
                await em.broadcast("big", "x" * 9000)
            with pytest.raises(TypeError):
                await em.broadcast("both", 1, raw="x")
            with pytest.raises(ValueError):
                await em.disconnect("id", code=99)
            await em.broadcast("fine", 1)
            assert await em.flush(units(5))
            assert em.status()["published"] == 1
            # No subscription of its own, on any channel of this cluster.
            channels = await redis.pubsub_channels(f"{channel}:*")
            assert channels == []
        with SyncEmitter(SHARED_URL, channel=channel, max_publish=8192) as sync:
            with pytest.raises(PublishTooLarge):
                sync.publish("room", "big", "x" * 9000)
            sync.publish("room", "fine", 1)
            assert sync.published == 1
    finally:
        await redis.aclose()


async def test_the_sync_emitter_raises_a_clear_error_without_redis() -> None:
    server = RedisServer()
    await server.start()
    url = server.url
    server.kill()
    try:
        with SyncEmitter(url) as em, pytest.raises(EmitFailed) as failed:
            em.broadcast("t", 1)
        assert "may or may not have been delivered" in str(failed.value)
        assert failed.value.op.startswith("connecting to redis://127.0.0.1:")
    finally:
        server.dir.cleanup()


async def test_a_redis_restart_loses_nothing_the_emitter_buffered(
    make_app: AppFactory,
) -> None:
    n = 400
    async with (
        RedisServer() as redis_server,
        nodes(make_app, redis_server.url) as [(a, sa, _), (b, sb, _)],
    ):
        ca, _ = await a.connect()
        cb, _ = await b.connect()
        for states in (sa, sb):
            assert await states.get() == "connected"
        channel = a.app.config.WS_REDIS_CHANNEL
        emitter = Emitter(redis_server.url, channel=channel)
        await emitter.start()
        try:
            await eventually(
                lambda: _true(emitter.status()["listeners"] == 2), "counted"
            )

            down = asyncio.Event()

            async def paced() -> None:
                for i in range(n):
                    if i == n // 2:
                        # The second half in the outage, whatever the machine's
                        # speed: it waits for the emitter to know Redis is gone.
                        await down.wait()
                    await emitter.broadcast("e", i)
                    if i % 10 == 9:
                        await asyncio.sleep(0.02)  # spread over time

            sending = asyncio.ensure_future(paced())
            got_a = [(await ca.expect("e", units(10))).data for _ in range(20)]
            redis_server.kill()  # mid-stream
            for states in (sa, sb):
                assert await asyncio.wait_for(states.get(), units(10)) == "reconnecting"
            await eventually(
                lambda: _true(emitter.state == "reconnecting"), "emitter down"
            )
            down.set()
            await sending
            assert emitter.status()["buffered_bytes"] > 0  # sent in the outage
            await redis_server.start()
            for states in (sa, sb):
                assert await asyncio.wait_for(states.get(), units(10)) == "connected"
            await emitter.broadcast("e", "after")
            got_a += [(await ca.expect("e", units(10))).data for _ in range(n + 1 - 20)]
            got_b = [(await cb.expect("e", units(10))).data for _ in range(n + 1)]
            for got in (got_a, got_b):
                assert got == [*range(n), "after"]
            status = emitter.status()
            assert status["lost"] == 0 and status["reconnects"] == 1
            for node in (a, b):
                assert node.backplane.missed == 0
                # Never a member: not among the workers nor the peers.
                assert not [w for w in await node.ws.workers() if w[0] == "~"]
                assert not [p for p in node.ws._membership.peers if p[0] == "~"]
        finally:
            await emitter.close()
        await ca.close()
        await cb.close()


async def test_receivers_forget_silent_emitters(make_app: AppFactory) -> None:
    async with nodes(make_app, n=1) as [(a, *_)]:
        client, _ = await a.connect()
        channel = a.app.config.WS_REDIS_CHANNEL
        with SyncEmitter(SHARED_URL, channel=channel) as em:
            em.broadcast("e", 1)
        assert (await client.expect("e")).data == 1
        senders = a.backplane._senders
        assert list(senders) == [em.name]
        assert em.name not in a.backplane._heard
        now = asyncio.get_running_loop().time()
        a.backplane._prune(now + 601)
        assert not senders
        assert not [k for k in a.backplane._seen if k[1] == em.name]
        await client.close()


async def _true(value: bool) -> bool:
    return value


__all__ = ["Client", "Cluster", "WSTestClient"]
