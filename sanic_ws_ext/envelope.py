"""The message envelope: ``{"type": str, "data": any, "timestamp": int}``.

A request carries a ``ref`` too, and is answered by one ``reply`` envelope
with the same ``ref``: ``{"type": "reply", "ref", "ok": true, "data"}`` or
``{"type": "reply", "ref", "ok": false, "error": {"code", "reason"}}``.

Pure functions, no I/O. Text frames carry one JSON envelope each; binary frames
carry raw bytes and bypass this module. ``timestamp`` is milliseconds since the
Unix epoch (as JavaScript's ``Date.now()``) and is added when absent.

Rules this codec keeps:

- An incoming message must be a JSON object with a non-empty string ``type``
  of at most :data:`MAX_TYPE_LENGTH` characters; ``data`` may be any JSON value
  and defaults to ``null``; ``timestamp``, when given, must be a finite number.
- Only JSON goes out: ``NaN`` and ``Infinity``, which ujson would write (and a
  browser's ``JSON.parse`` rejects), make encoding fail in the sender's code,
  so one client's hostile numbers cannot break the others' parsers. Incoming
  ``NaN``/``Infinity`` literals, and numbers past a double's range (which
  ujson would read as infinity), are refused as invalid JSON.
- ``ref``, when present, must be a string of 1 to :data:`MAX_REF_LENGTH`
  characters. A message with a valid ``ref`` whose other fields are refused
  is still answered by a reply (``ok: false``), never left unanswered.
- A ``reply`` envelope (the client answering the server's request) must have
  a ``ref`` and a boolean ``ok``; with ``ok: false`` an ``error`` object with
  a string ``code`` (and ``reason``).
- Unknown keys are ignored: they are reserved for later protocol features.
- Encoding is done once per outgoing message, never once per receiver.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic

import ujson
from typing_extensions import TypeVar

from .errors import ErrorCode, MessageError
from .frames import raw_body
from .schemas import as_data, to_builtins

__all__ = [
    "MAX_REF_LENGTH",
    "MAX_TYPE_LENGTH",
    "Envelope",
    "RefusedRequest",
    "Reply",
    "decode_envelope",
    "decode_message",
    "encode_envelope",
    "encode_envelope_json",
    "encode_reply",
    "encode_request",
    "error_envelope",
    "message_body",
    "now_ms",
]

MAX_TYPE_LENGTH = 256
#: Longest ``ref`` a message may carry.
MAX_REF_LENGTH = 64
#: Text that may decode to a non-finite float (with the literals ujson
#: accepts, NaN and Infinity, tested apart): an exponent of 100 or more, or a
#: run of 309 digits, which only a text that long can hold. One pattern with
#: all four cost 4 us per chat message, three times ujson's parse of it.
_BIG_EXPONENT = re.compile(r"[eE]\+?0*[1-9]\d\d")
_LONG_DIGITS = re.compile(r"\d{309}")


def _may_be_non_finite(text: str) -> bool:
    return (
        "NaN" in text
        or "Infinity" in text
        or _BIG_EXPONENT.search(text) is not None
        or (len(text) >= 309 and _LONG_DIGITS.search(text) is not None)
    )


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


#: The type of an envelope's ``data``: ``Any`` unless a schema says.
T = TypeVar("T", default=Any)


#: ujson's ``default``: schema instances (dataclasses, pydantic models,
#: msgspec structs) go out as their JSON form; only called for values ujson
#: cannot write itself, so plain data pays nothing.
_default = to_builtins
#: What ujson writes itself: data of these types goes to it as it is; a
#: schema instance at the top is converted first (ujson's default is slower).
_NATIVE = frozenset({dict, list, str, int, float, bool, type(None)})


@dataclass(frozen=True, slots=True)
class Envelope(Generic[T]):
    """One decoded text message.

    ``Envelope[ChatSend]`` as the annotation of a handler's message declares
    the schema of its ``data`` (docs/howto/typed.md): the handler then gets
    an envelope whose ``data`` is a validated ``ChatSend``.
    """

    type: str
    data: T = None  # type: ignore[assignment]
    timestamp: int | float | None = None
    #: The client's request id, when it asked for a reply (else ``None``).
    #: A client that retries after a reconnect sends the same ref again: a
    #: handler may use it to do the work once.
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A client's answer to one of the server's requests."""

    ref: str
    ok: bool
    data: Any = None
    code: str = ""
    reason: str = ""


