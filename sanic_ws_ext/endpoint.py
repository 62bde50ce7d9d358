"""The upgrade endpoint: checks before the upgrade, then the hand-over.

The route is a plain ``GET`` route, not a Sanic websocket route. Before the
upgrade it is ordinary Sanic: request middleware runs, and a refusal is an
HTTP response with a status (403 origin, the verify hook's status, 400 for a
malformed handshake, 426 without ``Upgrade: websocket``, 429 and 503 past the
abuse limits of :mod:`sanic_ws_ext.limits`). After it writes the
``101`` response it takes the socket from Sanic with
``transport.set_protocol`` and gives it to the manager, so none of Sanic's
per-connection websocket machinery (tasks, locks, queues) stays alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from sanic import Request
from sanic.response import HTTPResponse, text
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeaderValue
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request as HandshakeRequest
from websockets.server import ServerProtocol

from .errors import Reject
from .handlers import Accept
from .limits import retry_after
from .presence import checked_presence
from .sanic_compat import detach, owns_socket

if TYPE_CHECKING:
    from .config import WSConfig
    from .handlers import HandlerRegistry
    from .manager import ConnectionManager

__all__ = ["websocket_endpoint"]

# websockets' protocol logs every open and close at INFO; keep that out of
# app logs. A filter, not a level: Sanic's logging setup resets the level of
# loggers under sanic.root each time it configures an app.
_wire_log = logging.getLogger("sanic.root.sanic_ws_ext.wire")
_wire_log.addFilter(lambda record: record.levelno >= logging.WARNING)


def check_origin(request: Request, config: WSConfig) -> None:
    """Refuse cross-site upgrades (cross-site WebSocket hijacking) with 403.

    Requests without ``Origin`` come from non-browser clients, which a
    malicious page cannot drive, and pass. A browser's origin passes when it
    is the app's own (same host as ``Host``) or listed in
    ``WS_ALLOWED_ORIGINS`` (``"*"`` allows any).
    """
    origin = request.headers.get("origin")
    if origin is None:
        return
    allowed = config.allowed_origins
    normalized = origin.rstrip("/").lower()
    if "*" in allowed or normalized in allowed:
        return
    host = request.headers.get("host", "").lower()
    if host and urlsplit(normalized).netloc == host:
        return
    raise Reject(403, f"origin {origin!r} is not allowed")


#: The request headers websockets' handshake reads.
_HANDSHAKE_HEADERS = frozenset(
    {
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)

#: permessage-deflate as WS_COMPRESSION offers it: no context takeover
#: either way, asked of clients even when they did not offer it (RFC 7692,
#: 7.1.1), so a broadcast is compressed once for all receivers and an idle
#: connection holds no zlib state. A client that asks for a smaller window
#: for the server's frames gets it (frames are compressed once per size).
_COMPRESSION = [
    ServerPerMessageDeflateFactory(
        server_no_context_takeover=True, client_no_context_takeover=True
    )
]


def _deflate_bits(proto: ServerProtocol) -> int:
    """The window of the server's frames if permessage-deflate was agreed, else 0."""
    for extension in proto.extensions:
        if isinstance(extension, PerMessageDeflate):
            return int(extension.local_max_window_bits)
    return 0


#: Retry-After (seconds) when connections are full: they free up only as
#: others close, so there is no better estimate; this spreads the retries.
_RETRY_WHEN_FULL = "5"


def check_capacity(manager: ConnectionManager, remote: str) -> HTTPResponse | None:
    """Refuse when ``remote``'s client or this worker holds its most connections.

    429 when the client is at ``WS_MAX_CONNECTIONS_PER_IP``, 503 when the
    worker is at ``WS_MAX_CONNECTIONS``; ``None`` when there is room.
    """
    if manager.limits.at_limit(remote):
        return text(
            "Too many connections from your address.\n",
            status=429,
            headers={"Retry-After": _RETRY_WHEN_FULL},
        )
    limit = manager.config.max_connections
    if limit is not None and len(manager.connections) >= limit:
        return text(
            "The server is at its connection limit.\n",
            status=503,
            headers={"Retry-After": _RETRY_WHEN_FULL},
        )
    return None


async def run_verify(
    registry: HandlerRegistry, request: Request, presence_limit: int
) -> Accept:
    """Run every verify hook in order and merge what they accept."""
    user: str | None = None
    meta: dict[str, Any] = {}
    presence: dict[str, Any] = {}
    for hook in registry.verify:
        result = await hook(request)
        if result is None:
            continue
        if not isinstance(result, Accept):
            raise TypeError(
                f"verify hook {getattr(hook, '__qualname__', hook)} returned "
                f"{result!r}: return Accept(...) or None, or raise Reject"
            )
        if result.user is not None:
            user = result.user
        meta.update(result.meta)
        presence.update(result.presence)
    # Checked here, before the upgrade: a bad one is the app's error (500).
    checked_presence(presence, presence_limit)
    return Accept(user=user, meta=meta, presence=presence)


