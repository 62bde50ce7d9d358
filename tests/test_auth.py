"""Issue 19: authentication for long-lived connections, against real servers.

In-band refusal (``WS_AUTH_IN_BAND``), expiry and refresh (``auth.refresh``,
``on_refresh``), subprotocols (``WS_SUBPROTOCOLS``, ``bearer.<token>``) and
``disconnect_user`` on one server; tests/test_auth_cluster.py runs
``disconnect_user`` across workers and machines.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sanic import Request
from sanic.exceptions import Forbidden, Unauthorized
from websockets.exceptions import InvalidStatus

from sanic_ws_ext import (
    Accept,
    Connection,
    ErrorCode,
    Reject,
    RequestFailed,
    WSHandlers,
    bearer_token,
)
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import AppFactory, until, ws_app

# -- in-band refusal --------------------------------------------------------


def refusing_app(make_app: AppFactory, **config: Any) -> tuple[Any, list[str]]:
    app, ws, _ = ws_app(make_app, WS_AUTH_IN_BAND=True, **config)
    ran: list[str] = []

    @ws.verify
    async def check(request: Request) -> Accept:
        token = request.args.get("token")
        if token == "expired":
            raise Reject(401, "token expired")
        if token == "sanic":
            raise Unauthorized("bad signature")
        if token == "banned":
            raise Forbidden("banned")
        if token == "long":
            raise Reject(401, "é" * 100)  # 200 bytes of UTF-8
        if token is None:
            raise Reject(401, "missing token")
        return Accept(user=token)

    @ws.on_connect
    async def connected(conn: Connection) -> None:
        ran.append("connect")

    @ws.on_disconnect
    async def gone(conn: Connection) -> None:
        ran.append("disconnect")

    return app, ran


@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        ("expired", 4401, "token expired"),
        ("sanic", 4401, "bad signature"),
        ("banned", 4403, "banned"),
        # Cut to a close frame's 123 bytes, never inside a character.
        ("long", 4401, "é" * 61),
    ],
)
async def test_in_band_refusal_closes_with_4000_plus_status(
    make_app: AppFactory, token: str, code: int, reason: str
) -> None:
    app, ran = refusing_app(make_app)
    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url() + f"?token={token}")
        assert await client.wait_closed() == (code, reason)
        # No connection was made: no handler ran, nothing counted.
        assert ran == []
        assert len(app.ctx.ws.connections) == 0
        await until(lambda: not app.ctx.ws._lingering)
        assert app.ctx.ws._limits.open_count("127.0.0.1") == 0
        # An accepted one still is a connection.
        async with await WSTestClient.connect(server.ws_url() + "?token=ann"):
            await until(lambda: ran == ["connect"])


async def test_in_band_refusal_is_charged_like_any_attempt(
    make_app: AppFactory,
) -> None:
    app, _ = refusing_app(
        make_app, WS_CONNECT_RATE_PER_IP=0.001, WS_CONNECT_BURST_PER_IP=2
    )
    async with serve(app) as server:
        for _ in range(2):
            client = await WSTestClient.connect(server.ws_url() + "?token=expired")
            assert (await client.wait_closed())[0] == 4401
        # The bucket is empty: the third attempt is refused before any hook,
        # over HTTP, as without WS_AUTH_IN_BAND.
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(server.ws_url() + "?token=expired")
        assert info.value.response.status_code == 429


async def test_in_band_refusal_counts_against_the_per_ip_limit(
    make_app: AppFactory,
) -> None:
    app, _ = refusing_app(make_app, WS_MAX_CONNECTIONS_PER_IP=1)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url() + "?token=ann"),
    ):
        # At the limit: 429 over HTTP, not a free in-band refusal.
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(server.ws_url() + "?token=expired")
        assert info.value.response.status_code == 429


async def test_other_refusals_stay_http(make_app: AppFactory) -> None:
    app, _ = refusing_app(make_app)
    async with serve(app) as server:
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(
                server.ws_url() + "?token=expired", origin="https://evil.example"
            )
        assert info.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(
                server.ws_url() + "?token=ann",
                headers={"Sec-WebSocket-Protocol": "chat v2"},
            )
        assert info.value.response.status_code == 400


async def test_without_in_band_a_refusal_is_http(make_app: AppFactory) -> None:
    app, _ = refusing_app(make_app)
    app.config.WS_AUTH_IN_BAND = False
    async with serve(app) as server:
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(server.ws_url() + "?token=expired")
        assert info.value.response.status_code == 401


# -- subprotocols and bearer tokens ----------------------------------------------


def protocol_app(
    make_app: AppFactory, **config: Any
) -> tuple[Any, list[str | None], list[Connection]]:
    app, ws, _ = ws_app(make_app, **config)
    tokens: list[str | None] = []
    conns: list[Connection] = []

    @ws.verify
    async def check(request: Request) -> Accept:
        token = bearer_token(request)
        tokens.append(token)
        if token is None:
            raise Reject(401, "missing token")
        if token == "stale":
            raise Reject(401, "token expired")
        return Accept(user=token.partition(".")[0])

    @ws.on_connect
    async def connected(conn: Connection) -> None:
        conns.append(conn)
        await conn.send("hello", {"user": conn.user, "protocol": conn.subprotocol})

    return app, tokens, conns


async def test_bearer_subprotocol_is_read_and_never_echoed(
    make_app: AppFactory,
) -> None:
    app, tokens, _ = protocol_app(make_app, WS_SUBPROTOCOLS=["chat.v2", "chat"])
    async with serve(app) as server:
        token = "alice.eyJ1c2VyIjoiYWxpY2UifQ.c2ln_-"
        client = await WSTestClient.connect(
            server.ws_url(), subprotocols=[f"bearer.{token}", "chat", "chat.v2"]
        )
        async with client:
            hello = await client.expect("hello")
            # The client's order decides among those the server speaks.
            assert hello.data == {"user": "alice", "protocol": "chat"}
            assert tokens == [token]
            response = client.connection.response
            assert response is not None
            assert response.headers.get_all("Sec-WebSocket-Protocol") == ["chat"]
            assert client.connection.subprotocol == "chat"


async def test_no_protocol_in_common_answers_without_the_header(
    make_app: AppFactory,
) -> None:
    app, _, _ = protocol_app(make_app, WS_SUBPROTOCOLS=["chat"])
    async with serve(app) as server:
        # A bearer entry alone is never selected: no header (a browser then
        # fails the connection; websockets' client accepts it).
        client = await WSTestClient.connect(
            server.ws_url(), subprotocols=["bearer.bob", "graphql-ws"]
        )
        async with client:
            hello = await client.expect("hello")
            assert hello.data == {"user": "bob", "protocol": None}
            response = client.connection.response
            assert response is not None
            assert "Sec-WebSocket-Protocol" not in response.headers


async def test_a_hook_chooses_the_subprotocol(make_app: AppFactory) -> None:
    app, ws, _ = ws_app(make_app, WS_SUBPROTOCOLS=["v1"])
    seen: list[list[str]] = []

    @ws.subprotocol
    async def newest(request: Request, offered: list[str]) -> str | None:
        seen.append(offered)
        return max(offered) if "v2" in offered else None

    @ws.on_connect
    async def connected(conn: Connection) -> None:
        await conn.send("hello", conn.subprotocol)

    async with serve(app) as server:
        async with await WSTestClient.connect(
            server.ws_url(), subprotocols=["v1", "bearer.x", "v2"]
        ) as client:
            assert (await client.expect("hello")).data == "v2"
        async with await WSTestClient.connect(
            server.ws_url(), subprotocols=["v1"]
        ) as client:
            # None: WS_SUBPROTOCOLS decides.
            assert (await client.expect("hello")).data == "v1"
        assert seen == [["v1", "v2"], ["v1"]]


async def test_a_hook_choosing_what_was_not_offered_is_the_apps_error(
    make_app: AppFactory,
) -> None:
    app, ws, _ = ws_app(make_app, WS_AUTH_IN_BAND=True)

    @ws.subprotocol
    async def echo_token(request: Request, offered: list[str]) -> str:
        return "bearer.x"  # never selectable

    @ws.verify
    async def failing(request: Request) -> Accept:
        if request.args.get("fail"):
            raise RuntimeError("bug")  # not a refusal: 500, never in-band
        return Accept()

    async with serve(app) as server:
        for query in ("", "?fail=1"):
            with pytest.raises(InvalidStatus) as info:
                await WSTestClient.connect(
                    server.ws_url() + query, subprotocols=["v1", "bearer.x"]
                )
            assert info.value.response.status_code == 500


async def test_in_band_refusal_selects_the_subprotocol(make_app: AppFactory) -> None:
    # A browser that offered subprotocols fails a 101 without one, and would
    # never see the close code: the refusal selects it as an upgrade would.
    app, _, _ = protocol_app(make_app, WS_SUBPROTOCOLS=["chat"], WS_AUTH_IN_BAND=True)
    async with serve(app) as server:
        client = await WSTestClient.connect(
            server.ws_url(), subprotocols=["chat", "bearer.stale"]
        )
        assert client.connection.subprotocol == "chat"
        assert await client.wait_closed() == (4401, "token expired")


async def http_upgrade(port: int, protocols: str) -> tuple[int, bytes]:
    """An upgrade request with this Sec-WebSocket-Protocol: the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocols}\r\n"
                "\r\n"
            ).encode()
        )
        async with asyncio.timeout(units(5)):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
        return status, body
    finally:
        writer.close()
        await writer.wait_closed()


