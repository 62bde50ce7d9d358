"""The frame reader on its own: every byte boundary, every rule of RFC 6455 5."""

from __future__ import annotations

import os
import struct

import pytest
from websockets.frames import Frame, Opcode
from websockets.utils import apply_mask

from sanic_ws_ext.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
    parse_close,
)


def masked(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """What a client sends (websockets' own encoder, masked)."""
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


def by_hand(first: int, payload: bytes) -> bytes:
    """A masked frame with any first byte (FIN, RSV, opcode), even a bad one."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    else:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", n)
    return head + mask + apply_mask(payload, mask)


def read_split(
    data: bytes, at: int, max_size: int | None = None
) -> list[tuple[int, bool, bytes]]:
    reader = FrameReader(max_size)
    frames = reader.feed(data[:at]) + reader.feed(data[at:])
    assert reader.error is None
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_lengths_and_masks_at_every_split(size: int) -> None:
    payload = os.urandom(size)
    data = masked(Opcode.BINARY, payload) + masked(Opcode.PING, b"p")
    expected = [(OP_BINARY, True, payload), (OP_PING, True, b"p")]
    # Every split of the headers and around them; a few inside big payloads.
    splits = [*range(min(len(data), 20)), *range(len(data) - 20, len(data) + 1)]
    for at in sorted(set(splits)):
        assert read_split(data, at) == expected, at


def test_byte_by_byte_and_fragments() -> None:
    data = (
        masked(Opcode.TEXT, b"he", fin=False)
        + masked(Opcode.PING, b"")  # a control frame between fragments
        + masked(Opcode.CONT, b"llo", fin=False)
        + masked(Opcode.CONT, b"!", fin=True)
        + masked(Opcode.TEXT, b"next")
    )
    reader = FrameReader(None)
    frames = []
    for i in range(len(data)):
        frames += reader.feed(data[i : i + 1])
    assert frames == [
        (OP_TEXT, False, b"he"),
        (OP_PING, True, b""),
        (OP_CONT, False, b"llo"),
        (OP_CONT, True, b"!"),
        (OP_TEXT, True, b"next"),
    ]
    assert reader.error is None


def unmasked(first: int, payload: bytes) -> bytes:
    return bytes((first, len(payload))) + payload


BROKEN = {
    "not masked": (unmasked(0x81, b"x"), 1002),
    "reserved bit": (b"\xc1" + masked(Opcode.TEXT, b"x")[1:], 1002),
    "unknown opcode": (b"\x83" + masked(Opcode.TEXT, b"x")[1:], 1002),
    "fragmented ping": (by_hand(0x09, b""), 1002),
    "long ping": (by_hand(0x89, b"x" * 126), 1002),
    "continuation first": (masked(Opcode.CONT, b"x"), 1002),
    "text inside a message": (
        masked(Opcode.TEXT, b"a", fin=False) + masked(Opcode.TEXT, b"b"),
        1002,
    ),
    "length past 2**63": (b"\x82\xff" + struct.pack("!Q", 1 << 63), 1002),
    "one byte over the size": (masked(Opcode.BINARY, b"x" * 11), 1009),
    "fragments over the size": (
        masked(Opcode.BINARY, b"x" * 6, fin=False) + masked(Opcode.CONT, b"x" * 5),
        1009,
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_each_broken_rule_is_an_error_with_its_close_code(name: str) -> None:
    data, code = BROKEN[name]
    reader = FrameReader(10)
    frames = reader.feed(masked(Opcode.TEXT, b"ok") + data)
    assert frames[0] == (OP_TEXT, True, b"ok")  # what came before it stands
    assert reader.error is not None and reader.error.code == code, name
    assert reader.feed(masked(Opcode.TEXT, b"later")) == []  # nothing more


def test_a_huge_announced_frame_fails_before_its_payload() -> None:
    reader = FrameReader(1 << 20)
    reader.feed(b"\x82\xff" + struct.pack("!Q", 1 << 40))  # only the header
    assert reader.error is not None and reader.error.code == 1009


def test_exactly_the_size_limit_passes() -> None:
    assert read_split(masked(Opcode.BINARY, b"x" * 10), 5, max_size=10) == [
        (OP_BINARY, True, b"x" * 10)
    ]


@pytest.mark.parametrize(
    ("payload", "result"),
    [
        (b"", (1005, "")),
        (struct.pack("!H", 1000), (1000, "")),
        (struct.pack("!H", 4000) + "bye é".encode(), (4000, "bye é")),
        (struct.pack("!H", 1014), (1014, "")),
    ],
)
def test_close_payloads(payload: bytes, result: tuple[int, str]) -> None:
    assert parse_close(payload) == result


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1005), 1002),
        (struct.pack("!H", 1006), 1002),
        (struct.pack("!H", 1015), 1002),
        (struct.pack("!H", 2000), 1002),
        (struct.pack("!H", 5000), 1002),
        (struct.pack("!H", 1000) + b"\xff", 1007),
    ],
)
def test_bad_close_payloads(payload: bytes, code: int) -> None:
    with pytest.raises(FrameError) as caught:
        parse_close(payload)
    assert caught.value.code == code


def test_close_is_a_control_frame() -> None:
    reader = FrameReader(None)
    frames = reader.feed(masked(Opcode.CLOSE, struct.pack("!H", 1000)))
    assert frames == [(OP_CLOSE, True, struct.pack("!H", 1000))]