class UpgradeRequired(HTTPResponse):
    """426 with ``Upgrade: websocket`` and ``Connection: Upgrade``.

    RFC 9110, 15.5.22: a 426 must name the protocol in ``Upgrade``, and a
    sender of ``Upgrade`` must list it in ``Connection`` (RFC 9110, 7.8).
    Sanic sets ``Connection`` itself after the handler (``keep-alive`` or
    ``close``), so the option is added as the headers are written.
    """

    def __init__(self, body: str) -> None:
        super().__init__(
            body,
            status=426,
            headers={"Upgrade": "websocket"},
            content_type="text/plain; charset=utf-8",
        )

    @property
    def processed_headers(self) -> Iterator[tuple[bytes, bytes]]:
        for name, value in super().processed_headers:
            if name.lower() == b"connection":
                value = b"Upgrade, " + value
            yield name, value


# sanic-ext's injection reads this signature at startup: keep its names importable.
async def websocket_endpoint(request: Request) -> HTTPResponse | None:
    """Upgrade the request and hand the socket to ``app.ctx.ws``."""
    manager: ConnectionManager = request.app.ctx.ws
    config = manager.config
    if request.headers.get("upgrade", "").lower() != "websocket":
        return UpgradeRequired(
            "This is a WebSocket endpoint: connect with a WebSocket client.\n"
        )
    if request.version != "1.1":
        return text("WebSockets need HTTP/1.1.\n", status=505)
    if manager.closing:
        return text(
            "The server is shutting down.\n", status=503, headers={"Retry-After": "1"}
        )
    # Sanic's client_ip honours forwarded headers only as its proxy config
    # (PROXIES_COUNT, REAL_IP_HEADER, FORWARDED_SECRET) says: by default it is
    # the socket's peer, which a client cannot spoof.
    remote = request.client_ip
    # Charged before the origin check and the verify hooks: every attempt
    # counts, so a client cannot guess tokens faster than it may connect.
    wait = manager.limits.connect_wait(remote, manager.clock())
    if wait:
        return text(
            "Too many new connections from your address.\n",
            status=429,
            headers={"Retry-After": retry_after(wait)},
        )
    refused = check_capacity(manager, remote)
    if refused is not None:
        return refused
    check_origin(request, config)
    accepted = await run_verify(manager.registry, request, config.presence_meta_max)
    # Verify hooks may await: other upgrades may have taken the room, or the
    # server begun to stop (Sanic serves requests in flight after its
    # before_server_stop). From here to manager.accept() nothing awaits, so
    # these checks hold.
    if manager.closing:
        return text(
            "The server is shutting down.\n", status=503, headers={"Retry-After": "1"}
        )
    refused = check_capacity(manager, remote)
    if refused is not None:
        return refused

    # Under ASGI there is no socket to take.
    if not owns_socket(request):
        return text("WebSockets need Sanic's own server (not ASGI).\n", status=501)

    # Sanic already parsed the request: websockets checks it and makes the
    # response (only for the handshake: the Wire reads the frames), and we
    # serialize it ourselves.
    proto = ServerProtocol(
        logger=_wire_log,
        extensions=_COMPRESSION if config.compression else None,
    )
    # Only the handshake's own headers: websockets refuses any header value
    # past Latin-1 (a browser's raw UTF-8 cookie, say), and its error would
    # carry that value, cookies included, into the error log.
    try:
        handshake_headers = Headers(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() in _HANDSHAKE_HEADERS
        )
    except InvalidHeaderValue as exc:
        return text(f"Invalid {exc.name} header.\n", status=400)
    handshake = proto.accept(
        HandshakeRequest(path=request.path, headers=handshake_headers)
    )
    if handshake.status_code != 101:
        status = handshake.status_code
        headers = {
            k: v
            for k, v in handshake.headers.raw_items()
            if k.lower().startswith("sec-")
        }
        bad = proto.handshake_exc
        if isinstance(bad, InvalidHeaderValue) and bad.name == "Sec-WebSocket-Version":
            # RFC 6455, 4.4: an unsupported version is answered with 426 and
            # the versions the server speaks.
            status = 426
            headers["Sec-WebSocket-Version"] = "13"
        return HTTPResponse(
            handshake.body,
            status=status,
            headers=headers,
            content_type="text/plain; charset=utf-8",
        )

    # Take the socket from Sanic: whatever it buffered past the request head
    # belongs to the websocket, and Sanic must not close it when this
    # handler returns.
    transport, leftover = detach(request)
    transport.write(handshake.serialize())
    conn = manager.accept(
        transport,
        accepted,
        remote=remote,
        headers={
            name: value
            for name in config.keep_headers
            if (value := request.headers.get(name)) is not None
        },
    )
    deflate_bits = _deflate_bits(proto)
    if deflate_bits:
        conn.wire.enable_deflate(deflate_bits)
    transport.resume_reading()
    if leftover:
        cast(asyncio.Protocol, transport.get_protocol()).data_received(leftover)
    manager.log_open(conn)
    return None


# Sanic's request handler expects no response from websocket handlers.
websocket_endpoint.is_websocket = True  # type: ignore[attr-defined]
