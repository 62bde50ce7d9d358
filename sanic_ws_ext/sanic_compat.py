"""Every private part of Sanic the upgrade relies on, in one place.

Taking a socket from Sanic after writing the ``101`` is not something Sanic
offers: it needs three attributes of its HTTP/1.1 protocol object
(``recv_buffer``: bytes read past the request head; ``connections``: the
set Sanic closes at shutdown; ``transport``: set to ``None`` so Sanic's own
close becomes a no-op), and it relies on Sanic writing the ``Connection``
header itself after the handler. :func:`check` runs when the extension is
registered and refuses to start, naming what is missing, when an installed
Sanic no longer has them; a Sanic outside the versions tested gets a warning.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sanic
from sanic import Request
from sanic.server.protocols.http_protocol import HttpProtocol

from .errors import ConfigError

__all__ = ["check", "detach", "owns_socket"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: (major, minor) versions of Sanic the test suite runs on.
TESTED = ((25, 12),)
#: What :func:`detach` touches on Sanic's HttpProtocol.
_ATTRIBUTES = ("recv_buffer", "connections", "transport")


def check(version: str = sanic.__version__, protocol: type[Any] = HttpProtocol) -> None:
    """Refuse to start on a Sanic whose protocol lacks what the upgrade needs."""
    missing = [name for name in _ATTRIBUTES if not hasattr(protocol, name)]
    if missing:
        raise ConfigError(
            "sanic",
            f"Sanic {version}'s HttpProtocol has no {', '.join(missing)}: this"
            " version of sanic-ws-ext cannot take the socket after the upgrade",
        )
    parts = version.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = (0, 0)
    if major_minor not in TESTED:
        log.warning(
            "sanic-ws-ext is tested with Sanic %s, not %s",
            ", ".join(f"{a}.{b}" for a, b in TESTED),
            version,
        )


def owns_socket(request: Request) -> bool:
    """Whether the request came through Sanic's own server (not ASGI)."""
    # uvloop's transports do not subclass asyncio.Transport: check the
    # protocol instead.
    return isinstance(request.transport.get_protocol(), HttpProtocol)


def detach(request: Request) -> tuple[asyncio.Transport, bytes]:
    """Take the request's socket from Sanic; what it read past the head.

    After this, Sanic neither reads from the socket nor closes it (its
    ``close()`` is a no-op once ``transport`` is None); the caller sets the
    transport's new protocol.
    """
    http = request.transport.get_protocol()
    assert isinstance(http, HttpProtocol)
    leftover = bytes(http.recv_buffer)
    http.recv_buffer.clear()
    http.connections.discard(http)
    http.transport = None
    transport: asyncio.Transport = request.transport  # type: ignore[assignment]
    return transport, leftover
