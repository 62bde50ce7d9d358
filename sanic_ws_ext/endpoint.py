"""The upgrade endpoint: checks before the upgrade, then the hand-over.

The route is a plain ``GET`` route, not a Sanic websocket route. Before the
upgrade it is ordinary Sanic: request middleware runs, and a refusal is an
HTTP response with a status (403 origin, the verify hook's status, 400 for a
malformed handshake, 426 without ``Upgrade: websocket``, 429 and 503 past the
abuse limits of :mod:`sanic_ws_ext.limits`). With ``WS_AUTH_IN_BAND``, a
verify hook's refusal is the exception: the upgrade is made and the socket
closed at once with ``4000 + status``, since browsers never show a refused
upgrade's status to scripts. After it writes the
``101`` response it takes the socket from Sanic with
``transport.set_protocol`` and gives it to the manager, so none of Sanic's
per-connection websocket machinery (tasks, locks, queues) stays alive.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from sanic import Request
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, text
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeaderValue
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request as HandshakeRequest
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from .config import BEARER_PREFIX
from .errors import Reject
from .frames import OP_CLOSE, close_payload, encode_frame
from .handlers import Accept, checked_expiry
from .limits import retry_after
from .presence import checked_presence
from .sanic_compat import detach, owns_socket

if TYPE_CHECKING:
    from .config import WSConfig
    from .handlers import HandlerRegistry
    from .manager import ConnectionManager

__all__ = ["bearer_token", "websocket_endpoint"]

# websockets' protocol logs every open and close at INFO; keep that out of
# app logs. A filter, not a level: Sanic's logging setup resets the level of
# loggers under sanic.root each time it configures an app.
_wire_log = logging.getLogger("sanic.root.sanic_ws_ext.wire")
log = logging.getLogger("sanic.root.sanic_ws_ext")
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
    if manager._limits.at_limit(remote):
        return text(
            "Too many connections from your address.\n",
            status=429,
            headers={"Retry-After": _RETRY_WHEN_FULL},
        )
    limit = manager._config.max_connections
    if limit is not None and len(manager.connections) >= limit:
        return text(
            "The server is at its connection limit.\n",
            status=503,
            headers={"Retry-After": _RETRY_WHEN_FULL},
        )
    return None


#: Most entries a client may offer in ``Sec-WebSocket-Protocol``, and the
#: most bytes of the header (its lines added up): a browser offers a few.
MAX_OFFERED = 64
MAX_PROTOCOL_HEADER = 4096
#: An RFC 7230 token: what each offered subprotocol must be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class BadOffer(ValueError):
    """The client's ``Sec-WebSocket-Protocol`` list cannot be used (400)."""


def offered_protocols(request: Request) -> list[str]:
    """The client's ``Sec-WebSocket-Protocol`` entries, in its order.

    Raises :class:`BadOffer` for a list of more than :data:`MAX_OFFERED`
    entries, a header over :data:`MAX_PROTOCOL_HEADER` bytes, or an entry
    that is not an RFC 7230 token. The message never quotes an entry (one
    may be a bearer token).
    """
    lines: list[str] = request.headers.getall("sec-websocket-protocol", [])
    if not lines:
        return []
    if sum(len(line) for line in lines) > MAX_PROTOCOL_HEADER:
        raise BadOffer(
            f"Sec-WebSocket-Protocol is longer than {MAX_PROTOCOL_HEADER} bytes"
        )
    entries = [entry.strip() for line in lines for entry in line.split(",")]
    entries = [entry for entry in entries if entry]  # RFC 7230 lists allow empties
    if len(entries) > MAX_OFFERED:
        raise BadOffer(
            f"Sec-WebSocket-Protocol offers {len(entries)} subprotocols;"
            f" at most {MAX_OFFERED} are accepted"
        )
    for entry in entries:
        if _TOKEN.fullmatch(entry) is None:
            raise BadOffer(
                "Sec-WebSocket-Protocol entries must be RFC 7230 tokens"
                " (letters, digits and !#$%&'*+-.^_`|~; no spaces)"
            )
    return entries


