"""History rooms on four workers: recovery across workers, and kill -9.

A real `sanic --workers 4` process (tests/apps/history.py). A *monitor*
client joins the room before anything is published and stays: what it
receives, in order, is the room's stream, and every other client must get
exactly its part of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import zlib
from typing import Any, ClassVar

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from sanic_ws_ext import Envelope

from .conftest import units
from .procs import SanicProcess
from .test_cluster import WORKERS, Client, Cluster, worker_names

ROOM = "chat:1"


def sequencer_of(room: str) -> str:
    return worker_names()[zlib.crc32(room.encode()) % WORKERS]


class Reader:
    """Reads a client's publications in the background, in order."""

    #: Every reader still running: stopped before their clients close.
    running: ClassVar[set[Reader]] = set()

    def __init__(self, client: Client) -> None:
        Reader.running.add(self)
        self.client = client
        self.got: list[tuple[str, int]] = []
        self._more = asyncio.Event()
        self.closed = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                message = await self.client.ws.recv(timeout=units(60))
                if isinstance(message, Envelope) and message.type == "msg":
                    self.got.append((message.data["tag"], message.data["i"]))
                    self._more.set()
                # recv returns without suspending while messages are queued:
                # a reader keeping pace with fast publishers would starve the
                # test's other tasks. Fairness, not synchronisation.
                await asyncio.sleep(0)
        except ConnectionClosed:
            self.closed = True
            self._more.set()

    async def until(self, n: int) -> None:
        """Wait until ``n`` publications arrived (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(60)
        while len(self.got) < n:
            assert not self.closed, f"closed after {len(self.got)} of {n}"
            self._more.clear()
            await asyncio.wait_for(self._more.wait(), max(0.0, deadline - loop.time()))

    async def gone(self) -> None:
        """Wait until the connection is lost (bounded)."""
        await asyncio.wait_for(asyncio.shield(self._task), units(30))

    async def stop(self) -> None:
        Reader.running.discard(self)
        self._task.cancel()
        # asyncio.wait: a cancellation of the test itself is not swallowed.
        await asyncio.wait({self._task}, timeout=units(10))
        assert self._task.done(), "the reader did not stop"


async def connect_to(c: Cluster, want: Any) -> Client:
    """Connect until a client lands on a worker ``want(worker)`` accepts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(30)
    while True:
        client = await c.connect()
        if want(client.worker):
            return client
        c.clients.remove(client)
        await client.ws.close()
        assert loop.time() < deadline, "never landed on a wanted worker"


async def start_publishers(c: Cluster, workers: list[str]) -> list[Client]:
    publishers = []
    for worker in workers:
        publisher = c.on(worker)[0]
        await publisher.ws.send(
            "publish.start", {"room": ROOM, "tag": worker, "pause": 0.002}
        )
        await publisher.ws.expect("publish.started")
        publishers.append(publisher)
    return publishers


async def stop_publishers(publishers: list[Client]) -> int:
    sent = 0
    for publisher in publishers:
        await publisher.ws.send("publish.stop")
        sent += (await publisher.ws.expect("publish.stopped")).data["sent"]
    return sent


