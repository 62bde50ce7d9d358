"""Signed-token auth for the websocket endpoint (docs/howto/auth.md explains it).

Run it from this folder::

    export AUTH_TOKEN_SECRET=$(openssl rand -hex 32)
    sanic auth_token:create_app --factory

and connect to ``ws://127.0.0.1:8000/ws?token=<token>`` with a token from
``make_token("alice", secret)`` (or offer the subprotocols ``["chat",
"bearer.<token>"]``). A connection lasts as long as its token: the server asks
for a fresh one (``auth.refresh``) ahead of the expiry, and closes with 4401
"token expired" if none came. tests/test_auth_example.py runs this file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from typing import Any

from sanic import Request, Sanic
from sanic_ext import Extend

from sanic_ws_ext import (
    Accept,
    Connection,
    Reject,
    WSExtension,
    WSHandlers,
    bearer_token,
)

#: How long a token is good for. A connection lasts as long as its token,
#: unless its client sends a fresh one (auth.refresh) before it runs out.
TOKEN_TTL = 3600.0


class BadToken(ValueError):
    """The token is malformed, forged or expired; the message says which."""


def make_token(
    user: str, secret: bytes, *, ttl: float = TOKEN_TTL, now: float | None = None
) -> str:
    """A token saying ``user`` may connect until ``ttl`` seconds from ``now``.

    Issue it from a route your usual login already protects, and hand it to
    the page: ``<payload>.<signature>``, both base64url, so it fits in a URL.
    """
    issued = time.time() if now is None else now
    claims = {"user": user, "exp": int(issued + ttl)}
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, payload)}"


def read_token(token: str, secret: bytes, *, now: float | None = None) -> str:
    """The user a valid token names; raises :class:`BadToken` for any other."""
    user, _ = read_claims(token, secret, now=now)
    return user


def read_claims(
    token: str, secret: bytes, *, now: float | None = None
) -> tuple[str, int]:
    """The user a valid token names and its expiry; :class:`BadToken` else."""
    payload, dot, signature = token.rpartition(".")
    if not dot or not payload:
        raise BadToken("malformed token")
    # The signature first: nothing an attacker wrote is parsed unless we
    # signed it. compare_digest takes as long for a near miss as for a wild
    # guess, so timing does not tell how much of a forgery was right.
    if not hmac.compare_digest(signature.encode(), _sign(secret, payload).encode()):
        raise BadToken("bad signature")
    claims: Any = json.loads(_b64decode(payload))
    user = claims.get("user") if isinstance(claims, dict) else None
    expires = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(user, str) or not isinstance(expires, int):
        raise BadToken("malformed token")
    if (time.time() if now is None else now) >= expires:
        raise BadToken("token expired")
    return user, expires


def create_app(
    name: str = "auth_example", secret: bytes | None = None
) -> Sanic[Any, Any]:
    """The app: websockets at ``/ws``, for holders of a valid token only.

    ``secret`` defaults to the ``AUTH_TOKEN_SECRET`` environment variable.
    """
    key = os.environ.get("AUTH_TOKEN_SECRET", "").encode() if secret is None else secret
    if len(key) < 32:
        raise RuntimeError(
            "AUTH_TOKEN_SECRET must hold at least 32 random bytes:"
            " export AUTH_TOKEN_SECRET=$(openssl rand -hex 32)"
        )
    app: Sanic[Any, Any] = Sanic(name)
    # A browser that offers subprotocols (to carry "bearer.<token>") fails
    # the handshake unless the server selects one of them.
    app.config.WS_SUBPROTOCOLS = ["chat"]
    Extend(app).register(WSExtension)
    ws = WSHandlers(app)

    @ws.verify
    async def check_token(request: Request) -> Accept:
        # Browsers cannot set headers on a WebSocket: the token comes as a
        # subprotocol entry ("bearer.<token>", kept out of access logs) or
        # in the URL.
        token = bearer_token(request) or request.args.get("token")
        if not token:
            raise Reject(401, "missing token")
        try:
            user, expires = read_claims(token, key)
        except BadToken as exc:
            raise Reject(401, str(exc)) from None
        return Accept(user=user, expires_at=expires)

    @ws.on_refresh
    async def fresh_token(conn: Connection, token: str) -> Accept:
        # The client's answer to auth.refresh. A token of another user is
        # refused by the extension (and the connection closed with 4403).
        try:
            user, expires = read_claims(token, key)
        except BadToken as exc:
            raise Reject(401, str(exc)) from None
        return Accept(user=user, expires_at=expires)

    @ws.on_connect
    async def welcome(conn: Connection) -> None:
        await conn.send("welcome", {"user": conn.user})

    return app


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("malformed token") from None


def _sign(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return _b64encode(digest)
