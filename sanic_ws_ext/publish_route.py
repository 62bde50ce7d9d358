"""``POST <WS_PATH>/publish``: sending from scripts and services over HTTP.

For a deployment without Redis (one machine, ``sanic --workers N``): a
script, a cron job or another service reaches every client with ``curl``.
Off unless ``WS_PUBLISH_TOKEN`` is set at registration; every request needs
``Authorization: Bearer <WS_PUBLISH_TOKEN>`` (compared in constant time).

The body is one JSON object (docs/reference/protocol.md): ``op`` names one
of the manager's calls, the other fields are its arguments::

    {"op": "send_user", "user": "alice", "type": "job.done", "data": {"id": 7}}

Answers: ``202`` with ``{"accepted": true, "op": ...}`` once the worker that
took the request handed the op to delivery (as ``await ws.broadcast(...)``
returns); ``401`` without the right token; ``413`` for a body over
``WS_PUBLISH_MAX`` bytes (read no further) or a message over
``WS_MAX_PUBLISH``; ``400`` for a body that is not JSON or a call that is
not valid, with the reason; ``503`` while the worker shuts down, or when a
history room's sequencer did not answer.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import ujson
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json

from .errors import PublishTooLarge, SequencerUnavailable

if TYPE_CHECKING:
    from .manager import ConnectionManager

__all__ = ["add_publish_route"]

_NO_STORE = {"cache-control": "no-store"}
#: Per op: the fields it requires, and those it may have besides.
_SEND = ("type", "data", "raw", "volatile", "key")
_OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "broadcast": ((), (*_SEND, "exclude")),
    "send": (("conn_id",), _SEND),
    "publish": (("room",), (*_SEND, "exclude")),
    "send_user": (("user",), (*_SEND, "exclude")),
    "disconnect": (("conn_id",), ("code", "reason")),
    "disconnect_user": (("user",), ("code", "reason")),
    "join": (("conn_id", "room"), ()),
    "leave": (("conn_id", "room"), ()),
}


def add_publish_route(bp: Blueprint, base: str) -> None:
    """``POST <base>/publish`` (the caller checks ``WS_PUBLISH_TOKEN`` is set)."""
    # Streamed: the body is read here, and no further than WS_PUBLISH_MAX.
    bp.add_route(
        serve_publish, f"{base}/publish", methods=["POST"], name="publish", stream=True
    )


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _refuse(status: int, reason: str, **headers: str) -> HTTPResponse:
    return json(
        {"accepted": False, "error": reason},
        status=status,
        headers={**_NO_STORE, **headers},
    )


async def serve_publish(request: Request) -> HTTPResponse:
    manager: ConnectionManager = request.app.ctx.ws
    config = manager._config
    token = config.publish_token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Sanic decodes headers with surrogateescape: any byte may come back.
    if (
        token is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), token.encode()
        )
    ):
        return _refuse(
            401,
            "send Authorization: Bearer <WS_PUBLISH_TOKEN>",
            **{"www-authenticate": 'Bearer realm="sanic-ws-ext"'},
        )
    if manager.closing:
        return _refuse(503, "the server is shutting down")
    try:
        body = await _read(request, config.publish_max)
        call = _parse(body)
        position = await _apply(manager, call)
    except _Refused as refused:
        return _refuse(refused.status, refused.reason)
    except PublishTooLarge as exc:
        return _refuse(413, str(exc))
    except SequencerUnavailable as exc:
        return _refuse(503, str(exc))
    except (TypeError, ValueError) as exc:
        return _refuse(400, str(exc))
    answer: dict[str, Any] = {"accepted": True, "op": call["op"]}
    if position is not None:
        answer["position"] = position
    return json(answer, status=202, headers=_NO_STORE)


async def _read(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _Refused(413, f"the body exceeds WS_PUBLISH_MAX ({limit} bytes)")
    parts: list[bytes] = []
    size = 0
    stream: Any = request.stream  # Sanic's Http: read() gives the next chunk
    while (chunk := await stream.read()) is not None:
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"the body exceeds WS_PUBLISH_MAX ({limit} bytes)")
        parts.append(chunk)
    return b"".join(parts)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        call = ujson.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refused(400, f"the body is not JSON: {exc}") from None
    if not isinstance(call, dict):
        raise _Refused(400, "the body must be a JSON object")
    op = call.get("op")
    if op not in _OPS:
        raise _Refused(400, f"op must be one of {', '.join(_OPS)}; got {op!r}")
    required, optional = _OPS[op]
    missing = [name for name in required if name not in call]
    if missing:
        raise _Refused(400, f"{op} needs {', '.join(missing)}")
    unknown = sorted(set(call) - {"op", *required, *optional})
    if unknown:
        raise _Refused(400, f"{op} takes no {', '.join(unknown)}")
    for name in ("conn_id", "room", "user"):
        if name in call and (not isinstance(call[name], str) or not call[name]):
            raise _Refused(400, f"{name} must be a non-empty string")
    exclude = call.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(i, str) for i in exclude):
        raise _Refused(400, "exclude must be a list of connection ids")
    if "raw" in call and not isinstance(call["raw"], str):
        raise _Refused(400, "raw must be a string (sent as a text frame)")
    if "volatile" in call and not isinstance(call["volatile"], bool):
        raise _Refused(400, "volatile must be true or false")
    return call


async def _apply(manager: ConnectionManager, call: dict[str, Any]) -> Any:
    """Make the call; a history room's position (JSON-able), else None."""
    args = dict(call)
    op = args.pop("op")
    method: Callable[..., Awaitable[Any]] = getattr(manager, op)
    positional = [args.pop(name) for name in _OPS[op][0]]  # the target, if any
    if op in ("disconnect", "disconnect_user", "join", "leave"):
        return await method(*positional, **args)
    result = await method(*positional, args.pop("type", None), **args)
    if result is not None:  # a Position
        return result.as_dict()
    return None