@pytest.mark.parametrize("how", ["close", "kill"])
async def test_a_client_away_gets_exactly_what_it_missed_from_another_worker(
    how: str,
) -> None:
    """Away while 200+ are published from every worker; back on another worker:
    exactly the missed ones, in order, then live ones, publishers running."""
    sequencer = sequencer_of(ROOM)
    server = SanicProcess("tests.apps.history:app", "--workers", str(WORKERS))
    async with server:
        c = Cluster(server)
        try:
            await c.cover(per_worker=1)
            # The client that goes away is on a worker that does not number
            # the room (killing that one is the next test).
            away = await connect_to(c, lambda w: w != sequencer)
            monitor = await connect_to(c, lambda w: w != away.worker)
            await monitor.ws.join(ROOM)
            await away.ws.join(ROOM)
            # Killing a worker kills its publishers: then the others publish.
            sources = [w for w in worker_names() if how == "close" or w != away.worker]
            watch, mine = Reader(monitor), Reader(away)
            publishers = await start_publishers(c, sources)
            await mine.until(50)
            if how == "close":
                await mine.stop()
                await away.ws.close()
            else:
                os.kill(away.pid, signal.SIGKILL)
                await mine.gone()
            c.clients.remove(away)
            before = list(mine.got)
            positions = dict(away.ws.positions)
            left_at = positions[ROOM]["offset"]
            assert left_at == len(before)
            await watch.until(left_at + 200)  # 200 published while away
            back = await connect_to(c, lambda w: w not in (away.worker,))
            back.ws.positions = positions
            joined = await back.ws.join(ROOM)
            assert joined["recovered"] is True, joined
            caught_up = joined["position"]["offset"]
            assert caught_up >= left_at + 200
            again = Reader(back)
            await again.until(caught_up - left_at + 100)  # and live ones
            sent = await stop_publishers(publishers)
            await watch.until(sent)
            await again.until(sent - left_at)
            assert len(watch.got) == sent  # nothing twice, nothing more
            assert before + again.got == watch.got
            assert back.ws.duplicates == back.ws.gaps == 0
            assert monitor.ws.gaps == monitor.ws.duplicates == 0
            # Each publisher's messages in its order.
            for worker in sources:
                mine_only = [i for tag, i in watch.got if tag == worker]
                assert mine_only == list(range(len(mine_only)))
            await again.stop()
            await watch.stop()
        finally:
            for reader in list(Reader.running):
                await reader.stop()
            for client in c.clients:
                await client.ws.close()


async def test_kill_9_of_the_sequencer_starts_a_new_epoch() -> None:
    """The sequencer's history is lost with it: a new epoch, and clients are
    told ``recovered: false``, never given wrong offsets."""
    sequencer = sequencer_of(ROOM)
    server = SanicProcess("tests.apps.history:app", "--workers", str(WORKERS))
    async with server:
        c = Cluster(server)
        try:
            await c.cover(per_worker=1)
            victim = c.on(sequencer)[0]
            publisher = await connect_to(c, lambda w: w != sequencer)
            member = await connect_to(c, lambda w: w != sequencer)
            old = (await member.ws.join(ROOM))["position"]
            for i in range(5):
                await publisher.ws.send(
                    "publish.one", {"room": ROOM, "tag": "one", "i": i}
                )
                published = await publisher.ws.expect("published")
                assert published.data["offset"] == i + 1
            reader = Reader(member)
            await reader.until(5)
            os.kill(victim.pid, signal.SIGKILL)
            c.clients.remove(victim)
            await victim.ws.close()
            # While it is down: publish and join are answered, not hung.
            await publisher.ws.send(
                "publish.one", {"room": ROOM, "tag": "one", "i": -1}
            )
            assert (await publisher.ws.expect("published", units(10))).data is None
            async with httpx.AsyncClient() as http:
                await http.post(c.server.url("/restart"), json={"worker": sequencer})
            await c.cover(per_worker=1)  # the slot serves again
            await publisher.ws.send("publish.one", {"room": ROOM, "tag": "one", "i": 5})
            new = (await publisher.ws.expect("published")).data
            assert new["offset"] == 1 and new["epoch"] != old["epoch"]
            await reader.until(6)
            assert member.ws.positions[ROOM] == new
            await reader.stop()
            # A client that left during epoch A cannot be recovered.
            late = await connect_to(c, lambda w: True)
            late.ws.positions = {ROOM: {"offset": 5, "epoch": old["epoch"]}}
            joined = await late.ws.join(ROOM)
            assert joined == {"room": ROOM, "recovered": False, "position": new}
        finally:
            for reader in list(Reader.running):
                await reader.stop()
            for client in c.clients:
                await client.ws.close()
