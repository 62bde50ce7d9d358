"""WS_GC_FREEZE in a real `sanic` process: what survives a full collection is
frozen out of the next ones, closed connections are still freed, and a thaw
collects the cycles freezing kept (sanic_ws_ext/collector.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .helpers import eventually
from .procs import SanicProcess

APP = "tests.apps.collector:app"


@contextlib.asynccontextmanager
async def _served(
    env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[SanicProcess, httpx.AsyncClient]]:
    async with (
        SanicProcess(APP, "--single-process", env=env) as server,
        httpx.AsyncClient(base_url=server.url(), timeout=units(10)) as http,
    ):
        yield server, http


async def test_closed_connections_are_freed_though_frozen() -> None:
    async with _served() as (server, http):
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    await WSTestClient.connect(server.ws_url())
                )
                for _ in range(200)
            ]
            for client in clients:
                await client.expect("welcome")
            # A full collection ends: the 200 connections are frozen with it.
            held = (await http.post("/gc/collect")).json()["frozen"]
        seen: dict[str, Any] = {}

        async def all_closed() -> bool:
            seen.update((await http.get("/gc")).json())
            return bool(seen["connections"] == 0)

        await eventually(all_closed, "every client closed")
        # Frozen, walked by no collection, and still freed by reference
        # counting alone (a connection is 8 tracked objects): its Connection
        # and Wire no longer refer to each other. With the cycle, none were.
        assert held - seen["frozen"] >= 5 * 200, (held, seen["frozen"])


async def test_a_frozen_cycle_outlives_full_collections() -> None:
    async with _served({"SANIC_WS_GC_THAW": "none"}) as (_, http):
        assert (await http.post("/gc/cycle")).json() == {"alive": True}
        # Dropped, but it lived through a full collection: frozen, no
        # later collection frees it (the documented cost).
        await http.post("/gc/collect")
        assert (await http.get("/gc")).json()["cycle_alive"] is True


async def test_the_thaw_collects_what_freezing_kept() -> None:
    async with _served({"SANIC_WS_GC_THAW": "0.2"}) as (_, http):
        await http.post("/gc/cycle")

        async def freed() -> bool:
            return (await http.get("/gc")).json()["cycle_alive"] is False

        await eventually(freed, "the thaw freed the cycle")
