"""Two machines as one cluster: two `sanic --workers 2` processes and Redis.

Each node is a real `sanic` process on its own port, with the relay between
its two workers and the Redis backplane between the nodes; clients connect
to every worker of both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx

from .conftest import units
from .procs import SanicProcess
from .redisproc import SHARED_URL, RedisServer
from .test_cluster import Client, Cluster, drain, presence_of

WORKERS = 2
BEAT = 1.0  # the default: short beats flap on 2 busy cores


async def cover(node: Cluster) -> list[Client]:
    """Connect until this node's clients span its workers; one per worker."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(30)
    while len(node.workers) < WORKERS:
        assert loop.time() < deadline, f"workers not covered: {node.workers}"
        await node.connect()
    return [node.on(worker)[0] for worker in node.workers]


@asynccontextmanager
async def two_nodes(
    url: str = SHARED_URL, extra: dict[str, str] | None = None
) -> AsyncIterator[list[Cluster]]:
    env = {
        "SANIC_WS_BACKPLANE": url,
        "SANIC_WS_REDIS_CHANNEL": f"test-{uuid.uuid4().hex[:12]}",
        "TEST_RELAY_BEAT": str(BEAT),
        **(extra or {}),
    }
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(2):
            server = SanicProcess(
                "tests.apps.cluster:app", "--workers", str(WORKERS), env=env
            )
            nodes.append(Cluster(await stack.enter_async_context(server)))
        yield nodes
        for node in nodes:  # on failure, the servers are killed instead
            for client in node.clients:
                await client.ws.close()


def node_of(client: Client) -> str:
    return client.worker.split("/", 1)[0]


async def test_two_nodes_of_two_workers_act_as_one() -> None:
    await act_as_one(SHARED_URL)


async def act_as_one(url: str) -> None:
    """Two nodes on ``url``: sends of every kind, rooms and presence across them."""
    async with two_nodes(url) as (one, two):
        first = await cover(one)
        second = await cover(two)
        everyone = first + second
        assert len({node_of(c) for c in everyone}) == 2
        assert len({c.worker for c in everyone}) == 4
        a = first[0]
        assert await one.until(
            a, "count", lambda n: n == len(one.clients + two.clients)
        )
        # An HTTP route on node one reaches every client of both nodes.
        async with httpx.AsyncClient() as http:
            await http.post(one.server.url("/broadcast"), json="to all")
        for client in one.clients + two.clients:
            assert (await client.ws.expect("b")).data == "to all"
        # Send to an id on the other machine, and to a user there.
        far = second[1]
        await a.do("send", to=far.id, data="across")
        assert (await far.ws.expect("direct")).data == "across"
        bob = await two.connect(user="bob")
        await one.until(a, "users", lambda u: u.get("bob") == 1)
        await a.do("send_user", user="bob", data="hi bob")
        assert (await bob.ws.expect("for_user")).data == "hi bob"
        # Rooms span machines; presence reaches every member.
        members = [first[1], *second]
        for i, member in enumerate(members):
            await a.do("join", id=member.id, room="lobby")
            for present in members[: i + 1]:
                meta = await presence_of(present, member.id)
                assert meta["worker"] == member.worker
        listed = await one.until(
            a, "members", lambda m: len(m) == len(members), room="lobby"
        )
        assert listed == sorted(m.id for m in members)
        await a.do("publish", room="lobby", data="lobby news")
        for member in members:
            assert (await member.ws.expect("room")).data == "lobby news"
        # Disconnect across machines: the others see it leave.
        await a.do("disconnect", to=far.id)
        assert await far.ws.wait_closed() == (4000, "kicked")
        two.clients.remove(far)
        for member in members:
            if member is not far:
                await presence_of(member, far.id, leaving=True)
        status = await a.do("status")
        assert status["delivery"]["state"] == "connected"
        assert status["delivery"]["machine"]["name"] == "relay"
        assert status["delivery"]["duplicates"] == status["delivery"]["missed"] == 0


