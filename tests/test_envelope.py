"""The envelope codec, without sockets."""

from __future__ import annotations

import json
import re

import pytest
import ujson

from sanic_ws_ext.envelope import (
    MAX_TYPE_LENGTH,
    decode_envelope,
    encode_envelope,
    error_envelope,
    now_ms,
)
from sanic_ws_ext.errors import ErrorCode, MessageError


def test_encode_stamps_when_absent() -> None:
    before = now_ms()
    obj = ujson.loads(encode_envelope("chat", {"text": "héllo /"}))
    assert obj["type"] == "chat"
    assert obj["data"] == {"text": "héllo /"}
    assert before <= obj["timestamp"] <= now_ms()


def test_encode_keeps_given_timestamp_and_null_data() -> None:
    obj = ujson.loads(encode_envelope("tick", timestamp=42))
    assert obj == {"type": "tick", "data": None, "timestamp": 42}


def test_encode_is_utf8_not_ascii_escaped() -> None:
    assert "ü".encode() in encode_envelope("t", "ü")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_encode_rejects_bad_type(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_envelope(bad)  # type: ignore[arg-type]


def test_encode_rejects_unserializable_data() -> None:
    with pytest.raises((TypeError, ValueError, OverflowError)):
        encode_envelope("t", {"x": object()})


def test_decode_roundtrip() -> None:
    env = decode_envelope('{"type":"chat","data":[1,2],"timestamp":7,"extra":1}')
    assert (env.type, env.data, env.timestamp) == ("chat", [1, 2], 7)


def test_decode_adds_timestamp_and_null_data() -> None:
    env = decode_envelope('{"type":"ping"}')
    assert env.data is None
    assert isinstance(env.timestamp, int) and env.timestamp > 0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", ErrorCode.INVALID_JSON),
        ("{", ErrorCode.INVALID_JSON),
        ("[1,2]", ErrorCode.INVALID_ENVELOPE),
        ('"chat"', ErrorCode.INVALID_ENVELOPE),
        ('{"data":1}', ErrorCode.INVALID_ENVELOPE),
        ('{"type":""}', ErrorCode.INVALID_ENVELOPE),
        ('{"type":5}', ErrorCode.INVALID_ENVELOPE),
        ('{"type":null}', ErrorCode.INVALID_ENVELOPE),
        ('{"type":"t","timestamp":"now"}', ErrorCode.INVALID_ENVELOPE),
        ('{"type":"t","timestamp":true}', ErrorCode.INVALID_ENVELOPE),
        ('{"type":"' + "x" * (MAX_TYPE_LENGTH + 1) + '"}', ErrorCode.INVALID_ENVELOPE),
        # Lone surrogates: in data, in a key, high or low, in the type.
        ('{"type":"t","data":"\\ud800"}', ErrorCode.INVALID_JSON),
        ('{"type":"t","data":{"\\uDC00":1}}', ErrorCode.INVALID_JSON),
        ('{"type":"t","data":["ok","x\\udfff"]}', ErrorCode.INVALID_JSON),
        ('{"type":"\\ud83d"}', ErrorCode.INVALID_JSON),
    ],
)
def test_decode_refuses_bad_input(text: str, code: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_envelope(text)
    assert info.value.code == code
    assert info.value.reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not valid JSON: the message is empty"),
        ("  \n", "not valid JSON: the message is empty"),
        (
            "nul",
            "not valid JSON at character 1: expected a value (an object, array,"
            " string, number, true, false or null) (found 'nul')",
        ),
        (
            "{'type': 'chat'}",
            "not valid JSON at character 2: expected a key in double quotes",
        ),
        ('{"type": "chat",}', "at character 17: expected a key in double quotes"),
        ('{"type" "chat"}', "at character 9: expected ':' after the key"),
        ('{"type": "chat"', "at character 16: expected ',' or the closing bracket"),
        ('{"type": "chat', "at character 10: a string is not closed"),
        ('{"type": "a\\q"}', "at character 12: an unknown escape in a string"),
        ('{"type": "\\u12"}', "at character 12: a \\u escape needs four hex"),
        ('{"type": "a"} {"type": "b"}', "at character 15: more text after the end"),
        ('{"type":\n "a"\n x}', "at line 3, column 2: expected ','"),
        ("[" * 5000 + "]" * 5000, "not valid JSON here: nested too deeply"),
        # The parser's own "Unexpected UTF-8 BOM (decode using utf-8-sig)"
        # is advice for Python code, not for whoever sent the message.
        (
            '\ufeff{"type": "a"}',
            "at character 1: the message starts with a byte order mark (U+FEFF):"
            " send the JSON without it",
        ),
        # Cut short: said, instead of "(found '')".
        ('{"type": ', "at character 10: expected a value (an object, array"),
        ("{", "(where the message ends: is it cut short?)"),
        # Raw control characters in strings are allowed (as ujson does): the
        # reason names the real problem, the trailing text.
        ('{"type": "a\x01"} x', "at character 16: more text after the end"),
    ],
)
def test_invalid_json_is_explained_in_our_words(text: str, reason: str) -> None:
    with pytest.raises(MessageError) as refused:
        decode_envelope(text)
    assert refused.value.code == ErrorCode.INVALID_JSON
    assert reason in refused.value.reason
    # Never the parser's own words ("when decoding 'null'", "utf-8-sig").
    assert "decoding" not in refused.value.reason
    assert "utf-8-sig" not in refused.value.reason


def test_a_parser_message_without_our_words_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another Python's parser may word a problem we have no words for: the
    reason then says where, and what is there, without the parser's text."""

    def loads(text: str, **_: object) -> None:
        raise json.JSONDecodeError("Some new complaint", text, 8)

    monkeypatch.setattr(json, "loads", loads)  # what explain_invalid_json calls
    with pytest.raises(MessageError) as refused:
        decode_envelope('{"type" x}')
    assert "not valid JSON at character 9 (found 'x}')" in refused.value.reason
    assert "complaint" not in refused.value.reason


def test_surrogate_pairs_and_escaped_backslashes_pass() -> None:
    # A pair is one character; "\\\\ud800" is a backslash and five letters.
    env = decode_envelope('{"type":"t","data":["\\ud83d\\ude00","\\\\ud800"]}')
    assert env.data == ["\U0001f600", "\\ud800"]
    assert encode_envelope("t", env.data)


def test_error_envelope_shape() -> None:
    obj = ujson.loads(error_envelope("invalid_json", "not valid JSON"))
    assert obj["type"] == "error"
    assert obj["data"] == {"code": "invalid_json", "reason": "not valid JSON"}


def test_envelopes_are_encoded_with_ujsons_options_by_position_as_by_keyword() -> None:
    """The encoder passes ujson its options by position (keywords cost ~0.5
    us a call); with this ujson that path is taken, and it writes what the
    keyword call writes and refuses what it refuses."""
    from sanic_ws_ext import envelope

    assert envelope._dumps is envelope._dumps_by_position
    for payload in (
        {"type": "a/b", "data": {"text": "é ✓ </script>", "n": 2**53, "f": 0.1}},
        {"type": "t", "data": [None, True, -1.5e300, "\u2028"]},
    ):
        assert envelope._dumps_by_position(payload) == envelope._dumps_by_keyword(
            payload
        )
    for refused in ({"data": float("inf")}, {"data": b"raw"}):
        with pytest.raises((OverflowError, TypeError)) as by_keyword:
            envelope._dumps_by_keyword(refused)
        with pytest.raises(by_keyword.type, match=re.escape(str(by_keyword.value))):
            envelope._dumps_by_position(refused)
