"""The real `sanic` command: single process and several workers."""

from __future__ import annotations

import asyncio

from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .procs import SanicProcess


async def test_single_process_serves() -> None:
    server = SanicProcess("tests.apps.basic:app", "--single-process")
    async with server, await WSTestClient.connect(server.ws_url()) as client:
        welcome = await client.expect("welcome")
        assert welcome.data["worker"] == "main"
        await client.send("echo", {"n": 1})
        assert (await client.expect("echo")).data == {"n": 1}


async def test_route_is_live_in_every_worker() -> None:
    async with SanicProcess("tests.apps.basic:app", "--workers", "2") as server:
        workers: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(20)
        # Connections land on workers at random, and a worker may still be
        # starting: connect until both have answered, bounded in time.
        while loop.time() < deadline:
            async with await WSTestClient.connect(server.ws_url()) as client:
                workers.add((await client.expect("welcome")).data["worker"])
                await client.send("echo", 1)
                assert (await client.expect("echo")).data == 1
            if len(workers) == 2:
                break
        assert workers == {"Sanic-Server-0-0", "Sanic-Server-1-0"}