async def test_huge_offers_get_a_clear_answer(make_app: AppFactory) -> None:
    app, tokens, conns = protocol_app(
        make_app, WS_SUBPROTOCOLS=["chat"], WS_AUTH_IN_BAND=True
    )
    async with serve(app) as server:
        # 65 entries: past the extension's bound, before any verify hook.
        status, body = await http_upgrade(
            server.port, ", ".join(f"p{i}" for i in range(65))
        )
        assert status == 400
        assert b"at most 64" in body
        # 10,000 entries (about 70 KB): Sanic refuses the request head first.
        status, body = await http_upgrade(
            server.port, ", ".join(f"p{i}" for i in range(10_000))
        )
        assert status == 413
        assert b"Request header exceeds the size limit" in body
        # Entries that are not tokens; a header over 4 KiB within Sanic's
        # bound (a long bearer token).
        status, body = await http_upgrade(server.port, 'chat, "quoted"')
        assert (status, b"RFC 7230 tokens" in body) == (400, True)
        status, body = await http_upgrade(server.port, "chat, bearer." + "a" * 5000)
        assert (status, b"longer than 4096" in body) == (400, True)
        assert tokens == [] and conns == []


async def test_huge_offers_with_a_large_header_bound(make_app: AppFactory) -> None:
    # Sanic's largest bound on a request head (16 KiB): 5,000 entries fit it.
    app, tokens, _ = protocol_app(make_app, REQUEST_MAX_HEADER_SIZE=16384)
    async with serve(app) as server:
        status, body = await http_upgrade(
            server.port, ",".join("p" for _ in range(5_000))
        )
        assert status == 400
        assert b"longer than 4096 bytes" in body
        # Empty list elements are allowed (RFC 7230) and skipped: the hooks
        # run (no bearer entry here: 401).
        status, body = await http_upgrade(server.port, "," * 3000 + "p1")
        assert status == 401
        assert tokens == [None]


