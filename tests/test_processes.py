"""The real `sanic` command: single process and several workers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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


async def _one_client_per_worker(server: SanicProcess, workers: int) -> list[Any]:
    """Connect until each worker holds a client (bounded); the others closed."""
    clients: dict[str, tuple[WSTestClient, dict[str, Any]]] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(20)
    while len(clients) < workers:
        assert loop.time() < deadline, f"workers not covered: {list(clients)}"
        client = await WSTestClient.connect(server.ws_url())
        welcome = (await client.expect("welcome")).data
        if welcome["worker"] in clients:
            await client.close()
        else:
            clients[welcome["worker"]] = (client, welcome)
    return list(clients.values())


async def test_without_seqpacket_pairs_workers_relay_over_streams() -> None:
    """As on macOS: "auto" picks the stream transport; the workers act as one."""
    async with SanicProcess("tests.apps.no_seqpacket:app", "--workers", "2") as server:
        clients = await _one_client_per_worker(server, 2)
        (a, _), (b, b_welcome) = clients
        await a.send("do", {"op": "status"})
        status = (await a.expect("done")).data["result"]
        assert status["delivery"]["transport"] == "stream"
        # b's connection is known on a's worker, and a broadcast reaches it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(10)
        while True:
            await a.send("do", {"op": "count"})
            if (await a.expect("done")).data["result"] == 2:
                break
            assert loop.time() < deadline, "a's worker never saw b's connection"
        await a.send("do", {"op": "broadcast", "data": "across"})
        for client, _ in clients:
            assert (await client.expect("b")).data == "across"
        await a.send("do", {"op": "send", "to": b_welcome["id"], "data": 1})
        assert (await b.expect("direct")).data == 1
        for client, _ in clients:
            await client.close()


async def test_workers_refuse_to_start_when_no_relay_transport_works() -> None:
    """Never N islands that look like one server: a clear error instead."""
    env = {"RELAY_TEST_NO_FD_PASSING": "1"}
    target = "tests.apps.no_seqpacket:app"
    with pytest.raises(RuntimeError, match="WS_RELAY_TRANSPORT") as info:
        async with SanicProcess(target, "--workers", "2", env=env):
            pass
    said = " ".join(str(info.value).replace("▐", " ").split())  # unwrapped
    assert "no relay transport works here" in said
    assert "workers cannot reach each other" in said
    # One worker has nobody to reach: it serves.
    server = SanicProcess(target, "--workers", "1", env=env)
    async with server, await WSTestClient.connect(server.ws_url()) as client:
        assert (await client.expect("welcome")).data["worker"] == "Sanic-Server-0-0"