async def test_exactly_once_in_order_across_machines() -> None:
    n = 750  # from each of 4 processes: 3000 messages to every client
    async with two_nodes() as (one, two):
        senders = await cover(one) + await cover(two)
        everyone = one.clients + two.clients
        for sender in senders:
            await one.until(sender, "count", lambda k: k == len(everyone))
        for sender in senders:
            await sender.ws.send("do", {"op": "burst", "n": n})
        for client in everyone:
            got: dict[str, list[int]] = {}
            for data in await drain(client, "burst", n * len(senders)):
                got.setdefault(data["from"], []).append(data["i"])
            assert got == {s.id: list(range(n)) for s in senders}
        # Nothing more came: the next message is the marker.
        await senders[0].do("broadcast", data="end")
        for client in everyone:
            assert (await client.ws.expect("b")).data == "end"
            assert not [m for m in client.ws._skipped if _is_burst(m)]


async def test_a_killed_node_leaves_no_ghosts() -> None:
    """kill -9 of a whole node: its members leave every room, nobody else does.

    Both nodes run on this machine, so the survivors see the workers' pids
    exit (a pidfd each) and drop them at once.
    """
    async with two_nodes() as (one, two):
        watchers = await cover(one)
        doomed = await cover(two)
        for member in watchers + doomed:
            await member.do("join", room="watch")
        survivor = watchers[0]
        for watcher in watchers:  # each knows them all (else they net out)
            await presence_of(watcher, *(d.id for d in doomed), room="watch")
        assert two.server.proc is not None
        os.killpg(two.server.proc.pid, signal.SIGKILL)  # the whole machine
        for watcher in watchers:
            await presence_of(
                watcher, *(d.id for d in doomed), leaving=True, room="watch"
            )
        assert await survivor.do("members", room="watch") == sorted(
            w.id for w in watchers
        )
        assert await one.until(
            survivor, "count", lambda n: n == len(one.clients)
        ) == len(one.clients)
        two.clients.clear()  # their server is gone; nothing to close


async def test_a_frozen_node_is_suspect_then_dropped() -> None:
    """A node that stops answering but does not exit (SIGSTOP: a hung
    machine, a network partition) is suspect first, then dropped after
    WS_PEER_TIMEOUT; its members leave. Heard again, it is met again and its
    members come back."""
    timing = {"TEST_WS_PEER_SUSPECT": "1.5", "TEST_WS_PEER_TIMEOUT": "3"}
    async with two_nodes(extra=timing) as (one, two):
        watchers = await cover(one)
        frozen = await cover(two)
        for member in watchers + frozen:
            await member.do("join", room="watch")
        survivor = watchers[0]
        for watcher in watchers:
            await presence_of(watcher, *(f.id for f in frozen), room="watch")
        assert two.server.proc is not None
        os.killpg(two.server.proc.pid, signal.SIGSTOP)
        try:
            status = await one.until(
                survivor,
                "status",
                lambda s: len(s["membership"]["suspect"]) == WORKERS,
            )
            assert len(status["membership"]["suspect"]) == WORKERS
            for watcher in watchers:
                await presence_of(
                    watcher,
                    *(gone.id for gone in frozen),
                    leaving=True,
                    room="watch",
                    timeout=20,
                )
            os.killpg(two.server.proc.pid, signal.SIGCONT)
            for watcher in watchers:
                await presence_of(
                    watcher, *(back.id for back in frozen), room="watch", timeout=20
                )
        finally:
            os.killpg(two.server.proc.pid, signal.SIGKILL)
        two.clients.clear()


async def test_a_redis_restart_under_load_loses_nothing() -> None:
    n = 2000
    async with RedisServer() as redis_server, two_nodes(redis_server.url) as (one, two):
        sender = (await cover(one))[0]
        receivers = await cover(two)
        total = len(one.clients + two.clients)
        await one.until(sender, "count", lambda k: k == total)
        await sender.ws.send("do", {"op": "paced", "n": n, "pause": 0.005})
        got: dict[int, list[int]] = {id(r): [] for r in receivers}
        first = receivers[0]
        # Redis dies mid-stream, once the first messages have crossed.
        for _ in range(200):
            got[id(first)].append((await first.ws.expect("burst")).data["i"])
        redis_server.kill()
        async with httpx.AsyncClient() as http:
            health = await _health_until(http, two.server, "reconnecting")
        await redis_server.start()
        async with httpx.AsyncClient() as http:
            health = await _health_until(http, two.server, "connected")
        assert health["backplane"] == "connected"
        for receiver in receivers:
            need = n - len(got[id(receiver)])
            for data in await drain(receiver, "burst", need):
                got[id(receiver)].append(data["i"])
            assert got[id(receiver)] == list(range(n))  # all, once, in order
        assert (await sender.ws.expect("done")).data["op"] == "paced"
        statuses = [await r.do("status") for r in receivers]
        for status in statuses:
            assert status["delivery"]["reconnects"] == 1
            assert status["delivery"]["missed"] == 0
        sender_status = (await sender.do("status"))["delivery"]
        assert sender_status["reconnects"] >= 1
        assert sender_status["lost"] == 0