# -- expiry and refresh -----------------------------------------------------------


def expiring_app(
    make_app: AppFactory, *, ttl: float, **config: Any
) -> tuple[Any, WSHandlers, list[str]]:
    """Accepts ``?user=...`` for ``ttl`` seconds."""
    config.setdefault("WS_AUTH_REFRESH_AHEAD", units(1.5))
    app, ws, _ = ws_app(make_app, **config)
    seen: list[str] = []

    @ws.verify
    async def check(request: Request) -> Accept:
        return Accept(user=request.args.get("user"), expires_at=time.time() + ttl)

    @ws.on_connect
    async def connected(conn: Connection) -> None:
        seen.append("connect")

    return app, ws, seen


async def test_the_earliest_expiry_of_the_verify_hooks_wins(
    make_app: AppFactory,
) -> None:
    app, ws, _ = ws_app(make_app)

    @ws.verify
    async def first(request: Request) -> Accept:
        return Accept(user="ann", expires_at=2_000_000_100)

    @ws.verify
    async def second(request: Request) -> Accept:
        return Accept(expires_at=2_000_000_000)

    @ws.verify
    async def third(request: Request) -> Accept:
        return Accept(meta={"none": True})

    async with serve(app) as server, await WSTestClient.connect(server.ws_url()):
        await until(lambda: len(app.ctx.ws.connections) == 1)
        (conn,) = app.ctx.ws.connections.values()
        assert (conn.user, conn.expires_at) == ("ann", 2_000_000_000.0)


