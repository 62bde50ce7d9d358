"""Server-to-client WebSocket frames (RFC 6455, section 5.2).

Pure functions. Server frames are never masked, so one message framed once is
the same bytes for every receiver: a broadcast frames once and writes the same
``bytes`` object to each connection. Messages are sent unfragmented.
"""

from __future__ import annotations

import struct

__all__ = [
    "OP_BINARY",
    "OP_PING",
    "OP_TEXT",
    "PING_FRAME",
    "data_frame",
    "encode_frame",
    "raw_body",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_PING = 0x9

_FIN = 0x80


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame carrying ``payload``."""
    n = len(payload)
    if n < 126:
        header = bytes((_FIN | opcode, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, n)
    return header + payload


#: The heartbeat ping: empty payload, shared by every connection.
PING_FRAME = encode_frame(OP_PING, b"")


def data_frame(payload: bytes, binary: bool) -> bytes:
    """A binary frame for ``binary`` payloads, a text frame otherwise."""
    return encode_frame(OP_BINARY if binary else OP_TEXT, payload)


def raw_body(payload: str | bytes) -> tuple[bytes, bool]:
    """What a raw send carries: ``str`` goes as text, bytes-like as binary."""
    if isinstance(payload, str):
        return payload.encode(), False
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), True
    raise TypeError(f"payload must be str or bytes, got {type(payload).__name__}")
