"""TypeScript types for the browser client, from the same declarations.

``python -m sanic_ws_ext types module:app > messages.d.ts`` writes an
interface per schema class and a ``Messages`` map::

    export interface Messages {
      client: { "chat.send": ChatSend; ... };   // what the client sends
      server: { "chat.message": ChatMessage };  // what the server sends
      replies: { "chat.send": ChatAck };        // what requests resolve to
    }

which ``new WSClient<Messages>(url)`` (client.d.ts) checks ``send``,
``request`` and ``on`` against. Types the app declared without a schema are
``unknown``. The conversion covers the JSON Schema pydantic and msgspec
write for dataclasses, models, TypedDicts and structs: objects, arrays,
tuples, enums and literals, unions, nullables and references.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from .schemas import schema_of

if TYPE_CHECKING:
    from sanic import Sanic

    from .handlers import HandlerRegistry, MessageDecl

__all__ = ["typescript_types"]

_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_REF = "#/components/schemas/"


def _name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_$]", "_", raw)
    return name if _IDENT.match(name) else f"_{name}"


def _key(key: str) -> str:
    return key if _IDENT.match(key) else json.dumps(key)


def _comment(text: str, indent: str) -> str:
    text = text.replace("*/", "* /").strip()
    if not text:
        return ""
    lines = text.splitlines()
    if len(lines) == 1:
        return f"{indent}/** {lines[0]} */\n"
    body = "".join(f"{indent} * {line}".rstrip() + "\n" for line in lines)
    return f"{indent}/**\n{body}{indent} */\n"


def ts_type(schema: Any, indent: str = "") -> str:
    """The TypeScript type of a JSON Schema (refs to components by name)."""
    if not isinstance(schema, dict) or not schema:
        return "unknown"
    if "$ref" in schema:
        return _name(schema["$ref"].removeprefix(_REF))
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"]) or "never"
    for union in ("anyOf", "oneOf"):
        if union in schema:
            parts = dict.fromkeys(ts_type(s, indent) for s in schema[union])
            return " | ".join(parts)
    if "allOf" in schema:
        return " & ".join(f"({ts_type(s, indent)})" for s in schema["allOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(ts_type({**schema, "type": k}, indent) for k in kind)
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        if "prefixItems" in schema:
            items = ", ".join(ts_type(s, indent) for s in schema["prefixItems"])
            return f"[{items}]"
        item = ts_type(schema.get("items", {}), indent)
        return f"({item})[]" if "|" in item or "&" in item else f"{item}[]"
    if kind == "object" or "properties" in schema:
        return _object(schema, indent)
    return "unknown"


def _object(schema: dict[str, Any], indent: str) -> str:
    properties: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    if not properties:
        if isinstance(extra, dict):
            return f"{{ [key: string]: {ts_type(extra, indent)} }}"
        return "{ [key: string]: unknown }"
    required = set(schema.get("required", ()))
    inner = indent + "  "
    lines = ["{"]
    for key, prop in properties.items():
        doc = prop.get("description", "") if isinstance(prop, dict) else ""
        mark = "" if key in required else "?"
        if doc:
            lines.append(_comment(doc, inner).rstrip("\n"))
        lines.append(f"{inner}{_key(key)}{mark}: {ts_type(prop, inner)};")
    if isinstance(extra, dict) and extra:
        lines.append(f"{inner}[key: string]: unknown;")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def typescript_types(
    app: Sanic[Any, Any], *, registry: HandlerRegistry | None = None
) -> str:
    """The ``.d.ts`` text of ``app``'s declared messages."""
    from .asyncapi import registry_of

    registry = registry or registry_of(app)
    defs: dict[str, Any] = {}

    def data(decl: MessageDecl | None) -> str:
        if decl is None or decl.schema is None:
            return "unknown"
        schema, more = schema_of(decl.schema).json_schema()
        defs.update(more)
        if "$ref" not in schema:
            defs[schema_of(decl.schema).name] = schema
            return _name(schema_of(decl.schema).name)
        return ts_type(schema)

    def table(decls: dict[str, MessageDecl]) -> str:
        lines = []
        for type_, decl in decls.items():
            if decl.description:
                lines.append(_comment(decl.description, "  ").rstrip("\n"))
            lines.append(f"  {json.dumps(type_)}: {data(decl)};")
        return "{\n" + "\n".join(lines) + "\n}" if lines else "{}"

    client = table(registry.incoming)
    server = table(registry.outgoing)
    replies = table(registry.replies)
    out = [
        f"// The websocket messages of {app.name}: generated by"
        " `python -m sanic_ws_ext types`, do not edit.",
        "// Use: new WSClient<Messages>(url) (sanic-ws-ext's client.d.ts).",
        "",
    ]
    for name, schema in sorted(defs.items()):
        doc = schema.get("description", "") if isinstance(schema, dict) else ""
        out.append(_comment(doc, "").rstrip("\n")) if doc else None
        body = ts_type(schema)
        if body.startswith("{\n") and "properties" in schema:
            out.append(f"export interface {_name(name)} {body}")
        else:
            out.append(f"export type {_name(name)} = {body};")
        out.append("")
    out += [
        "/** What the client sends (send, request), by type. */",
        f"export interface ClientMessages {client}",
        "",
        "/** What the server sends (on), by type. */",
        f"export interface ServerMessages {server}",
        "",
        "/** What a request of each type resolves to. */",
        f"export interface Replies {replies}",
        "",
        "export interface Messages {",
        "  client: ClientMessages;",
        "  server: ServerMessages;",
        "  replies: Replies;",
        "}",
        "",
    ]
    return "\n".join(out)
