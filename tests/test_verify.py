"""The verify hook and the origin allowlist decide before the upgrade."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic.exceptions import Unauthorized
from sanic_ext import Extend
from websockets.exceptions import InvalidStatus

from sanic_ws_ext import Accept, Connection, Reject, WSExtension, WSHandlers
from sanic_ws_ext.testing import WSTestClient, serve

AppFactory = Callable[..., Sanic[Any, Any]]


def build(make_app: AppFactory, **config: Any) -> tuple[Sanic[Any, Any], list[str]]:
    app = make_app(**config)
    Extend(app).register(WSExtension)
    handlers = WSHandlers(app)
    connected: list[str] = []

    @handlers.verify
    async def check_token(request: Request) -> Accept | None:
        token = request.args.get("token")
        if token is None:
            raise Reject(401, "missing token")
        if token == "expired":
            raise Unauthorized("token expired")
        if token == "junk":
            return "alice"  # type: ignore[return-value]
        return Accept(user=token, meta={"token_ok": True})

    @handlers.verify
    async def add_meta(request: Request) -> Accept | None:
        return Accept(meta={"lang": request.headers.get("accept-language", "en")})

    @handlers.on_connect
    async def hello(conn: Connection) -> None:
        connected.append(conn.id)
        await conn.send("hello", {"user": conn.user, "meta": conn.meta})

    return app, connected


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        ("", 401, "missing token"),
        ("?token=expired", 401, "token expired"),
        ("?token=junk", 500, ""),
    ],
)
async def test_rejected_before_upgrade(
    make_app: AppFactory, query: str, status: int, reason: str
) -> None:
    app, connected = build(make_app)
    async with serve(app) as server:
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(server.ws_url() + query)
        assert info.value.response.status_code == status
        assert reason.encode() in info.value.response.body
        assert connected == []
        assert await app.ctx.ws.count() == 0


async def test_accepted_with_identity_and_merged_meta(make_app: AppFactory) -> None:
    app, connected = build(make_app)
    async with serve(app) as server:
        client = await WSTestClient.connect(
            server.ws_url() + "?token=bob", headers={"Accept-Language": "fr"}
        )
        hello = await client.expect("hello")
        assert hello.data == {"user": "bob", "meta": {"token_ok": True, "lang": "fr"}}
        assert len(connected) == 1
        await client.close()


@pytest.mark.parametrize(
    ("allowed", "origin", "ok"),
    [
        ((), None, True),  # not a browser: nothing to hijack
        ((), "http://evil.example", False),
        ((), "null", False),
        (("https://app.example.com",), "https://app.example.com", True),
        (("https://app.example.com",), "https://APP.example.com/", True),
        (("https://app.example.com",), "https://evil.example", False),
        (("*",), "https://anything.example", True),
    ],
)
async def test_origin_allowlist(
    make_app: AppFactory, allowed: tuple[str, ...], origin: str | None, ok: bool
) -> None:
    app, _ = build(make_app, WS_ALLOWED_ORIGINS=list(allowed))
    async with serve(app) as server:
        url = server.ws_url() + "?token=t"
        if ok:
            client = await WSTestClient.connect(url, origin=origin)
            await client.expect("hello")
            await client.close()
        else:
            with pytest.raises(InvalidStatus) as info:
                await WSTestClient.connect(url, origin=origin)
            assert info.value.response.status_code == 403
            assert b"not allowed" in info.value.response.body


async def test_same_origin_page_is_allowed(make_app: AppFactory) -> None:
    app, _ = build(make_app)
    async with serve(app) as server:
        origin = f"http://{server.host}:{server.port}"
        client = await WSTestClient.connect(server.ws_url() + "?token=t", origin=origin)
        await client.expect("hello")
        await client.close()
