"""An AsyncAPI 3.0 document of an app's websocket API, from its declarations.

Built from what the app declared on its :class:`~sanic_ws_ext.WSHandlers`
groups: the message types clients send (``on``, with their schemas and
reply schemas), those the server sends (``sends``), the rooms (``room``)
and the protocol's own messages, error codes and close codes. Served at
``<WS_PATH>/asyncapi.json`` with a page rendering it at ``<WS_PATH>/asyncapi``
when ``WS_ASYNCAPI`` is on; ``python -m sanic_ws_ext asyncapi module:app``
prints it.

The document has one channel for the socket (address ``WS_PATH``), whose
messages are the envelopes, and one channel per room declaration (address:
the room's pattern, its ``{parameters}`` as channel parameters), whose
policy is in ``x-presence``, ``x-client-join`` and ``x-history``. Each
envelope's payload is the whole JSON frame, ``{"type", "data", "timestamp",
"ref"}``, with ``type`` a constant. Close codes are in the socket channel's
``x-close-codes`` (AsyncAPI has no field for them).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import CloseCode, ErrorCode
from .schemas import schema_of

if TYPE_CHECKING:
    from sanic import Sanic

    from .handlers import HandlerRegistry, MessageDecl

__all__ = ["asyncapi_document", "registry_of"]

_ERROR_CODES = {
    ErrorCode.INVALID_JSON: "a text frame that is not JSON",
    ErrorCode.INVALID_ENVELOPE: "JSON that is not a valid envelope",
    ErrorCode.UNKNOWN_TYPE: "no handler takes this type",
    ErrorCode.HANDLER_ERROR: "a handler raised an unexpected exception",
    ErrorCode.ROOM_REFUSED: "a room.join the room's declaration does not allow",
    ErrorCode.RATE_LIMITED: "a message over WS_MESSAGE_RATE was dropped",
    ErrorCode.INVALID_DATA: "data does not match its type's schema: see field,"
    " problem, errors and count",
}

_CLOSE_CODES = {
    CloseCode.NORMAL: "normal close",
    CloseCode.GOING_AWAY: "the server is shutting down: reconnect",
    CloseCode.PROTOCOL_ERROR: "the client broke the WebSocket protocol",
    CloseCode.UNSUPPORTED_DATA: "a frame kind WS_ACCEPT does not list",
    CloseCode.INVALID_DATA: "invalid UTF-8 in a text message",
    CloseCode.POLICY_VIOLATION: "slow consumer, or past WS_MESSAGE_RATE",
    CloseCode.MESSAGE_TOO_BIG: "a message over WS_MAX_MESSAGE_SIZE",
    CloseCode.INTERNAL_ERROR: "ping timeout, or a handler ran past WS_HANDLER_TIMEOUT",
}

_ANY: dict[str, Any] = {}
_ROOM = {"type": "object", "properties": {"room": {"type": "string"}}}
# The protocol's own messages: (type, data schema, summary).
_CLIENT_BUILTINS = [
    ("room.join", {**_ROOM, "required": ["room"],
     "properties": {"room": {"type": "string"}, "since": _ANY}},
     "Join a room (declared with client_join, or allowed by on_join guards)"),
    ("room.leave", {**_ROOM, "required": ["room"]},
     "Leave a room joined with room.join"),
]  # fmt: skip
_SERVER_BUILTINS = [
    ("room.joined", {**_ROOM, "properties": {
        "room": {"type": "string"}, "position": _ANY,
        "recovered": {"type": "boolean"}}}, "A room.join was accepted"),
    ("room.left", _ROOM, "A room.leave was done"),
    ("error", {
        "type": "object",
        "required": ["code", "reason"],
        "properties": {
            "code": {"type": "string", "description": "one of x-error-codes, or"
                     " the app's own (MessageError)"},
            "reason": {"type": "string"},
            "field": {"type": "string"},
            "problem": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "problem": {"type": "string"}}}},
            "count": {"type": "integer"},
        },
        "x-error-codes": {str(k): v for k, v in _ERROR_CODES.items()},
    }, "A message was refused; the connection stays open"),
]  # fmt: skip
_PRESENCE = [
    ("presence.state", {"type": "object"}, "Who is in a room, on joining it"),
    ("presence.diff", {"type": "object"}, "Who came and went"),
    ("presence.count", {"type": "object"}, "How many are in a counted room"),
]
_ID = re.compile(r"[^A-Za-z0-9_.\-]")


def registry_of(app: Sanic[Any, Any]) -> HandlerRegistry:
    """The handlers of ``app``: its running manager's, or collected now (the
    app's groups, then its blueprints', as the server does at start)."""
    from .handlers import HandlerRegistry, groups_of

    manager = getattr(app.ctx, "ws", None)
    if manager is not None:
        registry: HandlerRegistry = manager._registry
        return registry
    groups = list(groups_of(app))
    for bp in app.blueprints.values():
        groups.extend(groups_of(bp))
    return HandlerRegistry(groups)


def _id(type_: str) -> str:
    return _ID.sub("_", type_)


def _envelope(type_: str, data: dict[str, Any], client: bool) -> dict[str, Any]:
    """The JSON frame of an envelope of ``type_``: its payload schema."""
    properties: dict[str, Any] = {
        "type": {"type": "string", "const": type_},
        "data": data,
        "timestamp": {"type": "number", "description": "ms since the epoch"},
    }
    if client:
        properties["ref"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "description": "a request's id: the server answers with a reply",
        }
    return {"type": "object", "required": ["type"], "properties": properties}


def asyncapi_document(
    app: Sanic[Any, Any],
    *,
    registry: HandlerRegistry | None = None,
    host: str | None = None,
    secure: bool = False,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``app``'s websocket API (a JSON-able dict).

    ``host`` (``"example.com:8000"``) adds a server entry.
    """
    from .config import WSConfig

    registry = registry or registry_of(app)
    config = WSConfig.from_mapping(app.config)
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    def data_schema(decl: MessageDecl | None) -> dict[str, Any]:
        if decl is None or decl.schema is None:
            return {}
        schema, defs = schema_of(decl.schema).json_schema()
        schemas.update(defs)
        name = schema_of(decl.schema).name
        if "$ref" in schema:
            return dict(schema)
        schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def message(
        key: str, type_: str, data: dict[str, Any], summary: str, client: bool
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": type_,
            "title": type_,
            "payload": _envelope(type_, data, client),
        }
        if summary:
            entry["summary"] = summary
        messages[key] = entry
        return {"$ref": f"#/components/messages/{key}"}

    socket_messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    channel_ref = {"$ref": "#/channels/socket"}

    def reply_message(type_: str) -> dict[str, Any]:
        data = data_schema(registry.replies.get(type_))
        key = f"{_id(type_)}.reply"
        messages[key] = {
            "name": "reply",
            "title": f"reply to {type_}",
            "payload": {
                "type": "object",
                "required": ["type", "ref", "ok"],
                "properties": {
                    "type": {"type": "string", "const": "reply"},
                    "ref": {"type": "string"},
                    "ok": {"type": "boolean"},
                    "data": data,
                    "error": {"$ref": "#/components/schemas/ReplyError"},
                    "timestamp": {"type": "number"},
                },
            },
        }
        socket_messages[key] = {"$ref": f"#/components/messages/{key}"}
        return {"$ref": f"#/channels/socket/messages/{key}"}

    schemas["ReplyError"] = {
        "type": "object",
        "required": ["code", "reason"],
        "properties": {
            "code": {"type": "string"},
            "reason": {"type": "string"},
            "field": {"type": "string"},
            "problem": {"type": "string"},
        },
    }

    incoming = [(t, d.schema, d.description) for t, d in registry.incoming.items()]
    for type_, _, summary in incoming:
        key = _id(type_)
        socket_messages[key] = message(
            key, type_, data_schema(registry.incoming[type_]), summary, True
        )
        operations[f"receive.{key}"] = {
            "action": "receive",
            "channel": channel_ref,
            "summary": summary or f"The client sends {type_}",
            "messages": [{"$ref": f"#/channels/socket/messages/{key}"}],
            "reply": {"channel": channel_ref, "messages": [reply_message(type_)]},
        }
    for type_, data, summary in _CLIENT_BUILTINS:
        key = _id(type_)
        if key in socket_messages:
            continue
        socket_messages[key] = message(key, type_, data, summary, True)
        operations[f"receive.{key}"] = {
            "action": "receive",
            "channel": channel_ref,
            "summary": summary,
            "messages": [{"$ref": f"#/channels/socket/messages/{key}"}],
        }
    server_side = [
        (t, data_schema(d), d.description) for t, d in registry.outgoing.items()
    ]
    server_side += _SERVER_BUILTINS
    rooms = registry.rooms.specs()
    if any(spec.presence != "off" for spec in rooms):
        server_side += _PRESENCE
    for type_, data, summary in server_side:
        key = _id(type_)
        if key in socket_messages:
            key = f"{key}.sent"
        socket_messages[key] = message(key, type_, data, summary, False)
        operations[f"send.{key}"] = {
            "action": "send",
            "channel": channel_ref,
            "summary": summary or f"The server sends {type_}",
            "messages": [{"$ref": f"#/channels/socket/messages/{key}"}],
        }

    channels: dict[str, Any] = {
        "socket": {
            "address": config.path,
            "title": "The websocket",
            "description": "One JSON envelope per text frame:"
            ' {"type", "data", "timestamp", "ref"}. A message with a "ref"'
            " is a request, answered by one reply with the same ref.",
            "messages": socket_messages,
            "x-close-codes": {str(int(k)): v for k, v in _CLOSE_CODES.items()},
        }
    }
    for index, spec in enumerate(rooms):
        params = re.findall(r"{(\w+)}", spec.pattern)
        room: dict[str, Any] = {
            "address": spec.pattern,
            "title": f"room {spec.pattern}",
            "description": "A room: what is published to it reaches its members"
            " over the websocket.",
            "x-presence": spec.presence,
            "x-client-join": "guarded"
            if callable(spec.client_join)
            else bool(spec.client_join),
        }
        if spec.history is not None:
            room["x-history"] = {
                "size": spec.history.size,
                "ttl": spec.history.ttl,
                "onJoin": spec.history.on_join,
            }
        if params:
            room["parameters"] = {
                p: {"description": f"{p} of the room"} for p in params
            }
        channels[f"room{index}"] = room

    info: dict[str, Any] = {
        "title": str(app.config.get("API_TITLE") or app.name),
        "version": str(app.config.get("API_VERSION") or "1.0.0"),
        "description": str(app.config.get("API_DESCRIPTION") or "")
        or f"The websocket API of {app.name} (sanic-ws-ext).",
    }
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": info,
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
    if host is not None:
        document["servers"] = {
            "this": {
                "host": host,
                "protocol": "wss" if secure else "ws",
                "pathname": config.path,
            }
        }
        channels["socket"]["servers"] = [{"$ref": "#/servers/this"}]
    return document


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - websocket API</title>
<link rel="stylesheet"
 href="https://unpkg.com/@asyncapi/react-component@3/styles/default.min.css">
</head>
<body>
<div id="asyncapi"></div>
<script
 src="https://unpkg.com/@asyncapi/react-component@3/browser/standalone/index.js">
</script>
<script>
AsyncApiStandalone.render({{
  schema: {{ url: "{json}", requestOptions: {{ method: "GET" }} }},
  config: {{ show: {{ sidebar: true }} }},
}}, document.getElementById("asyncapi"));
</script>
</body>
</html>
"""
