"""Faults under load: connection churn while broadcasting.

The other faults of the hardening issue live beside the features they break:
a worker killed with -9 mid-broadcast and shutdown under load in
test_cluster.py, a stalled client among many in test_backpressure.py (and its
cost to the others' throughput in the benchmark suite), Redis restarted
under load in test_backplane_cluster.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from websockets.frames import Close, Opcode

from sanic_ws_ext import Envelope
from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .procs import SanicProcess
from .rawws import RawClient

WARM_UP = 500
CYCLES = 3000
AT_ONCE = 25
POLLS = 400


async def churn_once(port: int, n: int) -> None:
    """Connect as user ``u<n>``, then leave in one of three ways."""
    raw = await RawClient.connect("127.0.0.1", port, f"/ws?user=u{n}")
    if n % 3 == 0:  # polite: close frame, wait for the server's
        raw.send_frame(Opcode.CLOSE, Close(1000, "bye").serialize())
        await raw.read_until_close()
    elif n % 3 == 1:  # vanish: TCP reset, no close frame
        raw.writer.transport.abort()
        return
    else:  # half-close: EOF without a close frame
        raw.writer.write_eof()
        await raw.reader.read()  # the server closes its side
    raw.writer.close()
    await raw.writer.wait_closed()


async def churn(port: int, first: int, count: int) -> None:
    for start in range(first, first + count, AT_ONCE):
        await asyncio.gather(
            *(churn_once(port, n) for n in range(start, start + AT_ONCE))
        )


async def settled(
    http: httpx.AsyncClient, server: SanicProcess, churned: int
) -> dict[str, Any]:
    """The server's state once it has finished with the ``churned`` churners.

    ``connections`` alone is not enough: a connection leaves it when its
    socket goes, and the task that runs its disconnect handlers holds it
    until that task's turn comes. Read then, the object counts and the task
    count include those tasks. So wait until every churner's disconnect
    handler has run. Polled (no event crosses the process boundary), at
    most ``POLLS`` times and ``units(10)`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(10)
    for _ in range(POLLS):
        state: dict[str, Any] = (await http.get(server.url("/state"))).json()
        if state["disconnected"] >= churned or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    return state


async def test_churn_while_broadcasting_leaves_nothing_behind() -> None:
    server = SanicProcess("tests.apps.churn:app", "--single-process")
    async with server, httpx.AsyncClient(timeout=units(10)) as http:
        observer = await WSTestClient.connect(server.ws_url("/ws?user=observer"))
        async with observer:

            async def watch() -> tuple[int, int]:
                """Ticks the observer got, in order, and the count announced."""
                ticks = 0
                while True:
                    message = await observer.recv(units(10))
                    assert isinstance(message, Envelope)
                    if message.type == "done":
                        return ticks, message.data
                    assert message.type == "tick" and message.data == ticks
                    ticks += 1

            watching = asyncio.create_task(watch())
            await http.post(server.url("/ticker/start"))
            await churn(server.port, 0, WARM_UP)
            before = await settled(http, server, WARM_UP)

            await churn(server.port, WARM_UP, CYCLES)
            after = await settled(http, server, WARM_UP + CYCLES)
            sent = (await http.post(server.url("/ticker/stop"))).json()["sent"]
            ticks, announced = await asyncio.wait_for(watching, units(10))

        # Every churner's disconnect handler ran, once.
        assert before["disconnected"] == WARM_UP
        assert after["disconnected"] == WARM_UP + CYCLES
        # Only the observer is left, everywhere the manager keeps state.
        assert after["connections"] == after["count"] == 1
        assert after["rooms"] == {} and after["members"] == []
        assert after["users"] == {"observer": 1}
        assert after["live_connections"] == after["live_protocols"] == 1
        assert after["tasks"] == before["tasks"]  # nothing started and stayed
        # The observer got every broadcast, in order, while the others churned.
        assert ticks == announced == sent > 0
        growth = (after["rss_kb"] - before["rss_kb"]) / before["rss_kb"]
        print(
            f"churn: {CYCLES} cycles, {sent} broadcasts; server RSS"
            f" {before['rss_kb']} -> {after['rss_kb']} KB ({growth:+.2%})"
        )
        assert growth < 0.03, f"server RSS grew {growth:.1%} over {CYCLES} cycles"
