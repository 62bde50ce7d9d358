"""Issue 19 from the browser: the client's tokens against a real server, in
headless Chromium (see tests/test_browser.py).

One app (``auth_app``) issues short-lived tokens at ``/token`` and refuses
in-band (``WS_AUTH_IN_BAND``): 4401 for a token it does not know or that
expired, 4403 for a banned user. The page's client asks ``/token`` on every
attempt. A token expiring mid-connection is refreshed without a reconnect;
one not refreshed closes with 4401 and the client fetches a new one; a
refused first token costs nothing queued; 4403 stops reconnects; a token
sent as a ``bearer.`` subprotocol is accepted and never echoed; and a
network that goes silent is noticed by the client's heartbeat in seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from playwright.async_api import Browser, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout
from sanic import Request, Sanic, html, text
from sanic_ext import Extend

from sanic_ws_ext import (
    Accept,
    Connection,
    Envelope,
    Reject,
    WSExtension,
    WSHandlers,
    bearer_token,
)
from sanic_ws_ext.testing import serve

from .conftest import units
from .test_browser import chromium

AppFactory = Callable[..., Sanic[Any, Any]]


class Tokens:
    """Tokens ``<user>.<n>``, each valid for ``ttl`` seconds from its issue."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._valid: dict[str, tuple[str, float]] = {}
        #: Tokens to hand out first, as they are (a stale one, say).
        self.script: list[str] = []
        self.issued: list[str] = []
        #: Every token a verify or refresh hook saw, in order.
        self.checked: list[str | None] = []
        #: Issue tokens for this user instead of the one asked for.
        self.impostor: str | None = None

    def issue(self, user: str) -> str:
        user = self.impostor or user
        if self.script:
            token = self.script.pop(0)
        else:
            token = f"{user}.{len(self.issued)}"
            self._valid[token] = (user, time.time() + self.ttl)
        self.issued.append(token)
        return token

    def check(self, token: str | None) -> Accept:
        self.checked.append(token)
        if token is None:
            raise Reject(401, "missing token")
        user, expires = self._valid.get(token, ("", 0.0))
        if user == "mallory":
            raise Reject(403, "banned")
        if not user or time.time() >= expires:
            raise Reject(401, "token expired")
        return Accept(user=user, expires_at=expires)