async def test_a_token_not_refreshed_closes_with_4401(make_app: AppFactory) -> None:
    app, _, _ = expiring_app(make_app, ttl=units(2))
    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url() + "?user=ann")
        ask = await client.expect("auth.refresh")
        expires = ask.data["expires_at"]
        assert time.time() < expires
        assert await client.wait_closed() == (4401, "token expired")
        # Not before its time (the sweep's precision is after it, not before).
        assert time.time() >= expires


async def test_expiry_without_pings(make_app: AppFactory) -> None:
    app, _, _ = expiring_app(make_app, ttl=units(1), WS_PING_INTERVAL=None)
    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url() + "?user=ann")
        assert await client.wait_closed() == (4401, "token expired")


async def test_a_refreshed_token_keeps_the_connection(make_app: AppFactory) -> None:
    app, ws, seen = expiring_app(make_app, ttl=units(2))
    tokens: list[str] = []

    @ws.on_refresh
    async def fresh(conn: Connection, token: str) -> Accept:
        tokens.append(token)
        return Accept(user=conn.user, expires_at=time.time() + units(4))

    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url() + "?user=ann") as client,
    ):
        first = (await client.expect("auth.refresh")).data["expires_at"]
        reply = await client.request("auth.refresh", {"token": "t1"})
        second = reply["expires_at"]
        assert second > first
        # Asked again ahead of the new expiry, past the old one, on the
        # same connection: no reconnect.
        again = await client.expect("auth.refresh", timeout=units(10))
        assert again.data["expires_at"] == second
        assert time.time() > first
        reply = await client.request("auth.refresh", {"token": "t2"})
        assert reply["expires_at"] > second
        (conn,) = app.ctx.ws.connections.values()
        assert conn.expires_at == reply["expires_at"]
        assert tokens == ["t1", "t2"] and seen == ["connect"]


async def test_a_refresh_may_return_the_expiry_alone(make_app: AppFactory) -> None:
    app, ws, _ = expiring_app(make_app, ttl=units(30))

    @ws.on_refresh
    async def fresh(conn: Connection, token: str) -> float:
        return 2e9

    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        reply = await client.request("auth.refresh", {"token": "x"})
        assert reply == {"expires_at": 2e9}


async def test_a_refresh_to_the_same_expiry_is_not_asked_again(
    make_app: AppFactory,
) -> None:
    app, ws, _ = expiring_app(make_app, ttl=units(2))

    @ws.on_refresh
    async def same(conn: Connection, token: str) -> float | None:
        return conn.expires_at

    async with serve(app) as server:
        client = await WSTestClient.connect(server.ws_url())
        first = (await client.expect("auth.refresh")).data["expires_at"]
        reply = await client.request("auth.refresh", {"token": "cached"})
        assert reply == {"expires_at": first}
        (conn,) = app.ctx.ws.connections.values()
        assert conn._refresh_asked  # no prompt at every tick until the expiry
        assert await client.wait_closed() == (4401, "token expired")


