"""The demo runs as the README says, and its chat works (protocol level)."""

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
            client_js = await http.get(server.url("/ws/client.js"))
        assert "sanic-ws-ext chat" in page.text
        assert client_js.headers["content-type"].startswith("text/javascript")
        assert "export class WSClient" in client_js.text
        alice = await WSTestClient.connect(server.ws_url() + "?name=alice")
        assert (await alice.expect("chat.welcome")).data["name"] == "alice"
        await alice.send("room.join", {"room": "lobby"})
        assert (await alice.expect("room.joined")).data == {"room": "lobby"}
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
        assert (await bob.expect("error")).data["code"] == "bad_text"
        await bob.send("chat.send", {"room": "dev", "text": "x"})
        assert (await bob.expect("error")).data["code"] == "not_in_room"
        await bob.send("room.join", {"room": "secret"})
        assert (await bob.expect("error")).data["code"] == "room_refused"
        await bob.close()
        assert list((await alice.expect("presence.diff")).data["leaves"]) == ["bob"]
        await alice.close()