async def _health_until(
    http: httpx.AsyncClient, server: SanicProcess, state: str
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(15)
    while True:
        health: dict[str, Any] = (await http.get(server.url("/health"))).json()
        if health["backplane"] == state:
            return health
        assert loop.time() < deadline, f"backplane never {state}: {health}"
        await asyncio.sleep(0.02)  # another process's state: poll it


def _is_burst(message: Any) -> bool:
    return getattr(message, "type", None) == "burst"


async def test_stats_from_one_machine_cover_both() -> None:
    """Counters ride on the backplane's beats too: one node's /ws/stats and
    /ws/metrics show the other machine's workers, connections and traffic."""
    async with (
        two_nodes(extra={"SANIC_WS_STATS": "true"}) as (one, two),
        httpx.AsyncClient() as http,
    ):
        everyone = await cover(one) + await cover(two)
        want = {c.worker: len(one.on(c.worker) + two.on(c.worker)) for c in everyone}
        sender = everyone[-1]  # on machine two
        await sender.do("broadcast", data="counted")
        for client in one.clients + two.clients:
            assert (await client.ws.expect("b")).data == "counted"

        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(15)
        while True:  # polling another process: each beat brings a sample
            stats = (await http.get(one.server.url("/ws/stats"))).json()
            per = stats["per_worker"]
            conns = {w: e["connections"] for w, e in per.items()}
            # Frames out on machine two's workers, as machine one sees them:
            # each connection there had its welcome, then the broadcast (the
            # welcomes alone reach one per connection: a sample from before
            # the broadcast would do). A worker without a sample yet counts 0.
            sent = sum(
                per.get(c.worker, {}).get("messages_out", 0)
                for c in second_node(everyone)
            )
            # And the sender's worker's sample is from after its request.
            asked = per.get(sender.worker, {}).get("messages_in", 0)
            if conns == want and sent >= 2 * len(two.clients) and asked >= 1:
                break
            assert loop.time() < deadline, f"never settled: {stats}"
            await asyncio.sleep(0.1)
        assert stats["connections"] == len(one.clients + two.clients)
        assert stats["workers"] == 2 * WORKERS
        assert (await http.get(one.server.url("/ws/health"))).json()["backplane"] == (
            "connected"
        )


def second_node(clients: list[Client]) -> list[Client]:
    return [c for c in clients if node_of(c) == node_of(clients[-1])]


async def test_requests_across_machines() -> None:
    """``ws.request`` on one node to a client of the other, over a private Redis:
    the reply comes back to the asking worker."""
    async with RedisServer() as redis, two_nodes(redis.url) as (one, two):
        asker = (await cover(one))[0]
        targets = await cover(two)
        await one.until(asker, "count", lambda n: n == len(one.clients + two.clients))
        for target in targets:
            pending = asyncio.ensure_future(
                asker.do("request", to=target.id, data="hi", timeout=units(10))
            )
            question = await target.ws.expect("question", units(10))
            assert question.data == "hi" and question.ref is not None
            await target.ws.reply(question.ref, {"from": target.worker})
            assert await pending == {"data": {"from": target.worker}}
        target = targets[0]
        pending = asyncio.ensure_future(
            asker.do("request", to=target.id, timeout=units(10))
        )
        question = await target.ws.expect("question", units(10))
        assert question.ref is not None
        await target.ws.reply(question.ref, error=("nope", "not now"))
        assert await pending == {"error": "RequestFailed", "code": "nope"}
        # The target goes while asked: the other machine says so at once.
        pending = asyncio.ensure_future(
            asker.do("request", to=target.id, timeout=units(600))
        )
        await target.ws.expect("question", units(10))
        await target.ws.close()
        two.clients.remove(target)
        assert await pending == {"error": "ClientGone", "code": None}