def _is_bearer(entry: str) -> bool:
    return entry[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX


def bearer_token(request: Request) -> str | None:
    """The bearer token the client sent as a ``bearer.<token>`` subprotocol.

    For verify hooks: a browser's ``WebSocket`` cannot set headers, but it
    can offer subprotocols (``new WebSocket(url, ["chat", "bearer." +
    token])``), which access logs do not record as they record URLs. Such an
    entry is never selected nor echoed back. Reads nothing else (not the
    URL, not ``Authorization``); ``None`` without one, or when the header is
    malformed (the upgrade then fails with 400 anyway).
    """
    try:
        entries = offered_protocols(request)
    except BadOffer:
        return None
    for entry in entries:
        if _is_bearer(entry) and len(entry) > len(BEARER_PREFIX):
            return entry[len(BEARER_PREFIX) :]
    return None


async def select_subprotocol(
    registry: HandlerRegistry,
    config: WSConfig,
    request: Request,
    offered: list[str],
) -> str | None:
    """The subprotocol to echo: a hook's choice, else the first one offered
    (in the client's order) that ``WS_SUBPROTOCOLS`` lists; ``bearer.``
    entries never."""
    choices = [entry for entry in offered if not _is_bearer(entry)]
    if not choices:
        return None
    for hook in registry.subprotocol:
        chosen = await hook(request, list(choices))
        if chosen is None:
            continue
        if chosen not in choices:
            raise ValueError(
                f"subprotocol hook {getattr(hook, '__qualname__', hook)} returned"
                f" {chosen!r}: return one of the subprotocols the client offered"
                " (bearer entries excluded), or None"
            )
        return chosen
    speaks = config.subprotocols
    for entry in choices:
        if entry in speaks:
            return entry
    return None


async def run_verify(
    registry: HandlerRegistry, request: Request, presence_limit: int
) -> Accept:
    """Run every verify hook in order and merge what they accept.

    The last ``user`` given wins, ``meta`` and ``presence`` are merged, and
    the earliest ``expires_at`` given is the connection's.
    """
    user: str | None = None
    meta: dict[str, Any] = {}
    presence: dict[str, Any] = {}
    expires: float | None = None
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
        if result.expires_at is not None:
            given = checked_expiry(result.expires_at, hook)
            expires = given if expires is None else min(expires, given)
    # Checked here, before the upgrade: a bad one is the app's error (500).
    checked_presence(presence, presence_limit)
    return Accept(user=user, meta=meta, presence=presence, expires_at=expires)


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
    config = manager._config
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
    wait = manager._limits.connect_wait(remote, manager._clock())
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
    try:
        offered = offered_protocols(request)
    except BadOffer as exc:
        return text(f"{exc}.\n", status=400)
    try:
        accepted = await run_verify(
            manager._registry, request, config.presence_meta_max
        )
    except SanicException as refusal:
        if not config.auth_in_band or not owns_socket(request):
            raise
        return await refuse_in_band(request, manager, remote, offered, refusal)
    # Verify hooks may await: other upgrades may have taken the room, or the
    # server begun to stop (Sanic serves requests in flight after its
    # before_server_stop). The subprotocol hooks too; from the second
    # check to manager._accept() nothing awaits, so these checks hold.
    subprotocol = await select_subprotocol(manager._registry, config, request, offered)
    refused = check_room(manager, remote)
    if refused is not None:
        return refused

    # Under ASGI there is no socket to take.
    if not owns_socket(request):
        return text("WebSockets need Sanic's own server (not ASGI).\n", status=501)

    shaken = handshake(request, subprotocol, compression=config.compression)
    if isinstance(shaken, HTTPResponse):
        return shaken
    response, deflate_bits = shaken

    # Take the socket from Sanic: whatever it buffered past the request head
    # belongs to the websocket, and Sanic must not close it when this
    # handler returns.
    transport, leftover = detach(request)
    transport.write(response)
    manager._accept(
        transport,
        accepted,
        remote=remote,
        headers={
            name: value
            for name in config.keep_headers
            if (value := request.headers.get(name)) is not None
        },
        subprotocol=subprotocol,
        deflate_bits=deflate_bits,
    )
    transport.resume_reading()
    if leftover:
        cast(asyncio.Protocol, transport.get_protocol()).data_received(leftover)
    return None


def check_room(manager: ConnectionManager, remote: str) -> HTTPResponse | None:
    """The checks again after the hooks awaited: shutdown, then capacity."""
    if manager.closing:
        return text(
            "The server is shutting down.\n", status=503, headers={"Retry-After": "1"}
        )
    return check_capacity(manager, remote)


def handshake(
    request: Request, subprotocol: str | None, *, compression: bool
) -> tuple[bytes, int] | HTTPResponse:
    """The ``101`` response's bytes and the window of permessage-deflate if
    it was agreed (else 0), or the HTTP refusal of a bad handshake.

    Sanic already parsed the request: websockets checks it and makes the
    response (only for the handshake: the Wire reads the frames), and we
    serialize it ourselves.
    """
    chosen = None if subprotocol is None else Subprotocol(subprotocol)
    proto = ServerProtocol(
        logger=_wire_log,
        select_subprotocol=lambda _proto, _offered: chosen,
        extensions=_COMPRESSION if compression else None,
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
    response = proto.accept(
        HandshakeRequest(path=request.path, headers=handshake_headers)
    )
    if response.status_code != 101:
        status = response.status_code
        headers = {
            k: v
            for k, v in response.headers.raw_items()
            if k.lower().startswith("sec-")
        }
        bad = proto.handshake_exc
        if isinstance(bad, InvalidHeaderValue) and bad.name == "Sec-WebSocket-Version":
            # RFC 6455, 4.4: an unsupported version is answered with 426 and
            # the versions the server speaks.
            status = 426
            headers["Sec-WebSocket-Version"] = "13"
        return HTTPResponse(
            response.body,
            status=status,
            headers=headers,
            content_type="text/plain; charset=utf-8",
        )
    return response.serialize(), _deflate_bits(proto)


async def refuse_in_band(
    request: Request,
    manager: ConnectionManager,
    remote: str,
    offered: list[str],
    refusal: SanicException,
) -> HTTPResponse | None:
    """``WS_AUTH_IN_BAND``: upgrade, then close at once with ``4000 + status``.

    Charged as any attempt (the connect rate was taken before the hooks),
    and counted against ``WS_MAX_CONNECTIONS_PER_IP`` until the socket is
    gone; no connection is made, no handler runs. The subprotocol is
    selected as for an accepted upgrade: a browser that offered some fails
    a handshake without one, and would not see the code.
    """
    status = int(getattr(refusal, "status_code", 403) or 403)
    reason = refusal.reason if isinstance(refusal, Reject) else str(refusal)
    subprotocol = await select_subprotocol(
        manager._registry, manager._config, request, offered
    )
    refused = check_room(manager, remote)
    if refused is not None:
        return refused
    shaken = handshake(request, subprotocol, compression=False)
    if isinstance(shaken, HTTPResponse):
        return shaken
    response, _ = shaken
    code = 4000 + status if 100 <= status <= 999 else 4403
    transport, leftover = detach(request)
    transport.write(response + encode_frame(OP_CLOSE, close_payload(code, reason)))
    refused_socket = Refused(manager, transport, remote)
    transport.set_protocol(refused_socket)
    transport.resume_reading()
    if leftover:
        refused_socket.data_received(leftover)
    log.debug("websocket upgrade from %s refused in-band: %d %s", remote, code, reason)
    return None


class Refused(asyncio.Protocol):
    """A socket refused in-band: its close frame is sent; wait for the
    client's (or EOF), at most ``WS_CLOSE_TIMEOUT``, then close TCP.

    Closing at once would answer the client's close frame with a reset,
    which may discard ours before the browser has read it.
    """

    def __init__(
        self, manager: ConnectionManager, transport: asyncio.Transport, remote: str
    ) -> None:
        self._manager = manager
        self._transport = transport
        self._remote = remote
        manager._limits.opened(remote)
        manager._lingering.add(transport)
        self._timer = asyncio.get_running_loop().call_later(
            manager._config.close_timeout, transport.abort
        )

    def data_received(self, data: bytes) -> None:
        # The client's close frame (a client that follows the protocol sends
        # nothing else now): the handshake is over.
        self._transport.close()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._manager._limits.closed(self._remote)
        self._manager._lingering.discard(self._transport)


# Sanic's request handler expects no response from websocket handlers.
websocket_endpoint.is_websocket = True  # type: ignore[attr-defined]