class RefusedRequest(MessageError):
    """A message refused whose ``ref`` was readable: answered by a reply."""

    def __init__(self, code: str, reason: str, ref: str) -> None:
        super().__init__(code, reason)
        self.ref = ref


def _dumps_by_keyword(payload: dict[str, Any]) -> bytes:
    return ujson.dumps(
        payload,
        ensure_ascii=False,
        escape_forward_slashes=False,
        allow_nan=False,
        default=_default,
    ).encode()


#: Untyped: typeshed's stub lists the options in another order than
#: ujson 5 and 6 read them (checked below, at import).
_ujson_dumps: Callable[..., str] = ujson.dumps


def _dumps_by_position(payload: dict[str, Any]) -> bytes:
    # ujson's order: obj, ensure_ascii, encode_html_chars,
    # escape_forward_slashes, sort_keys, indent, allow_nan, reject_bytes,
    # default.
    return _ujson_dumps(
        payload, False, False, False, False, 0, False, True, _default
    ).encode()


def _same_by_position() -> bool:
    """Whether this ujson reads the options by position as by keyword."""
    probe = {"a/é<": [1.5, {"n": None}, True], "t": 2**40}
    try:
        if _dumps_by_position(probe) != _dumps_by_keyword(probe):
            return False
    except Exception:
        return False
    for refused in ({"nan": float("nan")}, {"bytes": b"x"}):
        try:
            _dumps_by_position(refused)
        except (ValueError, OverflowError, TypeError):
            continue  # refused, as by keyword
        except Exception:
            return False
        return False
    return True


#: ujson parses keyword options on every call: ~0.5 us of a 1.2 us encode of
#: a small envelope, every broadcast's largest cost. By position they cost
#: nothing; the keyword call stays if a ujson release reads them otherwise.
_dumps = _dumps_by_position if _same_by_position() else _dumps_by_keyword


def encode_request(type: str, data: Any, ref: str) -> bytes:
    """A server's request to a client: an envelope with a ``ref``."""
    if not isinstance(type, str) or not type:
        raise TypeError(f"envelope type must be a non-empty str, got {type!r}")
    return _dumps({"type": type, "data": data, "ref": ref, "timestamp": now_ms()})


