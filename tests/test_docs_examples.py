"""The docs' example apps do what their pages say, as real `sanic` processes.

- docs/examples/teamchat (howto/blueprints.md, howto/rooms.md): handlers on
  three blueprints; rooms, guards, presence, users and the admin routes, on
  two workers.
- docs/examples/quickstart.py on two "machines" through Redis (howto/redis.md).
- docs/examples/quickstart.html in Chromium (howto/frontend.md): two pages
  chat, survive a server restart, and what was sent offline goes out later.

docs/examples/test_quickstart.py (collected through ``testpaths``) tests the
quickstart itself, as a reader's own tests would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from websockets.exceptions import InvalidStatus

from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .procs import SanicProcess, free_port
from .redisproc import SHARED_URL
from .test_browser import chromium

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def example(target: str, *args: str, **kwargs: Any) -> SanicProcess:
    """``sanic TARGET`` run from docs/examples, as the pages say."""
    return SanicProcess(target, *args, cwd=str(EXAMPLES), **kwargs)


async def until(probe: Callable[[], Any], want: Callable[[Any], bool]) -> Any:
    """Ask again until the (eventually consistent) answer is as wanted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(10)
    while True:
        answer = await probe()
        if want(answer) or loop.time() > deadline:
            return answer
        await asyncio.sleep(0.05)  # replicas in other processes: poll them


# -- teamchat: blueprints, rooms and users ----------------------------------------


async def test_teamchat_rooms_and_users_across_workers() -> None:
    async with example("teamchat.app:app", "--workers", "2") as server:
        with_name = f"{server.ws_url()}?name="
        # The verify hook refuses before the upgrade.
        with pytest.raises(InvalidStatus) as refused:
            await WSTestClient.connect(with_name + "not%20a%20name")
        assert refused.value.response.status_code == 400
        alice = await WSTestClient.connect(with_name + "alice")
        everyone = [alice]
        bob: list[WSTestClient] = []
        try:
            # Everyone is put in "general" by on_connect: alice gets its
            # presence (herself only), then sees each arrival, whichever
            # worker holds it. Bob opens connections until both workers hold
            # one of theirs (bounded).
            state = (await alice.expect("presence.state")).data
            assert (state["room"], list(state["users"])) == ("general", ["alice"])
            workers = {state["users"]["alice"][0]["worker"]}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + units(30)
            while len(bob) < 2 or len(workers) < 2:
                assert loop.time() < deadline, f"connections reached only {workers}"
                bob.append(await WSTestClient.connect(with_name + "bob"))
                everyone.append(bob[-1])
                diff = (await alice.expect("presence.diff")).data
                assert (diff["room"], list(diff["joins"])) == ("general", ["bob"])
                workers.update(meta["worker"] for meta in diff["joins"]["bob"])

            async def who() -> Any:
                await alice.send("room.who", {"room": "general"})
                return (await alice.expect("room.who")).data["users"]

            assert await until(who, lambda users: users == ["alice", "bob"]) == [
                "alice",
                "bob",
            ]
            # The guard: public rooms and one's own inbox only.
            await bob[0].send("room.join", {"room": "random"})
            assert (await bob[0].expect("room.joined")).data == {"room": "random"}
            for refused_room in ("secret", "inbox.alice"):
                await bob[0].send("room.join", {"room": refused_room})
                assert (await bob[0].expect("error")).data["code"] == "room_refused"
            # A room message reaches every member.
            await alice.send("room.say", {"room": "general", "text": "hi team"})
            for client in everyone:
                said = (await client.expect("room.message")).data
                assert said == {"room": "general", "from": "alice", "text": "hi team"}
            await alice.send("room.say", {"room": "random", "text": "x"})
            assert (await alice.expect("error")).data["code"] == "not_in_room"
            # A direct message reaches each of bob's connections, and alice's.
            await alice.send("dm.send", {"to": "bob", "text": "psst"})
            for client in everyone:
                dm = (await client.expect("dm.message")).data
                assert dm == {"from": "alice", "to": "bob", "text": "psst"}
            await alice.send("dm.send", {"to": "carol", "text": "?"})
            assert (await alice.expect("error")).data["code"] == "offline"
            async with httpx.AsyncClient() as http:
                # From an HTTP route, on whichever worker takes it.
                await http.post(server.url("/notify/bob"), json={"n": 1})
                for client in bob:
                    assert (await client.expect("notice")).data == {"n": 1}
                await http.post(server.url("/admin/announce"), json="maintenance")
                for client in everyone:
                    announced = await client.expect("announcement")
                    assert announced.data == "maintenance"

                async def stats() -> Any:
                    return (await http.get(server.url("/admin/stats"))).json()

                n = len(everyone)
                # Counts ride on each worker's beat: ask until they caught up.
                figures = await until(
                    stats,
                    lambda s: s["rooms"].get("random") == 1 and s["connections"] == n,
                )
            assert figures["connections"] == n
            assert figures["rooms"] == {"general": n, "random": 1}
            assert figures["users"] == {"alice": 1, "bob": n - 1}
            assert sorted(figures["workers"]) == sorted(workers)
            # A connection that leaves is seen leaving.
            await bob[-1].close()
            left = (await alice.expect("presence.diff")).data
            assert (left["room"], list(left["leaves"])) == ("general", ["bob"])
        finally:
            for client in everyone:
                await client.close()


