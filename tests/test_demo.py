"""The demo runs as the README says, and its chat works (protocol level).

What the page shows is tested in Chromium (tests/test_browser.py); here, what
a browser cannot see: the icon route, the docstring, scripts/demo's install
step, and the docs site's port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from sanic_ws_ext.testing import WSTestClient

from .procs import SanicProcess

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = (ROOT / "mkdocs.yml").read_text()


async def test_demo_chat() -> None:
    async with SanicProcess(
        "demo.server:app", "--workers", "2", ready_path="/"
    ) as server:
        async with httpx.AsyncClient() as http:
            page = await http.get(server.url("/"))
            client_js = await http.get(server.url("/ws/client.js"))
        assert "sanic-ws-ext chat" in page.text
        assert client_js.headers["content-type"].startswith("text/javascript")
        assert "export class WSClient" in client_js.text
        alice = await WSTestClient.connect(server.ws_url() + "?name=alice")
        assert (await alice.expect("chat.welcome")).data["name"] == "alice"
        await alice.send("room.join", {"room": "lobby"})
        # A history room: the answer says where its stream is.
        joined = (await alice.expect("room.joined")).data
        assert joined["room"] == "lobby" and set(joined) == {"room", "position"}
        state = (await alice.expect("presence.state")).data
        assert state["users"]["alice"][0]["name"] == "alice"
        bob = await WSTestClient.connect(server.ws_url() + "?name=bob")
        await bob.expect("chat.welcome")
        await bob.send("room.join", {"room": "lobby"})
        await bob.expect("room.joined")
        assert list((await alice.expect("presence.diff")).data["joins"]) == ["bob"]
        listed = (await bob.expect("presence.state")).data["users"]
        assert sorted(listed) == ["alice", "bob"]
        await alice.send("chat.send", {"room": "lobby", "text": "hi bob"})
        for client in (alice, bob):
            message = (await client.expect("chat.message")).data
            assert (message["from"], message["text"]) == ("alice", "hi bob")
        # Refusals: an empty text, a room not joined, a room that does not exist.
        await bob.send("chat.send", {"room": "lobby", "text": ""})
        error = (await bob.expect("error")).data
        assert (error["code"], error["field"]) == ("invalid_data", "text")
        await bob.send("chat.send", {"room": "lobby", "text": "  "})
        assert (await bob.expect("error")).data["code"] == "bad_text"
        await bob.send("chat.send", {"room": "dev", "text": "x"})
        assert (await bob.expect("error")).data["code"] == "not_in_room"
        await bob.send("room.join", {"room": "secret"})
        assert (await bob.expect("error")).data["code"] == "room_refused"
        await bob.close()
        assert list((await alice.expect("presence.diff")).data["leaves"]) == ["bob"]
        # A page opened later is shown the room's latest messages first.
        carol = await WSTestClient.connect(server.ws_url() + "?name=carol")
        await carol.expect("chat.welcome")
        await carol.send("room.join", {"room": "lobby"})
        recent = (await carol.expect("chat.message")).data
        assert (recent["from"], recent["text"]) == ("alice", "hi bob")
        await carol.expect("room.joined")
        await carol.close()
        await alice.close()


async def test_the_page_has_its_icon_and_the_name_form() -> None:
    """The icon is inline (no request for /favicon.ico from the page), and
    /favicon.ico is served for pages that do not name one."""
    async with SanicProcess(
        "demo.server:app", "--single-process", ready_path="/"
    ) as server:
        async with httpx.AsyncClient() as http:
            page = (await http.get(server.url("/"))).text
            icon = await http.get(server.url("/favicon.ico"))
        assert '<link rel="icon" href="data:image/svg+xml,' in page
        assert icon.status_code == 200
        assert icon.headers["content-type"] == "image/svg+xml"
        assert icon.content.startswith(b"<svg")
        assert '<form id="name-form">' in page and 'id="name"' in page
    # The module says how to choose a name, as the page does.
    assert 'the "Your name" box' in (ROOT / "demo" / "server.py").read_text()


def _fake_venv(root: Path, log: Path) -> None:
    """A checkout with a .venv whose python and sanic only log their arguments."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "demo", root / "scripts" / "demo")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "sanic"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        tool.chmod(0o755)


def test_scripts_demo_installs_only_when_needed(tmp_path: Path) -> None:
    """A restart must not reinstall (12-20 s of pip each time): only the first
    run does, and a run after pyproject.toml changed."""
    log = tmp_path / "calls.log"
    _fake_venv(tmp_path / "checkout", log)
    script = tmp_path / "checkout" / "scripts" / "demo"

    def run() -> list[str]:
        log.write_text("")
        subprocess.run(["bash", str(script)], check=True, capture_output=True)
        return log.read_text().splitlines()

    first = run()
    assert first[0].startswith("python -m pip install") and first[0].endswith("-e .")
    assert first[1].startswith("sanic demo.server:app --host 127.0.0.1 --port 8000")
    assert run() == first[1:]  # served at once
    # pyproject.toml edited after the last install (the stamp is older).
    stamp = tmp_path / "checkout" / ".venv" / ".sanic-ws-ext-demo-installed"
    earlier = time.time() - 60
    os.utime(stamp, (earlier, earlier))
    assert run() == first
    assert run() == first[1:]


def test_the_docs_site_and_the_demo_use_different_ports() -> None:
    readme = (ROOT / "README.md").read_text()
    demo_port = re.search(r"bash scripts/demo .*http://127\.0\.0\.1:(\d+)/", readme)
    assert demo_port is not None
    dev_addr = re.search(r"^dev_addr: 127\.0\.0\.1:(\d+)$", MKDOCS, re.M)
    assert dev_addr is not None, "mkdocs.yml sets no dev_addr"
    assert dev_addr.group(1) != demo_port.group(1)
    for page in (readme, (ROOT / "docs" / "index.md").read_text()):
        served = re.findall(r"mkdocs serve.*?http://127\.0\.0\.1:(\d+)/", page, re.S)
        assert served == [dev_addr.group(1)], served