def encode_reply(
    ref: str,
    data: Any = None,
    *,
    error: tuple[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> bytes:
    """The reply to a request with ``ref``: ``ok: true`` with ``data``, or
    ``ok: false`` with ``error`` (code, reason, and ``details`` beside them).
    Raises as :func:`encode_envelope` when ``data`` is not JSON-able."""
    if error is None:
        if data.__class__ not in _NATIVE:
            data = as_data(data)
        return _dumps(
            {"type": "reply", "ref": ref, "ok": True, "data": data,
             "timestamp": now_ms()}
        )  # fmt: skip
    code, reason = error
    return _dumps(
        {"type": "reply", "ref": ref, "ok": False,
         "error": {**(details or {}), "code": code, "reason": reason},
         "timestamp": now_ms()}
    )  # fmt: skip


def encode_envelope(
    type: str, data: Any = None, timestamp: int | float | None = None
) -> bytes:
    """Serialize an envelope to UTF-8 JSON bytes, stamping it if needed.

    Raises :class:`TypeError` when ``type`` is not a string and
    :class:`ValueError`/:class:`OverflowError` when ``data`` is not
    JSON-serializable (``NaN`` and infinities included), so the mistake
    surfaces in the sender's code.
    """
    if not isinstance(type, str) or not type:
        raise TypeError(f"envelope type must be a non-empty str, got {type!r}")
    payload = {
        "type": type,
        "data": data if data.__class__ in _NATIVE else as_data(data),
        "timestamp": now_ms() if timestamp is None else timestamp,
    }
    return _dumps(payload)


def encode_envelope_json(type: str, data: bytes) -> bytes:
    """:func:`encode_envelope` of data already encoded as JSON (by this
    package, with the same options), stamped now."""
    return b'{"type":%s,"data":%s,"timestamp":%d}' % (
        ujson.dumps(type, ensure_ascii=False, escape_forward_slashes=False).encode(),
        data,
        now_ms(),
    )


def message_body(
    type: str | None, data: Any, raw: str | bytes | None
) -> tuple[bytes, bool]:
    """What a send carries, and whether it is binary: an envelope of ``type``
    and ``data``, or ``raw`` as it is (``str`` as text, bytes as binary).

    One or the other: ``TypeError`` for both or neither.
    """
    if raw is None:
        if type is None:
            raise TypeError("a send needs a type (an envelope) or raw= (a raw frame)")
        return encode_envelope(type, data), False
    if type is not None or data is not None:
        raise TypeError("raw= is sent as it is: give no type or data with it")
    return raw_body(raw)


def error_envelope(
    code: str, reason: str, details: dict[str, Any] | None = None
) -> bytes:
    """The error frame body: ``{"type": "error", "data": {code, reason}}``,
    with ``details`` beside ``code`` and ``reason`` in ``data``."""
    if details:
        return encode_envelope("error", {**details, "code": code, "reason": reason})
    return encode_envelope("error", {"code": code, "reason": reason})


def decode_envelope(text: str) -> Envelope:
    """Parse one incoming text message.

    Raises :class:`MessageError` with ``invalid_json`` or ``invalid_envelope``.
    """
    message = decode_message(text)
    if isinstance(message, Reply):
        return Envelope("reply", message.data, now_ms(), message.ref)
    return message


def decode_message(text: str) -> Envelope | Reply:
    """Parse one incoming text message: an envelope, or a ``reply`` to one of
    the server's requests.

    Raises :class:`MessageError` with ``invalid_json`` or ``invalid_envelope``
    (a :class:`RefusedRequest` when the message's ``ref`` was readable).
    """
    try:
        obj = ujson.loads(text)
    except (ValueError, OverflowError, RecursionError):
        raise MessageError(ErrorCode.INVALID_JSON, explain_invalid_json(text)) from None
    # ujson reads NaN and Infinity, and turns numbers past a float's range
    # (1e999, or 309 digits) into infinity; the pattern keeps the walk off
    # the common path.
    if _may_be_non_finite(text) and _has_non_finite(obj):
        raise MessageError(
            ErrorCode.INVALID_JSON,
            "not valid JSON here: NaN, Infinity and numbers past a double's range",
        )
    # An escaped lone surrogate ("\ud800") decodes to a str no encoder can
    # write: echoed, it would fail in the handler, so a client could make the
    # server log errors at will. Only escapes can make one: test for those first.
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(obj):
        raise MessageError(
            ErrorCode.INVALID_JSON, "not valid JSON: a lone surrogate is not text"
        )
    if not isinstance(obj, dict):
        raise MessageError(
            ErrorCode.INVALID_ENVELOPE, "a message must be a JSON object"
        )
    ref = obj.get("ref")
    if (ref is not None or "ref" in obj) and (
        not isinstance(ref, str) or not 0 < len(ref) <= MAX_REF_LENGTH
    ):
        raise MessageError(
            ErrorCode.INVALID_ENVELOPE,
            f'"ref" must be a string of 1 to {MAX_REF_LENGTH} characters',
        )
    if obj.get("type") == "reply":
        return _reply(obj, ref)  # refused by an error frame: no reply to a reply
    try:
        return _decoded(obj, ref)
    except MessageError as exc:
        if ref is None:
            raise
        raise RefusedRequest(exc.code, exc.reason, ref) from None


def _decoded(obj: dict[str, Any], ref: str | None) -> Envelope | Reply:
    type_ = obj.get("type")
    if not isinstance(type_, str) or not type_:
        raise MessageError(
            ErrorCode.INVALID_ENVELOPE, '"type" must be a non-empty string'
        )
    if len(type_) > MAX_TYPE_LENGTH:
        raise MessageError(
            ErrorCode.INVALID_ENVELOPE,
            f'"type" is longer than {MAX_TYPE_LENGTH} characters',
        )
    timestamp = obj.get("timestamp")
    if timestamp is None:
        timestamp = now_ms()
    elif (
        isinstance(timestamp, bool)
        or not isinstance(timestamp, int | float)
        or (isinstance(timestamp, float) and not math.isfinite(timestamp))
    ):
        raise MessageError(
            ErrorCode.INVALID_ENVELOPE, '"timestamp" must be a finite number'
        )
    return Envelope(type_, obj.get("data"), timestamp, ref)


def _reply(obj: dict[str, Any], ref: str | None) -> Reply:
    if ref is None:
        raise MessageError(ErrorCode.INVALID_ENVELOPE, 'a "reply" must have a "ref"')
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise MessageError(ErrorCode.INVALID_ENVELOPE, '"ok" must be true or false')
    if ok:
        return Reply(ref, True, obj.get("data"))
    error = obj.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    reason = error.get("reason", "") if isinstance(error, dict) else None
    if not isinstance(code, str) or not code or not isinstance(reason, str):
        raise MessageError(
            ErrorCode.INVALID_ENVELOPE,
            '"error" must be an object with a string "code" and "reason"',
        )
    return Reply(ref, False, None, code, reason)


# What the standard library's parser says (the start of its message), in
# the words of this protocol. ujson's own messages name its internals ("when
# decoding 'null'") rather than the input; the standard parser, run only
# once ujson refused a message, says where the input went wrong.
_PROBLEMS = (
    ("Expecting value", "expected a value (an object, array, string, number,"
     " true, false or null)"),
    ("Expecting property name", "expected a key in double quotes (a trailing"
     " comma, or a key in single quotes or without quotes?)"),
    ("Expecting ',' delimiter", "expected ',' or the closing bracket"),
    ("Expecting ':' delimiter", "expected ':' after the key"),
    ("Unterminated string", "a string is not closed (missing '\"')"),
    ("Invalid control character", "a line break or other control character"
     " inside a string must be escaped"),
    ("Invalid \\escape", "an unknown escape in a string (after '\\')"),
    ("Invalid \\uXXXX escape", "a \\u escape needs four hex digits"),
    ("Extra data", "more text after the end of the JSON value (one envelope"
     " per message)"),
    ("Unexpected UTF-8 BOM", "the message starts with a byte order mark"
     " (U+FEFF): send the JSON without it"),
    ("Illegal trailing comma", "a comma before the closing bracket"),
)  # fmt: skip


def explain_invalid_json(text: str) -> str:
    """Say, for people, what is wrong with ``text``, which ujson refused."""
    if not text.strip():
        return "not valid JSON: the message is empty"
    try:
        # strict=False: raw control characters in strings, as ujson allows.
        json.loads(text, strict=False)
    except RecursionError:
        return "not valid JSON here: nested too deeply"
    except json.JSONDecodeError as exc:
        where = f"at character {exc.colno}"
        if exc.lineno > 1:
            where = f"at line {exc.lineno}, column {exc.colno}"
        # Only our words: a message of the parser's we have no words for
        # (another Python's) is left out, the place and the text found say it.
        problem = next(
            (f": {words}" for prefix, words in _PROBLEMS if exc.msg.startswith(prefix)),
            "",
        )
        found = text[exc.pos : exc.pos + 12]
        near = f" (found {found!r})" if found.strip() else ""
        if not text[exc.pos :].strip():
            near = " (where the message ends: is it cut short?)"
        return f"not valid JSON {where}{problem}{near}"
    except ValueError:
        pass
    # Read by the standard parser, not by ujson: what ujson alone refuses.
    return "not valid JSON here: nested too deeply or a number out of range"


def _has_lone_surrogate(obj: Any) -> bool:
    """Whether a decoded value holds a string that is not valid Unicode text."""
    stack = [obj]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is str:
            try:
                value.encode()
            except UnicodeEncodeError:
                return True
        elif kind is list:
            stack.extend(value)
        elif kind is dict:
            stack.extend(value.keys())
            stack.extend(value.values())
    return False


def _has_non_finite(obj: Any) -> bool:
    """Whether a decoded value holds a NaN or an infinity, at any depth.

    Iterative: ujson allows nesting deeper than Python's recursion limit.
    """
    stack = [obj]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return True
        elif kind is list:
            stack.extend(value)
        elif kind is dict:
            stack.extend(value.values())
    return False