# -- quickstart on two machines through Redis ---------------------------------------


async def test_quickstart_on_two_nodes_through_redis() -> None:
    env = {
        "SANIC_WS_BACKPLANE": SHARED_URL,
        # Distinct per run: another test or app may share this Redis.
        "SANIC_WS_REDIS_CHANNEL": f"docs-{uuid.uuid4().hex[:12]}",
    }
    one = example("quickstart:app", "--workers", "2", env=env)
    two = example("quickstart:app", "--workers", "2", env=env)
    async with one, two, httpx.AsyncClient() as http:
        a = await WSTestClient.connect(one.ws_url())
        b = await WSTestClient.connect(two.ws_url())
        try:
            a_id = (await a.expect("welcome")).data["id"]
            await b.expect("welcome")

            async def health() -> Any:
                return (await http.get(one.url("/health"))).json()

            # Node one counts node two's connection: the link works both ways.
            status = await until(health, lambda h: h["connections"] == 2)
            assert status == {
                "worker": status["worker"],
                "connections": 2,
                "backplane": "connected",
            }
            await a.send("chat.send", {"text": "across machines"})
            for client in (a, b):
                message = (await client.expect("chat.message")).data
                assert message == {"from": a_id, "text": "across machines"}
        finally:
            await a.close()
            await b.close()


# -- the quickstart page in a browser ------------------------------------------------


async def said(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#say button")


async def test_the_quickstart_page_chats_and_reconnects() -> None:
    port = free_port()
    wait = units(20) * 1000  # Playwright counts milliseconds

    def quickstart() -> SanicProcess:
        return example("quickstart:app", "--workers", "2", port=port)

    async with chromium() as browser:
        pages = [await browser.new_page() for _ in range(2)]
        async with quickstart():
            for page in pages:
                await page.goto(f"http://127.0.0.1:{port}/")
                await expect(page.locator("#state")).to_have_text("open", timeout=wait)
                await expect(page.locator("#log li").first).to_contain_text(
                    "Sanic-Server-", timeout=wait
                )
            first, second = pages
            await said(first, "hello from the page")
            for page in pages:
                await expect(page.locator("#log li").last).to_contain_text(
                    "hello from the page", timeout=wait
                )
        # The server is gone: the pages notice, and keep what is sent meanwhile.
        for page in pages:
            await expect(page.locator("#state")).to_have_text(
                "reconnecting", timeout=wait
            )
        await said(first, "sent while offline")
        async with quickstart():  # a new server on the same address
            for page in pages:
                await expect(page.locator("#state")).to_have_text("open", timeout=wait)
            await expect(first.locator("#log li").last).to_contain_text(
                "sent while offline", timeout=wait
            )
            await said(second, "after the restart")
            for page in pages:
                await expect(page.locator("#log li").last).to_contain_text(
                    "after the restart", timeout=wait
                )


# -- history_chat: history rooms (howto/history.md) ----------------------------------


async def test_history_chat_resumes_and_catches_up() -> None:
    async with example("history_chat:app", "--workers", "2") as server:
        url = server.ws_url()
        async with await WSTestClient.connect(url) as ticker:
            assert (await ticker.join("ticker:ACME"))["position"]["offset"] == 0
        async with await WSTestClient.connect(url) as alice:
            await alice.join("chat:1")
            for text in ("one", "two"):
                await alice.send("chat.send", {"id": 1, "text": text})
                assert (await alice.expect("chat.sent")).data is not None
            assert [
                (await alice.expect("chat.message")).data["text"] for _ in "ab"
            ] == [
                "one",
                "two",
            ]
            positions = dict(alice.positions)
            async with await WSTestClient.connect(url) as bob:
                await bob.join("chat:1")
                await bob.send("chat.send", {"id": 1, "text": "three"})
                await bob.expect("chat.sent")
        async with await WSTestClient.connect(url) as back:
            back.positions = positions
            assert (await back.join("chat:1"))["recovered"] is True
            assert (await back.expect("chat.message")).data["text"] == "three"
            # A new page gets the latest (on_join) before room.joined.
            async with await WSTestClient.connect(url) as fresh:
                await fresh.send("room.join", {"room": "chat:1"})
                first = await fresh.recv()
                assert first.data["text"] == "one"  # type: ignore[union-attr]
        async with httpx.AsyncClient() as http:
            page = (await http.get(server.url("/rooms/chat:1/history"))).json()
            assert page["recovered"] is True and page["position"]["offset"] == 3
            assert [p["data"]["text"] for p in page["publications"]] == [
                "one",
                "two",
                "three",
            ]
            epoch = page["position"]["epoch"]
            stale = await http.get(
                server.url("/rooms/chat:1/history"),
                params={"offset": "1", "epoch": "another"},
            )
            assert stale.json()["recovered"] is False
            tail = await http.get(
                server.url("/rooms/chat:1/history"),
                params={"offset": "2", "epoch": epoch},
            )
            assert [p["offset"] for p in tail.json()["publications"]] == [3]
            bad = await http.get(server.url("/rooms/plain/history"))
            assert bad.status_code == 400
