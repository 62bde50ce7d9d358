"""Issue 19's server side from a real Chromium, with the bare ``WebSocket`` API.

The browser client's own handling (refresh, telling an expired token from a
server that is down) is tested with client.js; here the page speaks to the
server directly, so what is checked is what the server puts on the wire.
"""

from __future__ import annotations

from typing import Any

from sanic import Request, html

from sanic_ws_ext import Accept, Connection, Reject, bearer_token
from sanic_ws_ext.testing import serve

from .conftest import units
from .helpers import AppFactory, ws_app
from .test_browser import chromium

OPEN = """async ([url, protocols]) => {
    const ws = new WebSocket(url, protocols);
    const first = new Promise((resolve) => {
        ws.onmessage = (e) => resolve(JSON.parse(e.data));
    });
    const closed = new Promise((resolve) => {
        ws.onclose = (e) => resolve({ code: e.code, reason: e.reason });
    });
    const opened = await Promise.race([
        new Promise((resolve) => { ws.onopen = () => resolve(true); }),
        closed.then(() => false),
    ]);
    if (!opened) return { opened, closed: await closed };
    const protocol = ws.protocol;
    const hello = await Promise.race([first, closed.then(() => null)]);
    ws.close();
    return { opened, protocol, hello, closed: await closed };
}"""


async def test_bearer_subprotocol_and_in_band_refusal_in_chromium(
    make_app: AppFactory,
) -> None:
    app, ws, _ = ws_app(make_app, WS_SUBPROTOCOLS=["chat"], WS_AUTH_IN_BAND=True)

    @ws.verify
    async def check(request: Request) -> Accept:
        token = bearer_token(request)
        if token is None:
            raise Reject(401, "missing token")
        if not token.startswith("ok."):
            raise Reject(401, "token expired")
        return Accept(user=token.split(".")[1])

    @ws.on_connect
    async def hello(conn: Connection) -> None:
        await conn.send("hello", {"user": conn.user, "protocol": conn.subprotocol})

    @app.get("/")
    async def blank(request: Any) -> Any:
        return html("<!doctype html><title>auth</title>")

    async with serve(app) as server, chromium() as browser:
        page = await browser.new_page()
        await page.goto(server.url("/"))
        url = server.ws_url()
        page.set_default_timeout(units(20) * 1000)
        # A JWT-like token as a subprotocol entry: selected "chat", the
        # token never echoed (Chromium would fail a 101 naming a protocol
        # it did not offer as the only one, and ws.protocol shows the echo).
        good = await page.evaluate(OPEN, [url, ["chat", "bearer.ok.alice.c2ln_-x"]])
        assert good["opened"] is True
        assert good["protocol"] == "chat"
        assert good["hello"]["data"] == {"user": "alice", "protocol": "chat"}
        # A refused token: the page sees why, in the close event.
        bad = await page.evaluate(OPEN, [url, ["chat", "bearer.stale.alice"]])
        assert bad == {
            "opened": True,
            "protocol": "chat",
            "hello": None,
            "closed": {"code": 4401, "reason": "token expired"},
        }
        # Offered protocols the server does not speak: per RFC 6455 the 101
        # names none, and Chromium fails the connection (1006), as documented.
        none = await page.evaluate(OPEN, [url, ["graphql-ws", "bearer.ok.bob"]])
        assert none["opened"] is False
        assert none["closed"]["code"] == 1006
