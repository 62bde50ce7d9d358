"""docs/examples/auth_token.py works as docs/howto/auth.md says."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sanic import Sanic
from websockets.exceptions import InvalidStatus

from sanic_ws_ext import RequestFailed
from sanic_ws_ext.testing import WSTestClient, serve

from .helpers import AppFactory

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "auth_token.py"
SECRET = b"0123456789abcdef0123456789abcdef"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("auth_token_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


auth = load_example()


@pytest.fixture
def app(make_app: AppFactory, request: pytest.FixtureRequest) -> Sanic[Any, Any]:
    """The example's app, uniquely named; make_app's teardown resets registries."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    built: Sanic[Any, Any] = auth.create_app(name=f"auth_{name}", secret=SECRET)
    return built


# -- the token itself -------------------------------------------------------------


def test_a_token_names_its_user_until_it_expires() -> None:
    token = auth.make_token("alice", SECRET, ttl=60, now=1000.0)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)  # URL-safe
    assert auth.read_token(token, SECRET, now=1059.0) == "alice"
    with pytest.raises(auth.BadToken, match="token expired"):
        auth.read_token(token, SECRET, now=1060.0)


def test_forged_and_malformed_tokens_are_refused() -> None:
    token = auth.make_token("alice", SECRET, now=1000.0)
    payload, signature = token.split(".")
    mallory = auth.make_token("mallory", SECRET, now=1000.0).split(".")[0]
    forged = [
        f"{mallory}.{signature}",  # someone else's claims under alice's signature
        auth.make_token("alice", b"x" * 32, now=1000.0),  # signed with another key
        f"{payload}.{signature[:-2]}",
        f"{payload}.",
    ]
    for bad in forged:
        with pytest.raises(auth.BadToken, match="bad signature"):
            auth.read_token(bad, SECRET, now=1000.0)
    for junk in ("", "alice", ".sig", "é.ü"):
        with pytest.raises(auth.BadToken):
            auth.read_token(junk, SECRET, now=1000.0)


def test_the_howto_quotes_the_example() -> None:
    # The how-to shows excerpts: every line of its Python blocks is in the file.
    howto = (EXAMPLE.parent.parent / "howto" / "auth.md").read_text()
    source = {line.strip() for line in EXAMPLE.read_text().splitlines()}
    blocks = re.findall(r"```python\n(.*?)```", howto, re.S)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            if line.strip() and line.strip() != "...":
                assert line.strip() in source, line


def test_the_app_wants_a_real_secret() -> None:
    with pytest.raises(RuntimeError, match="AUTH_TOKEN_SECRET"):
        auth.create_app(name="auth_no_secret", secret=b"short")


# -- the app, before and after the upgrade ------------------------------------------


async def test_a_valid_token_connects_as_its_user(app: Sanic[Any, Any]) -> None:
    token = auth.make_token("alice", SECRET)
    async with serve(app) as server:
        client = await WSTestClient.connect(f"{server.ws_url()}?token={token}")
        assert (await client.expect("welcome")).data == {"user": "alice"}
        assert await app.ctx.ws.users() == {"alice": 1}
        await client.close()


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", b"missing token"),
        ("?token=", b"missing token"),
        ("?token=not-a-token", b"malformed token"),
        ("?token=forged", b"bad signature"),
        ("?token=expired", b"token expired"),
    ],
)
async def test_no_bad_or_expired_token_gets_401_before_the_upgrade(
    app: Sanic[Any, Any], query: str, reason: bytes
) -> None:
    if query == "?token=forged":
        query = "?token=" + auth.make_token("alice", b"y" * 32)
    elif query == "?token=expired":
        query = "?token=" + auth.make_token(
            "alice", SECRET, now=time.time() - 61, ttl=60
        )
    async with serve(app) as server:
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(server.ws_url() + query)
        assert info.value.response.status_code == 401
        assert reason in info.value.response.body
        assert await app.ctx.ws.count() == 0


async def test_a_foreign_page_cannot_use_the_token_of_its_visitor(
    app: Sanic[Any, Any],
) -> None:
    # Cross-site WebSocket hijacking: a page on another site opens the socket
    # with whatever credentials the browser holds. The origin check refuses it.
    token = auth.make_token("alice", SECRET)
    async with serve(app) as server:
        url = f"{server.ws_url()}?token={token}"
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(url, origin="https://evil.example")
        assert info.value.response.status_code == 403
        own = f"http://{server.host}:{server.port}"
        client = await WSTestClient.connect(url, origin=own)
        await client.expect("welcome")
        await client.close()


# -- tokens as subprotocols, expiry and refresh ---------------------------------------


async def test_a_bearer_subprotocol_connects_and_the_expiry_is_the_tokens(
    app: Sanic[Any, Any],
) -> None:
    token = auth.make_token("alice", SECRET, ttl=600)
    _, expires = auth.read_claims(token, SECRET)
    async with serve(app) as server:
        client = await WSTestClient.connect(
            server.ws_url(), subprotocols=["chat", f"bearer.{token}"]
        )
        assert client.connection.subprotocol == "chat"
        assert (await client.expect("welcome")).data == {"user": "alice"}
        (conn,) = app.ctx.ws.connections.values()
        assert conn.expires_at == expires
        await client.close()


async def test_a_fresh_token_extends_the_connection(app: Sanic[Any, Any]) -> None:
    token = auth.make_token("alice", SECRET, ttl=600)
    async with serve(app) as server:
        client = await WSTestClient.connect(f"{server.ws_url()}?token={token}")
        await client.expect("welcome")
        fresh = auth.make_token("alice", SECRET, ttl=1200)
        reply = await client.request("auth.refresh", {"token": fresh})
        assert reply == {"expires_at": auth.read_claims(fresh, SECRET)[1]}
        # A forged one is refused; the connection stays.
        with pytest.raises(RequestFailed) as info:
            await client.request(
                "auth.refresh", {"token": auth.make_token("alice", b"z" * 32)}
            )
        assert (info.value.code, info.value.reason) == ("auth_refused", "bad signature")
        # Another user's valid token: refused, and the connection closed.
        with pytest.raises(RequestFailed) as info:
            await client.request(
                "auth.refresh", {"token": auth.make_token("mallory", SECRET)}
            )
        assert info.value.code == "auth_user_mismatch"
        assert (await client.wait_closed())[0] == 4403