async def test_refused_refreshes(make_app: AppFactory) -> None:
    app, ws, _ = expiring_app(make_app, ttl=units(30), WS_AUTH_TOKEN_MAX=64)
    errors: list[str] = []

    @ws.on_refresh
    async def fresh(conn: Connection, token: str) -> Accept:
        if token == "mallory":
            return Accept(user="mallory", expires_at=time.time() + 60)
        if token == "sanic":
            raise Unauthorized("expired")
        if token != "good":
            raise Reject(401, "bad signature")
        return Accept(expires_at=time.time() + 60)

    @ws.on_error
    async def failed(conn: Connection, exc: Exception) -> None:
        errors.append(type(exc).__name__)

    async def refused(client: WSTestClient, data: Any) -> tuple[str, str]:
        with pytest.raises(RequestFailed) as info:
            await client.request("auth.refresh", data)
        return info.value.code, info.value.reason

    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url() + "?user=ann") as client,
    ):
        (conn,) = app.ctx.ws.connections.values()
        expires = conn.expires_at
        bad = ErrorCode.INVALID_ENVELOPE
        assert (await refused(client, {"token": "garbage"})) == (
            ErrorCode.AUTH_REFUSED,
            "bad signature",
        )
        assert await refused(client, {"token": "sanic"}) == ("auth_refused", "expired")
        assert (await refused(client, {"token": 7}))[0] == bad
        assert (await refused(client, None))[0] == bad
        assert (await refused(client, {"token": ""}))[0] == bad
        assert (await refused(client, {"token": "t" * 65}))[0] == bad
        # Nothing changed, the connection stays.
        assert conn.expires_at == expires
        assert (await client.request("auth.refresh", {"token": "good"}))[
            "expires_at"
        ] > expires
        # Without a ref: the usual error frame.
        await client.send("auth.refresh", {"token": 7})
        error = await client.expect("error")
        assert error.data["code"] == bad
        # Another user's token: refused, then closed with 4403.
        assert (await refused(client, {"token": "mallory"}))[0] == (
            ErrorCode.AUTH_USER_MISMATCH
        )
        assert await client.wait_closed() == (4403, "token is for another user")
        assert conn.user == "ann"
    assert "MessageError" in errors


async def test_a_refresh_without_hooks_is_unsupported(make_app: AppFactory) -> None:
    app, _, _ = expiring_app(make_app, ttl=units(30))
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        with pytest.raises(RequestFailed) as info:
            await client.request("auth.refresh", {"token": "x"})
        assert info.value.code == ErrorCode.AUTH_UNSUPPORTED


def test_auth_refresh_is_the_extensions(make_app: AppFactory) -> None:
    _, ws, _ = ws_app(make_app)
    with pytest.raises(ValueError, match="on_refresh"):
        ws.on("auth.refresh")


async def test_a_bad_expiry_is_the_apps_error(make_app: AppFactory) -> None:
    app, ws, _ = ws_app(make_app)

    @ws.verify
    async def check(request: Request) -> Accept:
        return Accept(expires_at=float("nan"))

    async with serve(app) as server:
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(server.ws_url())
        assert info.value.response.status_code == 500


# -- disconnect_user ----------------------------------------------------------------


async def test_disconnect_user_closes_all_of_theirs(make_app: AppFactory) -> None:
    app, ws, gone = ws_app(make_app)

    @ws.verify
    async def check(request: Request) -> Accept:
        return Accept(user=request.args.get("user"))

    async with serve(app) as server:
        url = server.ws_url()
        a1 = await WSTestClient.connect(url + "?user=alice")
        a2 = await WSTestClient.connect(url + "?user=alice")
        async with await WSTestClient.connect(url + "?user=bob") as bob:
            await until(lambda: len(app.ctx.ws.connections) == 3)
            await app.ctx.ws.disconnect_user("alice", 4401, "logged out")
            assert await a1.wait_closed() == (4401, "logged out")
            assert await a2.wait_closed() == (4401, "logged out")
            for _ in range(2):
                conn = await asyncio.wait_for(gone.get(), units(5))
                assert (conn.user, conn.close_code) == ("alice", 4401)
            await bob.send("ping")  # still open
            assert await app.ctx.ws.users() == {"bob": 1}
        with pytest.raises(ValueError, match="1000 or 3000"):
            await app.ctx.ws.disconnect_user("bob", 1001)
        with pytest.raises(ValueError, match="123"):
            await app.ctx.ws.disconnect_user("bob", 4000, "x" * 124)
        with pytest.raises(TypeError):
            await app.ctx.ws.disconnect_user("", 4000)
