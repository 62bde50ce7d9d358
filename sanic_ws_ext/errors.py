"""Exceptions and close codes.

One root, :class:`WSError`, drawn as a tree::

    WSError
    ├── ConfigError            a WS_* key has a bad value or is unknown, or handlers
    │                          sit on a blueprint no app registered (at startup)
    ├── Reject                 refuse a connection before the upgrade (HTTP status,
    │                          or close code 4000 + status with WS_AUTH_IN_BAND),
    │                          or a fresh token (on_refresh)
    ├── MessageError           a client's message could not be accepted
    │   │                      (sent back as an error frame, connection stays open)
    │   └── InvalidData        its data does not match its type's schema
    ├── InvalidOutgoing        a send's data does not match its declared schema
    │                          (WS_VALIDATE_OUTGOING; also a ValueError)
    ├── PublishTooLarge        a message bigger than WS_MAX_PUBLISH was sent
    │                          through the Redis backplane (raised to the caller)
    ├── EmitFailed             a SyncEmitter could not hand an op to Redis
    └── RequestError           a request to a client (``conn.request``) got no data
        ├── RequestFailed      the client answered ``ok: false`` (code, reason)
        ├── RequestTimeout     no reply in time (also a ``TimeoutError``)
        └── ClientGone         the connection closed, or was not there, first

Errors before the upgrade are :class:`sanic.exceptions.SanicException`
subclasses with a ``status_code``, so Sanic renders them as HTTP responses.
Errors after the upgrade carry a close code or an error-frame code.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from sanic.exceptions import SanicException

__all__ = [
    "ClientGone",
    "CloseCode",
    "ConfigError",
    "EmitFailed",
    "ErrorCode",
    "MessageError",
    "PublishTooLarge",
    "Reject",
    "RequestError",
    "RequestFailed",
    "RequestTimeout",
    "SequencerUnavailable",
    "WSError",
]


class CloseCode(IntEnum):
    """Close codes this library sends (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    #: The server is shutting down or restarting; clients should reconnect.
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    #: A frame of a kind the application does not accept (text vs binary).
    UNSUPPORTED_DATA = 1003
    #: Nothing was received (not sent on the wire; reported for lost peers).
    ABNORMAL = 1006
    #: A text frame that is not valid UTF-8.
    INVALID_DATA = 1007
    #: Policy: slow consumers (``WS_MAX_BACKPRESSURE`` exceeded) and clients
    #: that keep sending past ``WS_MESSAGE_RATE``.
    POLICY_VIOLATION = 1008
    #: An incoming message over ``WS_MAX_MESSAGE_SIZE``.
    MESSAGE_TOO_BIG = 1009
    #: Server error, and peers that stopped answering pings.
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    #: 4000 + 401: the connection's token expired without a refresh (and,
    #: with ``WS_AUTH_IN_BAND``, a verify hook's 401 sent after the upgrade).
    UNAUTHORIZED = 4401
    #: 4000 + 403: a refresh named another user (and an in-band 403).
    FORBIDDEN = 4403


class ErrorCode:
    """The ``data.code`` values of error frames (``{"type": "error", ...}``)."""

    INVALID_JSON = "invalid_json"
    INVALID_ENVELOPE = "invalid_envelope"
    UNKNOWN_TYPE = "unknown_type"
    HANDLER_ERROR = "handler_error"
    ROOM_REFUSED = "room_refused"
    #: Over ``WS_MESSAGE_RATE``: the message was dropped.
    RATE_LIMITED = "rate_limited"
    #: An ``auth.refresh`` token an ``on_refresh`` hook refused.
    AUTH_REFUSED = "auth_refused"
    #: An ``auth.refresh`` token of another user (the connection closes, 4403).
    AUTH_USER_MISMATCH = "auth_user_mismatch"
    #: An ``auth.refresh`` while no ``on_refresh`` hook is registered.
    AUTH_UNSUPPORTED = "auth_unsupported"
    #: The message's ``data`` does not match its type's schema (typed
    #: handlers): the frame also carries ``field``, ``problem``, ``errors``
    #: and ``count``.
    INVALID_DATA = "invalid_data"


class WSError(Exception):
    """Root of every exception this library raises on purpose."""


class ConfigError(WSError, ValueError):
    """A setting the extension cannot use, named by ``key``.

    A ``WS_*`` key with a bad value, or a ``WS_*`` key it does not know (a
    misspelling, with the closest key suggested); ``key`` is ``"WSHandlers"``
    for handlers bound to a blueprint that no app registered.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{key}: {problem}")


class Reject(WSError, SanicException):
    """Refuse a connection in the verify hook; no upgrade happens.

    ``raise Reject(401, "token expired")`` answers ``401`` with that reason.
    Any other :class:`~sanic.exceptions.SanicException` (``Unauthorized``,
    ``Forbidden``...) raised from a verify hook works the same way. With
    ``WS_AUTH_IN_BAND`` the upgrade happens and the socket is closed at once
    with code ``4000 + status`` (4401) and the reason, which browsers can read.
    Raised from an ``on_refresh`` hook, it refuses the fresh token
    (``auth_refused``).
    """

    status_code = 403
    quiet = True

    def __init__(self, status: int = 403, reason: str = "connection refused") -> None:
        super().__init__(reason, status_code=status)
        self.status = status
        self.reason = reason


class MessageError(WSError):
    """A client's message was refused; the client gets an error frame.

    ``code`` is one of :class:`ErrorCode` (or an application's own string),
    ``reason`` a short human-readable explanation. Handlers may raise it to
    answer a bad request with an error frame without reaching the error hook
    as an unexpected failure.

    ``details``, when set, are more fields of the error frame's ``data`` (and
    of a reply's ``error``) beside ``code`` and ``reason``.
    """

    details: dict[str, Any] | None = None

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class PublishTooLarge(WSError, ValueError):
    """A message too big to cross the Redis backplane (``WS_MAX_PUBLISH``).

    Raised by the sending call itself, before anything is delivered anywhere:
    one oversized publish can push Redis past its output-buffer limit for
    pub/sub clients, and Redis then disconnects every subscriber.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds WS_MAX_PUBLISH ({limit} bytes)"
        )
        self.size = size
        self.limit = limit


class EmitFailed(WSError, ConnectionError):
    """A :class:`~sanic_ws_ext.emitter.SyncEmitter` could not publish an op.

    Redis was unreachable or did not confirm: this op may or may not have
    been delivered (the emitter does not send it again); every op before it
    was confirmed. The next call connects afresh. ``op`` names the call.
    """

    def __init__(self, op: str, cause: BaseException) -> None:
        super().__init__(
            f"{op}: Redis did not confirm it ({type(cause).__name__}: {cause});"
            " it may or may not have been delivered and is not sent again;"
            " every earlier op was confirmed"
        )
        self.op = op


class SequencerUnavailable(WSError, TimeoutError):
    """The process numbering a history room did not answer in time.

    Raised by ``publish`` and ``history`` for a room declared with
    ``history=`` while its sequencer restarts (waits at most
    ``WS_QUERY_TIMEOUT``); the publication may or may not have been made.
    """


class RequestError(WSError):
    """A request to a client (``conn.request``, ``ws.request``) got no data."""


class RequestFailed(RequestError):
    """The client answered a request with ``ok: false``: its ``code`` and ``reason``
    (and ``details``: the error's other fields, such as ``invalid_data``'s
    ``field`` and ``problem``)."""

    def __init__(
        self, code: str, reason: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.details = details or {}


class RequestTimeout(RequestError, TimeoutError):
    """The client did not reply within the request's timeout.

    A ``TimeoutError`` too (``asyncio.TimeoutError`` is the same class).
    """


class ClientGone(RequestError, ConnectionError):
    """The connection closed (or was not open) before the client replied."""
