"""``POST <WS_PATH>/publish``: sending over HTTP, without Redis.

Refusals on one in-process app; every call across a real `sanic --workers 4`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from sanic_ws_ext import ConfigError, WSConfig
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import AppFactory, ws_app
from .test_cluster import cluster, drain

TOKEN = "publish-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_config() -> None:
    config = WSConfig.from_mapping({})
    assert (config.publish_token, config.publish_max) == (None, 64 * 1024)
    on = WSConfig.from_mapping({"WS_PUBLISH_TOKEN": TOKEN, "WS_PUBLISH_MAX": 100})
    assert (on.publish_token, on.publish_max) == (TOKEN, 100)
    assert WSConfig.from_mapping({"WS_PUBLISH_TOKEN": "off"}).publish_token is None
    for bad in ({"WS_PUBLISH_TOKEN": "short"}, {"WS_PUBLISH_MAX": 0}):
        with pytest.raises(ConfigError):
            WSConfig.from_mapping(bad)


async def test_off_by_default(make_app: AppFactory) -> None:
    app, _, _ = ws_app(make_app)
    async with serve(app) as server, httpx.AsyncClient() as http:
        refused = await http.post(server.url("/ws/publish"), json={"op": "x"})
        assert refused.status_code == 404


async def test_refusals(make_app: AppFactory) -> None:
    app, _, _ = ws_app(
        make_app, WS_PUBLISH_TOKEN=TOKEN, WS_PUBLISH_MAX=1000, WS_MAX_PUBLISH=8192
    )
    async with serve(app) as server, httpx.AsyncClient() as http:
        url = server.url("/ws/publish")
        client = await WSTestClient.connect(server.ws_url())
        call = {"op": "broadcast", "type": "t", "data": 1}
        for headers in ({}, {"authorization": f"Bearer {TOKEN}x"}, {"x": "y"}):
            refused = await http.post(url, json=call, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
        basic = {"authorization": f"Basic {TOKEN}"}
        assert (await http.post(url, json=call, headers=basic)).status_code == 401

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length
            for _ in range(20):
                yield b" " * 100

        for body in (b" " * 1001, chunks()):
            too_big = await http.post(url, content=body, headers=AUTH)
            assert too_big.status_code == 413, too_big.text
        for body, why in (
            (b"{", "not JSON"),
            (b"[1]", "a JSON object"),
            (b'{"op": "shout"}', "op must be one of"),
            (b'{"op": "send", "type": "t"}', "send needs conn_id"),
            (b'{"op": "broadcast", "type": "t", "room": "r"}', "takes no room"),
            (b'{"op": "broadcast", "data": 1}', "needs a type"),
            (b'{"op": "join", "conn_id": "c", "room": ""}', "non-empty"),
            (b'{"op": "broadcast", "type": "t", "exclude": "c"}', "exclude"),
        ):
            bad = await http.post(url, content=body, headers=AUTH)
            assert bad.status_code == 400 and why in bad.json()["error"], bad.text
        assert (await http.get(url, headers=AUTH)).status_code == 405
        ok = await http.post(url, json=call, headers=AUTH)
        assert ok.status_code == 202
        assert ok.json() == {"accepted": True, "op": "broadcast"}
        assert (await client.expect("t")).data == 1
        await client.close()


async def test_every_call_across_four_workers() -> None:
    env = {"SANIC_WS_PUBLISH_TOKEN": TOKEN}
    async with cluster(env=env) as c, httpx.AsyncClient() as http:
        await c.cover(per_worker=2)
        url = c.server.url("/ws/publish")
        everyone = c.clients
        a = everyone[0]
        assert await c.until(a, "count", lambda n: n == len(everyone))

        async def post(**call: object) -> None:
            answer = await http.post(url, json=call, headers=AUTH)
            assert answer.status_code == 202, answer.text

        n = 40  # on one keep-alive connection: one worker, in order
        for i in range(n):
            await post(op="broadcast", type="h", data=i)
        for client in everyone:
            assert await drain(client, "h", n) == list(range(n))
        # A connection per request: any worker takes each, every one arrives.
        for i in range(n):
            async with httpx.AsyncClient() as once:
                answer = await once.post(
                    url, json={"op": "broadcast", "type": "h2", "data": i}, headers=AUTH
                )
                assert answer.status_code == 202
        for client in everyone:
            assert sorted(await drain(client, "h2", n)) == list(range(n))
        far = everyone[-1]
        await post(op="send", conn_id=far.id, type="h.direct", data="far")
        assert (await far.ws.expect("h.direct")).data == "far"
        bob = await c.connect(user="bob")
        await post(op="send_user", user="bob", type="h.user", data="bob")
        assert (await bob.ws.expect("h.user")).data == "bob"
        members = everyone[1:4]
        for member in members:
            await post(op="join", conn_id=member.id, room="lobby")
        want = sorted(m.id for m in members)
        assert await c.until(a, "members", lambda m: m == want, room="lobby")
        await post(op="publish", room="lobby", type="h.room", data="news")
        for member in members:
            assert (await member.ws.expect("h.room")).data == "news"
        await post(op="leave", conn_id=members[0].id, room="lobby")
        rest = sorted(m.id for m in members[1:])
        assert await c.until(a, "members", lambda m: m == rest, room="lobby")
        await post(op="disconnect", conn_id=far.id, code=4002, reason="http")
        assert await far.ws.wait_closed(units(10)) == (4002, "http")
        c.clients.remove(far)
        await post(op="disconnect_user", user="bob", code=4003, reason="out")
        assert await bob.ws.wait_closed(units(10)) == (4003, "out")
        c.clients.remove(bob)