class Server:
    """What the app saw: connections as they came, and the notes they sent."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.notes: list[tuple[str, Any]] = []
        #: Each upgrade's query and offered subprotocols, as verify saw them.
        self.upgrades: list[tuple[dict[str, Any], str | None]] = []


def auth_app(
    make_app: AppFactory, tokens: Tokens, *, refresh: bool = True, **config: Any
) -> tuple[Sanic[Any, Any], Server]:
    config.setdefault("WS_AUTH_REFRESH_AHEAD", units(1.5))
    app = make_app(WS_AUTH_IN_BAND=True, WS_SUBPROTOCOLS=["chat.v1"], **config)
    Extend(app).register(WSExtension)
    ws = WSHandlers(app)
    seen = Server()

    @ws.verify
    async def check(request: Request) -> Accept:
        offered = request.headers.get("sec-websocket-protocol")
        seen.upgrades.append((dict(request.args), offered))
        return tokens.check(bearer_token(request) or request.args.get("token"))

    if refresh:

        @ws.on_refresh
        async def fresh(conn: Connection, token: str) -> Accept:
            return tokens.check(token)

    @ws.on_connect
    async def hello(conn: Connection) -> None:
        seen.conns.append(conn)
        await conn.send("hello", {"user": conn.user, "protocol": conn.subprotocol})

    @ws.on("note")
    async def note(conn: Connection, msg: Envelope) -> None:
        seen.notes.append((conn.id, msg.data))

    @app.get("/")
    async def blank(request: Request) -> Any:
        return html("<!doctype html><title>auth</title>")

    @app.get("/token")
    async def token(request: Request) -> Any:
        return text(tokens.issue(request.args.get("user", "")))

    return app, seen


#: Makes `window.ws`, logging what it sees in `window.log` (`[kind, ...]`)
#: and the reasons its token function was asked for in `window.reasons`.
CLIENT = """async ([user, url, options]) => {
    const { WSClient } = await import("/ws/client.js");
    const log = (window.log = []);
    const reasons = (window.reasons = []);
    const token = async ({ reason }) => {
        reasons.push(reason);
        return (await fetch(`/token?user=${user}`)).text();
    };
    const ws = (window.ws = new WSClient(url ?? undefined, { token, ...options }));
    ws.on("auth.error", (e) =>
        log.push(["auth.error", e.stage, e.code, e.reason, e.final]));
    ws.on("auth.refreshed", () => log.push(["auth.refreshed"]));
    ws.on("hello", (data) =>
        log.push(["hello", data.user, data.protocol, ws.protocol]));
    ws.subscribe((s) => log.push(["state", s.state, s.closeCode, s.closeReason]));
}"""


async def open_client(
    browser: Browser,
    base: str,
    user: str,
    *,
    url: str | None = None,
    **options: Any,
) -> Page:
    page = await browser.new_page()
    await page.goto(base + "/")
    await page.evaluate(CLIENT, [user, url, options])
    return page


async def log_of(page: Page) -> list[list[Any]]:
    log: list[list[Any]] = await page.evaluate("window.log")
    return log


async def until_logged(page: Page, entry: list[Any], count: int = 1) -> None:
    """Wait (bounded) until the page logged ``entry`` ``count`` times."""
    try:
        await page.wait_for_function(
            """([entry, count]) => window.log.filter(
                (e) => JSON.stringify(e) === JSON.stringify(entry)).length >= count""",
            arg=[entry, count],
            timeout=units(20) * 1000,
        )
    except PlaywrightTimeout:
        log = await log_of(page)
        raise AssertionError(f"never logged {entry} x{count}; the log: {log}") from None


def states(log: list[list[Any]]) -> list[list[Any]]:
    return [e[1:] for e in log if e[0] == "state"]


async def test_a_token_expiring_mid_connection_is_refreshed_without_a_reconnect(
    make_app: AppFactory,
) -> None:
    # Each refresh has 2 units to be done in: a token fetch and a request.
    tokens = Tokens(ttl=units(4))
    app, seen = auth_app(make_app, tokens, WS_AUTH_REFRESH_AHEAD=units(2))
    async with serve(app) as server, chromium() as browser:
        page = await open_client(browser, server.url(), "ann")
        await until_logged(page, ["hello", "ann", None, ""])
        first_expiry = time.time() + units(4)  # at the latest
        # Refreshed ahead of each expiry, past the first one by far.
        await until_logged(page, ["auth.refreshed"], count=3)
        assert time.time() > first_expiry
        assert await page.evaluate("window.ws.state") == "open"
        log = await log_of(page)
        assert len(seen.conns) == 1, "never reconnected"
        assert [e for e in log if e[0] == "auth.error"] == []
        assert states(log) == [["connecting", None, None], ["open", None, None]]
        reasons = await page.evaluate("window.reasons")
        assert reasons[:4] == ["connect", "refresh", "refresh", "refresh"]
        # Each refresh sent the token just issued, on the one connection.
        assert tokens.checked[:4] == tokens.issued[:4]
        await page.evaluate("window.ws.close()")


async def test_a_token_not_refreshed_closes_with_4401_and_a_new_one_is_fetched(
    make_app: AppFactory,
) -> None:
    """No on_refresh hook on the server: the client's refresh is refused
    (auth_unsupported), the connection closes with 4401 at the expiry, and
    the client reconnects with a token it asked for again."""
    tokens = Tokens(ttl=units(2.5))
    app, seen = auth_app(make_app, tokens, refresh=False)
    async with serve(app) as server, chromium() as browser:
        page = await open_client(browser, server.url(), "ann")
        await until_logged(page, ["hello", "ann", None, ""])
        await until_logged(page, ["hello", "ann", None, ""], count=2)
        log = await log_of(page)
        errors = [e[1:] for e in log if e[0] == "auth.error"]
        assert errors[0][:2] == ["refresh", "auth_unsupported"]
        assert ["connect", 4401, "token expired", False] in errors
        assert ["reconnecting", 4401, "token expired"] in states(log)
        reasons = await page.evaluate("window.reasons")
        assert reasons[:3] == ["connect", "refresh", "unauthorized"]
        assert len(seen.conns) == 2
        # The second connection came with the token issued after the 4401.
        assert tokens.checked[-1] == tokens.issued[2]
        await page.evaluate("window.ws.close()")


async def test_a_refused_first_token_costs_nothing_queued(
    make_app: AppFactory,
) -> None:
    """The first token is stale: the in-band 4401 comes right after the
    upgrade, the client fetches another, and what the page sent meanwhile
    reaches the server once, on the accepted connection."""
    tokens = Tokens(ttl=units(60))
    tokens.script = ["stale"]
    app, seen = auth_app(make_app, tokens)
    async with serve(app) as server, chromium() as browser:
        page = await browser.new_page()
        await page.goto(server.url("/"))
        await page.evaluate(CLIENT, ["ann", None, {"connect": False}])
        await page.evaluate(
            """() => {
                ws.send("note", "queued before connecting");
                ws.connect();
            }"""
        )
        await until_logged(page, ["hello", "ann", None, ""])
        await page.evaluate("window.ws.send('note', 'after')")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(10)
        while len(seen.notes) < 2:
            assert loop.time() < deadline, seen.notes
            await asyncio.sleep(0.02)
        assert [data for _, data in seen.notes] == ["queued before connecting", "after"]
        log = await log_of(page)
        assert ["auth.error", "connect", 4401, "token expired", False] in log
        assert await page.evaluate("window.reasons") == ["connect", "unauthorized"]
        assert tokens.checked == ["stale", tokens.issued[1]]
        await page.evaluate("window.ws.close()")


async def test_4403_stops_reconnects(make_app: AppFactory) -> None:
    tokens = Tokens(ttl=units(60))
    app, seen = auth_app(make_app, tokens)
    async with serve(app) as server, chromium() as browser:
        page = await open_client(browser, server.url(), "mallory")
        await until_logged(page, ["state", "closed", 4403, "banned"])
        log = await log_of(page)
        assert ["auth.error", "connect", 4403, "banned", True] in log
        status = await page.evaluate("window.ws.status")
        assert status["state"] == "closed" and status["nextRetryMs"] is None
        # Closed for good: the token was asked for once, checked once.
        assert await page.evaluate("window.reasons") == ["connect"]
        assert len(tokens.checked) == 1
        assert seen.conns == []


async def test_a_refresh_for_another_user_ends_in_4403(make_app: AppFactory) -> None:
    """The fresh token is someone else's: the server refuses the refresh
    (auth_user_mismatch) and closes with 4403, and the client stops."""
    tokens = Tokens(ttl=units(3))
    app, seen = auth_app(make_app, tokens)
    async with serve(app) as server, chromium() as browser:
        page = await open_client(browser, server.url(), "ann")
        await until_logged(page, ["hello", "ann", None, ""])
        tokens.impostor = "bob"
        await until_logged(page, ["state", "closed", 4403, "token is for another user"])
        log = await log_of(page)
        errors = [e[1:] for e in log if e[0] == "auth.error"]
        assert errors[0][:2] == ["refresh", "auth_user_mismatch"]
        assert errors[-1] == ["connect", 4403, "token is for another user", True]
        assert await page.evaluate("window.reasons") == ["connect", "refresh"]
        assert len(seen.conns) == 1


async def test_a_subprotocol_token_is_accepted_and_not_echoed(
    make_app: AppFactory,
) -> None:
    tokens = Tokens(ttl=units(60))
    app, seen = auth_app(make_app, tokens)
    async with serve(app) as server, chromium() as browser:
        page = await open_client(
            browser,
            server.url(),
            "ann",
            protocols=["chat.v1"],
            tokenTransport="subprotocol",
        )
        # The server read the token from the offer and selected the app's
        # protocol: the browser's socket says so.
        await until_logged(page, ["hello", "ann", "chat.v1", "chat.v1"])
        assert await page.evaluate("window.ws.protocol") == "chat.v1"
        assert tokens.checked == [tokens.issued[0]]
        [(query, offered)] = seen.upgrades
        assert "token" not in query, "not in the URL"
        assert offered is not None
        assert [p.strip() for p in offered.split(",")] == [
            "chat.v1",
            f"bearer.{tokens.issued[0]}",
        ]
        await page.evaluate("window.ws.close()")


class StallableLink:
    """A TCP proxy that can go silent: the connections through it stay
    open but nothing passes any more, as when a network goes away without
    a word (no reset, no FIN). New connections pass."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._stalled: set[asyncio.StreamWriter] = set()
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StallableLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in list(self._links):
            writer.transport.abort()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def stall(self) -> None:
        """Silence every connection open now."""
        self._stalled.update(self._links)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                if writer in self._stalled:
                    continue  # swallowed: the other end hears nothing
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(writer)
            self._stalled.discard(writer)
            writer.transport.abort()


