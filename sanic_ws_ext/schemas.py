"""Typed messages: a schema per message type, validated as messages arrive.

A schema is a class sanic-ext users already write for request bodies: a
dataclass, a pydantic model (or a ``TypedDict``), or a ``msgspec.Struct`` when
msgspec is installed. sanic-ext's own validation runs pydantic models through
``model_validate`` and msgspec structs through ``msgspec.convert``; this
module does the same. For dataclasses it uses pydantic's ``TypeAdapter``
rather than sanic-ext's dataclass checker, whose errors name no field (it
reports the whole offending value, which for a large payload is the whole
payload) and stop at the first nested model: here every error names its field
(``items[2].n``) and its problem, and the value itself is never echoed.

Rules this module keeps:

- A payload that does not validate raises :class:`InvalidData`, a
  :class:`~sanic_ws_ext.errors.MessageError` with code ``invalid_data``:
  the client gets an error frame (or the ``ok: false`` reply of its request)
  with ``field``, ``problem`` and the first :data:`MAX_ERRORS` errors. Field
  paths and problems are cut to :data:`MAX_TEXT` characters: the frame's
  size does not grow with the payload's.
- Cost is linear in the payload, which ``WS_MAX_MESSAGE_SIZE`` bounds; the
  JSON decoder's own depth limit bounds nesting before any schema runs.
- Instances of schema classes are sent as their JSON form (:func:`to_builtins`,
  ujson's ``default``): nothing is added to sends of plain dicts and lists.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import typing_extensions

from .errors import ErrorCode, MessageError, WSError

__all__ = [
    "MAX_ERRORS",
    "MAX_TEXT",
    "InvalidData",
    "InvalidOutgoing",
    "Schema",
    "is_schema_type",
    "schema_of",
    "to_builtins",
]

#: Errors listed in one ``invalid_data`` frame.
MAX_ERRORS = 10
#: Longest field path or problem text in an ``invalid_data`` frame.
MAX_TEXT = 200


def _msgspec() -> Any:
    """msgspec if something imported it, else None: a struct exists only
    once msgspec is imported, so the server never imports it for nothing."""
    return sys.modules.get("msgspec")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class InvalidData(MessageError):
    """A message's ``data`` did not validate against its type's schema.

    ``field`` is the path of the first error (``"a.b[2]"``; ``""`` for the
    data itself), ``problem`` what is wrong there, ``errors`` the first
    :data:`MAX_ERRORS` as ``{"field", "problem"}`` dicts and ``count`` how
    many there were.
    """

    def __init__(
        self, type: str, errors: list[tuple[str, str]], count: int | None = None
    ) -> None:
        field, problem = errors[0] if errors else ("", "invalid")
        where = "data" + ("" if not field or field[0] == "[" else ".") + field
        super().__init__(ErrorCode.INVALID_DATA, f"{where}: {problem}")
        self.type = type
        self.field = field
        self.problem = problem
        self.errors = [{"field": f, "problem": p} for f, p in errors[:MAX_ERRORS]]
        self.count = len(errors) if count is None else count
        self.details = {
            "field": field,
            "problem": problem,
            "errors": self.errors,
            "count": self.count,
        }


class InvalidOutgoing(WSError, ValueError):
    """What a send carries under a declared type does not match its schema.

    Raised in the sender's code when ``WS_VALIDATE_OUTGOING`` is on (tests,
    debug mode): the mistake surfaces where it is made, not in a browser.
    """

    def __init__(self, type: str, error: InvalidData) -> None:
        super().__init__(
            f"sending {type!r}: data.{error.field or '(itself)'}: {error.problem}"
            " (declared with sends/on; WS_VALIDATE_OUTGOING is on)"
        )
        self.type = type
        self.field = error.field
        self.problem = error.problem


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return _cut(out)


# msgspec's messages end with " - at `$.a.b[2]`" when the error is not at
# the root; a missing field is named inside the message.
_MSGSPEC_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MSGSPEC_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")


def _msgspec_error(message: str) -> tuple[str, str]:
    match = _MSGSPEC_AT.match(message)
    assert match is not None  # the pattern matches any text
    problem, path = match["problem"], (match["path"] or "").lstrip(".")
    missing = _MSGSPEC_MISSING.match(problem)
    if missing:
        name = missing["name"]
        path = f"{path}.{name}" if path else name
        problem = "Field required"
    return _cut(path), _cut(problem)


def is_schema_type(tp: Any) -> bool:
    """Whether ``tp`` is a class this module validates: a dataclass, a
    pydantic model, a ``TypedDict`` or a ``msgspec.Struct``."""
    if not isinstance(tp, type):
        return False
    if dataclasses.is_dataclass(tp) or typing_extensions.is_typeddict(tp):
        return True
    msgspec = _msgspec()
    if msgspec is not None and issubclass(tp, msgspec.Struct):
        return True
    from pydantic import BaseModel

    return issubclass(tp, BaseModel)


class Schema:
    """One schema class, ready to validate incoming data and describe itself."""

    __slots__ = ("_adapter", "kind", "name", "type")

    def __init__(self, tp: type[Any]) -> None:
        if not is_schema_type(tp):
            raise TypeError(
                f"{tp!r} is not a message schema: use a dataclass, a pydantic"
                " model, a TypedDict or a msgspec.Struct"
            )
        self.type = tp
        self.name = tp.__name__
        self._adapter: Any = None
        msgspec = _msgspec()
        if msgspec is not None and issubclass(tp, msgspec.Struct):
            self.kind = "msgspec"
        else:
            from pydantic import BaseModel, TypeAdapter

            self.kind = "pydantic" if issubclass(tp, BaseModel) else "dataclass"
            self._adapter = TypeAdapter(tp)

    def __repr__(self) -> str:
        return f"Schema({self.name}, {self.kind})"

    def validate(self, type: str, data: Any) -> Any:
        """``data`` as an instance of the schema; :class:`InvalidData` if not."""
        if self.kind == "msgspec":
            msgspec = _msgspec()
            try:
                return msgspec.convert(data, self.type)
            except msgspec.ValidationError as exc:
                raise InvalidData(type, [_msgspec_error(str(exc))]) from None
        from pydantic import ValidationError

        try:
            return self._adapter.validate_python(data)
        except ValidationError as exc:
            errors = _first_errors(exc)
            raise InvalidData(
                type,
                [(_path(tuple(e["loc"])), _cut(e["msg"])) for e in errors],
                exc.error_count(),
            ) from None

    def check(self, type: str, data: Any) -> None:
        """Check outgoing ``data`` (a dict, or an instance): its JSON form must
        validate. :class:`InvalidOutgoing` if not."""
        try:
            self.validate(type, to_builtins(data) if not _plain(data) else data)
        except InvalidData as exc:
            raise InvalidOutgoing(type, exc) from None

    def json_schema(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The JSON Schema of the class, as (schema, definitions it refers to
        as ``#/components/schemas/<name>``)."""
        ref = "#/components/schemas/{model}"
        if self.kind == "msgspec":
            import msgspec.json

            (schema,), defs = msgspec.json.schema_components(
                [self.type], ref_template=ref.replace("{model}", "{name}")
            )
            return schema, defs
        schema = self._adapter.json_schema(ref_template=ref)
        defs = schema.pop("$defs", {})
        return schema, defs


