"""The chat demo in a real headless Chromium, on a real 4-worker server.

Debian's `chromium` (``.ci/run`` installs it when missing), driven by
Playwright for Python. Two pages see each other in the presence list,
exchange messages in a room, and, when the server is restarted, both
reconnect by themselves and carry on. A screenshot of the chat is saved
(its path is printed with the test's output).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright, expect

from .conftest import units
from .procs import SanicProcess, free_port

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
