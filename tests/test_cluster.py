"""Four workers behave as one server: a real `sanic --workers 4` process.

Tests taking ``transport`` run twice: with the relay this system picks
("auto": seqpacket on Linux) and with the stream transport forced
(``WS_RELAY_TRANSPORT``), the one macOS gets.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sanic_ws_ext import Envelope
from sanic_ws_ext.delivery.relay import choose_transport
from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .procs import SanicProcess

WORKERS = 4
transports = pytest.mark.parametrize("transport", ["auto", "stream"])


@dataclass
class Client:
    ws: WSTestClient
    id: str
    worker: str
    pid: int

    async def do(self, op: str, **args: Any) -> Any:
        await self.ws.send("do", {"op": op, **args})
        return (await self.ws.expect("done")).data["result"]


@dataclass
class Cluster:
    server: SanicProcess
    clients: list[Client] = field(default_factory=list)

    def on(self, worker: str) -> list[Client]:
        return [c for c in self.clients if c.worker == worker]

    @property
    def workers(self) -> list[str]:
        return sorted({c.worker for c in self.clients})

    async def connect(self, user: str | None = None) -> Client:
        query = f"?user={user}" if user else ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(10)
        while True:
            try:
                ws = await WSTestClient.connect(self.server.ws_url() + query)
                welcome = (await ws.expect("welcome")).data
                break
            except (OSError, InvalidHandshake, ConnectionClosed):
                # A worker restarting: its old process may refuse (503) or
                # drop a connection it accepted as it exits. Clients retry.
                if loop.time() > deadline:
                    raise
        client = Client(ws, welcome["id"], welcome["worker"], welcome["pid"])
        self.clients.append(client)
        return client

    async def cover(self, per_worker: int = 1) -> None:
        """Connect until every worker holds ``per_worker`` clients (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(30)
        while any(len(self.on(w)) < per_worker for w in worker_names()):
            assert loop.time() < deadline, f"workers not covered: {self.workers}"
            client = await self.connect()
            if len(self.on(client.worker)) > per_worker:
                await client.ws.close()
                self.clients.remove(client)

    async def until(
        self, client: Client, op: str, want: Callable[[Any], bool], **args: Any
    ) -> Any:
        """Ask again until the (asynchronously replicated) answer is as wanted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(10)
        while True:
            result = await client.do(op, **args)
            if want(result) or loop.time() > deadline:
                return result


def worker_names() -> list[str]:
    return [f"Sanic-Server-{i}-0" for i in range(WORKERS)]


@asynccontextmanager
async def cluster(
    *args: str, env: dict[str, str] | None = None, transport: str = "auto"
) -> AsyncIterator[Cluster]:
    env = {**(env or {}), "SANIC_WS_RELAY_TRANSPORT": transport}
    server = SanicProcess(
        "tests.apps.cluster:app", "--workers", str(WORKERS), *args, env=env
    )
    async with server:
        c = Cluster(server)
        try:
            yield c
        finally:
            for client in c.clients:
                await client.ws.close()


#: ref -> connection id, from every meta seen joining: a leave carries its
#: ref alone (refs are unique in the cluster, so one map serves all clients).
_CONN_OF_REF: dict[str, str] = {}


async def presence_of(
    client: Client,
    *conn_ids: str,
    leaving: bool = False,
    room: str = "lobby",
    timeout: float = 10,
) -> dict[str, Any]:
    """Read ``client``'s presence frames until every one of ``conn_ids``
    joined (or left); the last one's metadata."""
    waiting = set(conn_ids)
    found: dict[str, Any] = {}
    while waiting:
        frame = await client.ws.recv(units(timeout))
        assert isinstance(frame, Envelope)
        if frame.type not in ("presence.state", "presence.diff"):
            continue
        assert frame.data["room"] == room
        joined = frame.data["users" if frame.type == "presence.state" else "joins"]
        for metas in joined.values():
            for meta in metas:
                _CONN_OF_REF[meta["ref"]] = meta["conn"]
        if frame.type == "presence.state":
            groups = [] if leaving else list(frame.data["users"].values())
        else:
            groups = list(frame.data["leaves" if leaving else "joins"].values())
        for metas in groups:
            for meta in metas:
                conn = _CONN_OF_REF.get(meta["ref"])
                if conn in waiting:
                    waiting.discard(conn)
                    found = dict(meta)
    return found


async def assert_transport(client: Client, transport: str) -> None:
    """The relay runs over the transport asked for (or the one "auto" picks)."""
    status = await client.do("status")
    assert status["delivery"]["transport"] == choose_transport(transport)


async def drain(client: Client, type_: str, n: int) -> list[Any]:
    return [(await client.ws.expect(type_, units(10))).data for _ in range(n)]


@transports
async def test_broadcast_send_disconnect_count_across_workers(transport: str) -> None:
    async with cluster(transport=transport) as c:
        await c.cover(per_worker=2)
        total = len(c.clients)
        a = c.on(worker_names()[0])[0]
        await assert_transport(a, transport)
        assert await c.until(a, "count", lambda n: n == total) == total
        # Broadcast from a handler reaches every connection on every worker.
        await a.do("broadcast", data="hello", exclude=[a.id])
        for client in c.clients:
            if client is not a:
                assert (await client.ws.expect("b")).data == "hello"
        # ...and from an HTTP route on whichever worker takes the request.
        async with httpx.AsyncClient() as http:
            await http.post(c.server.url("/broadcast"), json={"from": "http"})
        for client in c.clients:
            assert (await client.ws.expect("b")).data == {"from": "http"}
        # ...and from a background task.
        async with httpx.AsyncClient() as http:
            await http.post(c.server.url("/later"), json={"from": "task"})
        for client in c.clients:
            assert (await client.ws.expect("b")).data == {"from": "task"}
        # Volatile and keyed: every reader keeps up, so every one gets it.
        await a.do("broadcast", data="latest", volatile=True, key="k")
        for client in c.clients:
            assert (await client.ws.expect("b")).data == "latest"
        # Send to an id on another worker.
        far = next(x for x in c.clients if x.worker != a.worker)
        await a.do("send", to=far.id, data=42)
        assert (await far.ws.expect("direct")).data == 42
        await a.do("send", to=far.id, data=43, volatile=True, key="k")
        assert (await far.ws.expect("direct")).data == 43
        # Disconnect an id on another worker.
        await a.do("disconnect", to=far.id)
        assert await far.ws.wait_closed() == (4000, "kicked")
        c.clients.remove(far)
        assert await c.until(a, "count", lambda n: n == total - 1) == total - 1


@transports
async def test_exactly_once_in_order_from_each_sender(transport: str) -> None:
    n = 500
    async with cluster(transport=transport) as c:
        await c.cover(per_worker=1)
        senders = [c.on(w)[0] for w in worker_names()]
        await assert_transport(senders[0], transport)
        for sender in senders:
            await c.until(sender, "count", lambda k: k == len(c.clients))
        for sender in senders:
            await sender.ws.send("do", {"op": "burst", "n": n})
        for client in c.clients:
            got: dict[str, list[int]] = {}
            for data in await drain(client, "burst", n * len(senders)):
                got.setdefault(data["from"], []).append(data["i"])
            # Every sender's messages, each once, in the order sent.
            assert got == {s.id: list(range(n)) for s in senders}


async def test_requests_to_connections_on_other_workers() -> None:
    async with cluster() as c:
        await c.cover(per_worker=1)
        asker = c.on(worker_names()[0])[0]
        targets = [c.on(w)[0] for w in worker_names()[1:]]

        def ask(target: Client, timeout: float = 10, data: Any = None) -> Any:
            return asyncio.ensure_future(
                asker.do("request", to=target.id, data=data, timeout=units(timeout))
            )

        # Every other worker's client answers; each reply comes back to the asker.
        for i, target in enumerate(targets):
            pending = ask(target, data=i)
            question = await target.ws.expect("question", units(10))
            assert question.data == i and question.ref is not None
            await target.ws.reply(question.ref, {"from": target.worker})
            assert await pending == {"data": {"from": target.worker}}
        target = targets[0]
        # Refused by the client.
        pending = ask(target)
        question = await target.ws.expect("question", units(10))
        assert question.ref is not None
        await target.ws.reply(question.ref, error=("nope", "not now"))
        assert await pending == {"error": "RequestFailed", "code": "nope"}
        # No reply in time; the late one is dropped where it lands.
        pending = ask(target, timeout=0.5)
        question = await target.ws.expect("question", units(10))
        assert await pending == {"error": "RequestTimeout", "code": None}
        assert question.ref is not None
        await target.ws.reply(question.ref, "late")
        # The target closes while asked: the asker knows at once, not after
        # the timeout (which would outlast the test).
        pending = ask(target, timeout=600)
        await target.ws.expect("question", units(10))
        await target.ws.close()
        c.clients.remove(target)
        assert await pending == {"error": "ClientGone", "code": None}
        # Asking a connection its worker no longer holds fails at once too.
        assert await asker.do(
            "request", to=target.id, data=None, timeout=units(600)
        ) == {"error": "ClientGone", "code": None}


async def test_rooms_users_and_presence_across_workers() -> None:
    async with cluster() as c:
        await c.cover(per_worker=1)
        members = [c.on(w)[0] for w in worker_names()]
        outsider = await c.connect()
        first = members[0]
        # Each joiner gets the room's state, and everyone already there a
        # diff; all but the first are joined by `first`, from another worker.
        for i, member in enumerate(members):
            if member is first:
                await first.do("join", room="lobby")
            else:
                await first.do("join", id=member.id, room="lobby")
            for present in members[: i + 1]:
                meta = await presence_of(present, member.id)
                assert meta["worker"] == member.worker
        listed = await c.until(
            outsider, "members", lambda m: len(m) == len(members), room="lobby"
        )
        assert listed == sorted(m.id for m in members)
        # A room publish reaches members on every worker, not the outsider.
        await outsider.do("publish", room="lobby", data="to the lobby")
        for member in members:
            assert (await member.ws.expect("room")).data == "to the lobby"
        await outsider.do("broadcast", data="marker")
        assert (await outsider.ws.expect("b")).data == "marker"  # no "room" came first
        # Leaving on disconnect: the others see it in a diff.
        gone = members.pop()
        await gone.ws.close()
        c.clients.remove(gone)
        for member in members:
            await presence_of(member, gone.id, leaving=True)
        # Users: one identity, connections on two workers.
        alice = [await c.connect(user="alice") for _ in range(6)]
        alice = [a for a in alice if a.worker != alice[0].worker][:1] + alice[:1]
        await c.until(outsider, "users", lambda u: u.get("alice") == 6)
        await outsider.do("send_user", user="alice", data="hi alice")
        for a in alice:
            assert (await a.ws.expect("for_user")).data == "hi alice"


@transports
async def test_worker_killed_during_broadcast(transport: str) -> None:
    n = 3000
    async with cluster(transport=transport) as c:
        await c.cover(per_worker=2)
        victim_worker = worker_names()[1]
        victims = c.on(victim_worker)
        survivors = [x for x in c.clients if x.worker != victim_worker]
        sender = next(x for x in survivors if x.worker == worker_names()[0])
        await assert_transport(sender, transport)
        await c.until(sender, "count", lambda k: k == len(c.clients))
        for member in survivors:
            await member.do("join", room="watch")
        victim_pid = victims[0].pid
        await sender.ws.send("do", {"op": "burst", "n": n})
        os.kill(victim_pid, signal.SIGKILL)
        for member in survivors:  # every survivor gets all n, in order
            got = [d["i"] for d in await drain(member, "burst", n)]
            assert got == list(range(n))
        # The dead worker's connections leave: nobody sees ghosts.
        assert await c.until(sender, "count", lambda k: k == len(survivors)) == len(
            survivors
        )
        for victim in victims:
            c.clients.remove(victim)
            await victim.ws.close()  # its server side died; release the socket
        # Restarted, the slot serves again and is part of the cluster.
        async with httpx.AsyncClient() as http:
            await http.post(c.server.url("/restart"), json={"worker": victim_worker})
        await c.cover(per_worker=1)
        fresh = c.on(victim_worker)[0]
        await c.until(sender, "count", lambda k: k == len(c.clients))
        await sender.do("send", to=fresh.id, data="welcome back")
        assert (await fresh.ws.expect("direct")).data == "welcome back"
        await fresh.do("broadcast", data="from the new worker")
        for member in survivors:
            assert (await member.ws.expect("b")).data == "from the new worker"


async def test_dev_reload_keeps_the_cluster_working(tmp_path: Path) -> None:
    """`sanic --dev --workers 2`: after a code change, workers reload and relay."""
    source = Path(__file__).with_name("apps") / "cluster.py"
    module = tmp_path / "devapp.py"
    module.write_text(source.read_text().replace('Sanic("cluster")', 'Sanic("devapp")'))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    server = SanicProcess(
        "devapp:app", "--dev", "--workers", "2", env=env, cwd=str(tmp_path)
    )
    async with server:
        c = Cluster(server)
        before = [await c.connect() for _ in range(2)]
        # A code change: the reloader restarts every worker with the new code.
        module.write_text(
            module.read_text().replace('"welcome", {', '"welcome", {"version": 2, ')
        )
        # The reloader takes its baseline of mtimes when it starts, which may
        # be after our write: bump the mtime until it notices (bounded).
        closing = asyncio.ensure_future(before[0].ws.wait_closed(units(30)))
        for bump in range(1, 16):
            done, _ = await asyncio.wait({closing}, timeout=units(2))
            if done:
                break
            stamp = module.stat().st_mtime + bump
            os.utime(module, (stamp, stamp))
        assert (await closing)[0] == 1001
        for client in before[1:]:
            assert (await client.ws.wait_closed(units(30)))[0] == 1001
        # New workers: connect until both slots answer with the new code.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(30)
        fresh: dict[str, tuple[WSTestClient, str]] = {}
        while len(fresh) < 2:
            assert loop.time() < deadline, f"reload not served: {server.stderr()}"
            try:
                ws = await WSTestClient.connect(server.ws_url())
                welcome = (await ws.expect("welcome")).data
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                # Between processes, an old worker answering 503, or one
                # exiting with a connection it had just accepted.
                continue
            if welcome.get("version") == 2 and welcome["worker"] not in fresh:
                fresh[welcome["worker"]] = (ws, welcome["id"])
            else:
                await ws.close()
        (a, _), (b, b_id) = fresh.values()
        # Cross-worker delivery works after the reload (replica caught up).
        await a.send("do", {"op": "send", "to": b_id, "data": "after reload"})
        got = await b.expect("direct", units(10))
        assert got.data == "after reload"
        for ws, _ in fresh.values():
            await ws.close()


@transports
async def test_graceful_restart_of_one_worker(transport: str) -> None:
    async with cluster(transport=transport) as c:
        await c.cover(per_worker=1)
        restarted = worker_names()[2]
        leaving = c.on(restarted)[0]
        witness = c.on(worker_names()[0])[0]
        await assert_transport(witness, transport)
        await c.until(witness, "count", lambda k: k == len(c.clients))
        async with httpx.AsyncClient() as http:
            await http.post(c.server.url("/restart"), json={"worker": restarted})
        assert (await leaving.ws.wait_closed(units(10)))[0] == 1001
        c.clients.remove(leaving)
        await leaving.ws.close()
        assert await c.until(witness, "count", lambda k: k == len(c.clients)) == len(
            c.clients
        )
        await c.cover(per_worker=1)  # the new process serves the slot
        fresh = c.on(restarted)[0]
        await witness.do("send", to=fresh.id, data="hello new worker")
        assert (await fresh.ws.expect("direct")).data == "hello new worker"


async def test_one_and_eight_workers() -> None:
    for workers in (1, 8):
        server = SanicProcess("tests.apps.cluster:app", "--workers", str(workers))
        async with server:
            c = Cluster(server)
            for _ in range(16):
                await c.connect()
            first = c.clients[0]
            assert await c.until(first, "count", lambda k: k == 16) == 16
            await first.do("broadcast", data=workers)
            for client in c.clients:
                assert (await client.ws.expect("b")).data == workers
            for client in c.clients:
                await client.ws.close()


async def test_shutdown_under_load_does_not_hang() -> None:
    server = SanicProcess("tests.apps.cluster:app", "--workers", str(WORKERS))
    async with server:
        c = Cluster(server)
        await c.cover(per_worker=1)
        sender = c.clients[0]
        # Small enough that no reader can fall WS_MAX_BACKPRESSURE behind.
        await sender.ws.send("do", {"op": "burst", "n": 3000})
        first = await sender.ws.expect("burst")  # the burst is under way
        await server.stop()  # bounded: fails if shutdown hangs
        for client in c.clients:
            # The sender's first message was taken above.
            seen: list[int] = [first.data["i"]] if client is sender else []
            while True:
                try:
                    message = await client.ws.recv(units(10))
                except ConnectionClosed:
                    break
                if isinstance(message, Envelope) and message.type == "burst":
                    seen.append(message.data["i"])
            # Everything accepted before the stop arrives: the start of the
            # burst (at least the message the sender saw), in order, no gaps.
            assert seen and seen == list(range(len(seen)))
            rcvd = client.ws.connection.protocol.close_rcvd
            assert rcvd is not None and rcvd.code == 1001
