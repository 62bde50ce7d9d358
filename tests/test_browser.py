"""The chat demo in a real headless Chromium, on a real 4-worker server.

Debian's `chromium` (``.ci/run`` installs it when missing), driven by
Playwright for Python. Two pages see each other in the presence list,
exchange messages in a room, and, when the server is restarted, both
reconnect by themselves and carry on. A screenshot of the chat is saved
(its path is printed with the test's output). The operations dashboard of a
4-worker app shows each worker's connections (screenshot: dashboard.png).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright, expect
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import WSExtension
from sanic_ws_ext.testing import serve

from .conftest import units
from .procs import SanicProcess, free_port
from .test_cluster import cluster, worker_names

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), (
        f"{CHROMIUM} not found: install Debian's chromium (bash .ci/run does)"
    )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


def demo(port: int) -> SanicProcess:
    return SanicProcess("demo.server:app", "--workers", "4", ready_path="/", port=port)


async def open_chat(browser: Browser, port: int, name: str) -> Page:
    page = await browser.new_page(viewport={"width": 1000, "height": 600})
    await page.goto(f"http://127.0.0.1:{port}/?name={name}")
    return page


async def say(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send")


async def both_online(alice: Page, bob: Page, wait: float) -> None:
    """Both pages are connected and list both users in the room."""
    for page in (alice, bob):
        await expect(page.locator("#state")).to_have_text("open", timeout=wait)
        for user in ("alice", "bob"):
            listed = page.locator(f'#members li[data-user="{user}"]')
            await expect(listed).to_have_count(1, timeout=wait)


async def test_two_pages_chat_and_survive_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    wait = units(20) * 1000  # Playwright counts milliseconds
    async with chromium() as browser:
        async with demo(port):
            alice = await open_chat(browser, port, "alice")
            bob = await open_chat(browser, port, "bob")
            # Each sees both in the lobby's presence list.
            await both_online(alice, bob, wait)
            await say(alice, "hello bob")
            await expect(bob.locator("#log .msg").last).to_have_text(
                "alicehello bob", timeout=wait
            )
        # The server is gone: both pages notice and keep trying.
        for page in (alice, bob):
            await expect(page.locator("#state")).to_have_class(
                "reconnecting", timeout=wait
            )
        async with demo(port):  # a new server on the same address
            await both_online(alice, bob, wait)  # rooms were re-joined
            await say(bob, "still here?")
            await expect(alice.locator("#log .msg").last).to_have_text(
                "bobstill here?", timeout=wait
            )
            await say(alice, "yes, after the restart")
            await expect(bob.locator("#log .msg").last).to_have_text(
                "aliceyes, after the restart", timeout=wait
            )
            shot = tmp_path / "chat.png"
            await alice.screenshot(path=str(shot))
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(shot, ARTIFACTS / "chat.png")
            print(f"screenshot: {ARTIFACTS / 'chat.png'}")


async def test_dashboard_shows_every_worker() -> None:
    """The dashboard of a 4-worker app lists each worker's connections."""
    wait = units(20) * 1000
    # Worker i holds i + 1 clients: every row's count is different.
    want = {worker: i + 1 for i, worker in enumerate(worker_names())}
    async with cluster(env={"SANIC_WS_STATS": "true"}) as c, chromium() as browser:
        await c.cover(per_worker=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(30)
        while any(len(c.on(w)) < n for w, n in want.items()):
            assert loop.time() < deadline, f"workers not filled: {c.workers}"
            client = await c.connect()
            if len(c.on(client.worker)) > want[client.worker]:
                await client.ws.close()
                c.clients.remove(client)
        page = await browser.new_page(viewport={"width": 1200, "height": 800})
        await page.goto(c.server.url("/ws/dashboard?interval=300"))
        await expect(page.locator("#state")).to_have_text("live", timeout=wait)
        for worker, n in want.items():
            row = page.locator(f'#workers tr[data-worker="{worker}"]')
            await expect(row.locator("td.connections")).to_have_text(
                str(n), timeout=wait
            )
        await expect(page.locator("#workers tr")).to_have_count(4, timeout=wait)
        await expect(page.locator("#total-connections")).to_have_text(
            str(sum(want.values())), timeout=wait
        )
        # Steady broadcasts (about 200 a second to 10 clients, for 3 s): the
        # rate shows them and the chart has a few points of them.
        sender = c.clients[0]
        await sender.ws.send("do", {"op": "paced", "n": 600, "pause": 0.05})
        await page.wait_for_function(
            """() => {
                const rate = Number(document.querySelector("#total-out-rate")
                    .textContent.replaceAll(",", ""));
                const line = document.querySelector(
                    '#rates-chart polyline[data-series="out / s"]');
                const points = line.getAttribute("points").split(" ").length;
                return rate >= 500 && points >= 5;
            }""",
            timeout=wait,
        )
        await expect(page.locator("#rates-chart polyline")).to_have_count(2)
        await expect(page.locator("#connections-chart polyline")).to_have_count(4)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        print(f"screenshot: {ARTIFACTS / 'dashboard.png'}")


async def test_dashboard_without_its_token_says_where_it_goes(
    make_app: Callable[..., Sanic[Any, Any]],
) -> None:
    """A 401 from /stats is shown with what to do: add #token= to the URL."""
    token = "a-dashboard-token-long-enough"
    app = make_app(WS_STATS=True, WS_STATS_TOKEN=token)
    Extend(app).register(WSExtension)
    wait = units(10) * 1000
    async with serve(app) as server, chromium() as browser:
        page = await browser.new_page()
        await page.goto(server.url("/ws/dashboard?interval=200"))
        state = page.locator("#state")
        await expect(state).to_contain_text(
            "open /ws/dashboard#token=<WS_STATS_TOKEN>", timeout=wait
        )
        await page.goto(server.url("/ws/dashboard?interval=200#token=wrong"))
        await page.reload()  # a new fragment alone does not reload the page
        await expect(state).to_contain_text("not this server's", timeout=wait)
        await page.goto(server.url(f"/ws/dashboard?interval=200#token={token}"))
        await page.reload()
        await expect(state).to_have_text("live", timeout=wait)
