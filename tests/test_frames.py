"""Server frames parse back with the websockets library's client-side parser."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from sanic_ws_ext.frames import OP_BINARY, OP_TEXT, PING_FRAME, encode_frame


def parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("frame incomplete")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_lengths(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = parse(encode_frame(OP_BINARY, payload))
    assert frame.opcode is Opcode.BINARY
    assert frame.fin
    assert frame.data == payload


def test_text_and_ping() -> None:
    assert parse(encode_frame(OP_TEXT, "hé".encode())).data == "hé".encode()
    ping = parse(PING_FRAME)
    assert ping.opcode is Opcode.PING and ping.data == b""
