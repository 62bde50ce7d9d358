"""Tests for the quickstart app, as you would write them for your own handlers.

docs/howto/testing.md walks through this file; the project's test suite runs
it (``testpaths`` in pyproject.toml). Plain pytest: each test runs its
coroutine with ``asyncio.run``, so no plugin is needed (with pytest-asyncio
or anyio, write ``async def test_...`` instead).
"""

# --8<-- [start:setup]
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from quickstart import create_app
from sanic import Sanic

from sanic_ws_ext.testing import SanicProcess, WSTestClient, serve, time_unit

HERE = Path(__file__).parent
_names = itertools.count()


def run(test: Coroutine[Any, Any, None]) -> None:
    """Run one test's coroutine, bounded so that a hang fails instead."""
    asyncio.run(asyncio.wait_for(test, 30 * time_unit()))


def new_app() -> Sanic[Any, Any]:
    # Sanic wants a unique name per app in a process: one app per test.
    return create_app(f"quickstart_test_{next(_names)}")


# --8<-- [end:setup]


# -- in the test's own process: serve() and WSTestClient ----------------------


# --8<-- [start:in_process]
def test_a_message_reaches_everyone() -> None:
    async def scenario() -> None:
        async with serve(new_app()) as server:
            alice = await WSTestClient.connect(server.ws_url())
            bob = await WSTestClient.connect(server.ws_url())
            me = (await alice.expect("welcome")).data["id"]
            await alice.send("chat.send", {"text": "hi all"})
            for client in (alice, bob):
                message = await client.expect("chat.message")
                assert message.data == {"from": me, "text": "hi all"}
            await alice.close()
            assert (await bob.expect("chat.left")).data == {"id": me}
            await bob.close()

    run(scenario())


def test_bad_input_gets_an_error_frame() -> None:
    async def scenario() -> None:
        async with (
            serve(new_app()) as server,
            await WSTestClient.connect(server.ws_url()) as client,
        ):
            await client.send("chat.send", {"text": "   "})
            assert (await client.expect("error")).data["code"] == "bad_text"
            # Not a ChatSend: refused before the handler, naming the field.
            await client.send("chat.send", {"txt": "hi"})
            error = (await client.expect("error")).data
            assert (error["code"], error["field"]) == ("invalid_data", "text")
            await client.send("no.such.type")
            assert (await client.expect("error")).data["code"] == "unknown_type"

    run(scenario())


def test_the_manager_from_outside_a_handler() -> None:
    async def scenario() -> None:
        app = new_app()
        async with (
            serve(app) as server,
            await WSTestClient.connect(server.ws_url()) as client,
        ):
            conn_id = (await client.expect("welcome")).data["id"]
            # app.ctx.ws is what your routes and background tasks use.
            assert await app.ctx.ws.count() == 1
            await app.ctx.ws.send(conn_id, "notice", "from the server")
            assert (await client.expect("notice")).data == "from the server"

    run(scenario())


# --8<-- [end:in_process]


# -- a real `sanic --workers 2` process ----------------------------------------


# --8<-- [start:workers]
def test_two_workers_act_as_one_server() -> None:
    async def scenario() -> None:
        # Started in its own session, ready once /ws/health answers, stopped
        # with SIGTERM on leaving the block (killed if it does not stop).
        async with SanicProcess("quickstart:app", "--workers", "2", cwd=HERE) as server:
            url = server.ws_url()
            # The kernel spreads connections over the workers: open some
            # until both hold one (bounded in time: on a busy machine the
            # second worker may still be starting).
            clients: dict[str, WSTestClient] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20 * time_unit()
            while loop.time() < deadline:
                client = await WSTestClient.connect(url)
                worker = (await client.expect("welcome")).data["worker"]
                if worker in clients:
                    await client.close()
                else:
                    clients[worker] = client
                if len(clients) == 2:
                    break
            assert len(clients) == 2, f"connections reached only {list(clients)}"
            first, second = clients.values()
            await first.send("chat.send", {"text": "across workers"})
            for client in (first, second):
                message = await client.expect("chat.message")
                assert message.data["text"] == "across workers"
            for client in (first, second):
                await client.close()

    run(scenario())


# --8<-- [end:workers]