_DECODER = json.JSONDecoder()


def _first_errors(exc: Any) -> list[dict[str, Any]]:
    """The first :data:`MAX_ERRORS` errors of a pydantic ``ValidationError``.

    ``errors()`` builds a dict per error, a quarter of a second for 40,000
    of them; its JSON form is written in Rust at a fifth of that, and only
    its first items are read back here.
    """
    text = exc.json(include_url=False, include_input=False, include_context=False)
    out: list[dict[str, Any]] = []
    pos, end = 1, len(text)
    while len(out) < MAX_ERRORS and pos < end:
        while pos < end and text[pos] in ", \n":
            pos += 1
        if pos >= end or text[pos] == "]":
            break
        item, pos = _DECODER.raw_decode(text, pos)
        out.append(item)
    return out


def _plain(value: Any) -> bool:
    return type(value) in (dict, list, str, int, float, bool) or value is None


_SCHEMAS: dict[type[Any], Schema] = {}
#: How each schema class's instances become JSON data, by class.
_CONVERTERS: dict[type[Any], Callable[[Any], Any]] = {}


def schema_of(tp: type[Any]) -> Schema:
    """The (cached) :class:`Schema` of a class."""
    schema = _SCHEMAS.get(tp)
    if schema is None:
        schema = _SCHEMAS[tp] = Schema(tp)
    return schema


def _converter(kind: type[Any]) -> Callable[[Any], Any] | None:
    msgspec = _msgspec()
    if msgspec is not None and issubclass(kind, msgspec.Struct):
        to_builtins: Callable[[Any], Any] = msgspec.to_builtins
        return to_builtins
    serializer = getattr(kind, "__pydantic_serializer__", None)
    if serializer is None and dataclasses.is_dataclass(kind):
        from pydantic import TypeAdapter

        serializer = TypeAdapter(kind).serializer
    if serializer is None:
        return None
    to_python = serializer.to_python

    def convert(obj: Any) -> Any:
        return to_python(obj, mode="json", warnings=False)

    return convert


def _same(obj: Any) -> Any:
    return obj


def as_data(obj: Any) -> Any:
    """A schema instance as its JSON form; anything else as it is (for the
    encoder). By class, cached: one dict lookup for a class seen before."""
    kind = type(obj)
    convert = _CONVERTERS.get(kind)
    if convert is None:
        convert = _converter(kind) or _same
        if len(_CONVERTERS) < 4096:  # classes made at run time: not kept all
            _CONVERTERS[kind] = convert
    return convert(obj)


def to_builtins(obj: Any) -> Any:
    """The JSON form of a schema instance (ujson's ``default`` for sends).

    Raises ``TypeError`` for anything else, as ujson would.
    """
    converted = as_data(obj)
    if converted is obj:
        raise TypeError(f"{obj!r} is not JSON serializable")
    return converted


def checker(
    declared: dict[str, Any],
) -> Callable[[str | None, Any], None] | None:
    """A check of outgoing data by type, for the declarations ``declared``
    (type -> :class:`~sanic_ws_ext.handlers.MessageDecl`); None if none has
    a schema."""
    schemas = {
        type_: schema_of(decl.schema)
        for type_, decl in declared.items()
        if decl.schema is not None
    }
    if not schemas:
        return None

    def check(type_: str | None, data: Any) -> None:
        if type_ is not None:
            schema = schemas.get(type_)
            if schema is not None:
                schema.check(type_, data)

    return check