async def test_a_silent_network_is_noticed_by_the_heartbeat(
    make_app: AppFactory,
) -> None:
    """The link goes silent: no close reaches the browser, so only the
    client's heartbeat can tell. It gives up on the socket and reconnects."""
    tokens = Tokens(ttl=units(60))
    # No keep-alive: the page's token requests after the stall take new
    # connections, as they would on the network that came back.
    app, seen = auth_app(make_app, tokens, WS_PING_INTERVAL=None, KEEP_ALIVE=False)
    async with (
        serve(app) as server,
        StallableLink(server.port) as link,
        chromium() as browser,
    ):
        page = await open_client(
            browser,
            f"http://127.0.0.1:{link.port}",
            "ann",
            heartbeatMs=units(0.5) * 1000,
            heartbeatTimeoutMs=units(3) * 1000,
        )
        await until_logged(page, ["hello", "ann", None, ""])
        started = time.monotonic()
        link.stall()
        dead = ["state", "reconnecting", 1006, "heartbeat timeout"]
        await until_logged(page, dead)
        noticed = time.monotonic() - started
        assert noticed < units(10), noticed
        # A new connection (through the link, not silenced) carries on.
        await until_logged(page, ["hello", "ann", None, ""], count=2)
        assert len(seen.conns) == 2
        assert await page.evaluate("window.ws.state") == "open"
        await page.evaluate("window.ws.close()")
