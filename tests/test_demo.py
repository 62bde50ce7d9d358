"""The demo runs as the README says, and its chat works."""

from __future__ import annotations

import httpx

from sanic_ws_ext.testing import WSTestClient

from .procs import SanicProcess


async def test_demo_chat() -> None:
    async with SanicProcess(
        "demo.server:app", "--workers", "2", ready_path="/"
    ) as server:
        async with httpx.AsyncClient() as http:
            page = await http.get(server.url("/"))
        assert "sanic-ws-ext chat" in page.text
        alice = await WSTestClient.connect(server.ws_url())
        await alice.expect("chat.welcome")
        bob = await WSTestClient.connect(server.ws_url())
        bob_id = (await bob.expect("chat.welcome")).data["id"]
        assert (await alice.expect("chat.joined")).data["id"] == bob_id
        await alice.send("chat.send", {"text": "hi bob"})
        for client in (alice, bob):
            assert (await client.expect("chat.message")).data["text"] == "hi bob"
        await bob.send("chat.send", {"text": ""})
        assert (await bob.expect("error")).data["code"] == "bad_text"
        await bob.close()
        assert (await alice.expect("chat.left")).data["id"] == bob_id
        await alice.close()
