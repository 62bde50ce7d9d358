"""WebSocket frames (RFC 6455, section 5): the server's, and reading the client's.

Writing: pure functions. Server frames are never masked, so one message
framed once is the same bytes for every receiver: a broadcast frames once and
writes the same ``bytes`` object to each connection. Messages are sent
unfragmented.

Reading: :class:`FrameReader`, one per connection, turns the bytes a client
sends into frames and checks every rule of section 5 a frame alone can break
(masking, reserved bits, opcodes, control frames, the order of fragments, the
message size). It is a few slots and a ``bytearray``, no generator and no
object per frame: a parser costs the garbage collector nothing beyond that,
which matters at 100,000 connections (issue 14: websockets' protocol object
was ~11 tracked objects and ~2.4 us of every full collection per
connection). What needs the connection's state (the close handshake, UTF-8
of text, what is accepted) is :class:`~sanic_ws_ext.wire.Wire`'s.
"""

from __future__ import annotations

import struct

try:  # websockets' C unmasking, with its pure-Python fallback
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "PING_FRAME",
    "RSV1",
    "FrameError",
    "FrameReader",
    "close_payload",
    "data_frame",
    "encode_frame",
    "parse_close",
    "raw_body",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
#: RSV1: set on the first frame of a compressed message (permessage-deflate).
#: :meth:`FrameReader.feed` returns such a frame's opcode with it added.
RSV1 = 0x40

_FIN = 0x80
_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
#: Close codes a peer may send (RFC 6455 7.4 and IANA's registry), besides
#: 3000-4999; 1005, 1006 and 1015 only ever stand for "none was sent".
_PEER_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))


#: The two header bytes of every final text or binary frame of under 126
#: bytes, by length: made once, not per frame (a third of a small frame's
#: cost).
_SHORT_HEADERS = {
    op: [bytes((_FIN | op, n)) for n in range(126)] for op in (OP_TEXT, OP_BINARY)
}
_MEDIUM_HEADER = struct.Struct("!BBH").pack
_LONG_HEADER = struct.Struct("!BBQ").pack


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame carrying ``payload`` (``opcode`` may carry
    the RSV1 bit of a compressed frame)."""
    n = len(payload)
    if n < 126:
        short = _SHORT_HEADERS.get(opcode)
        if short is not None:
            return short[n] + payload
        return bytes((_FIN | opcode, n)) + payload
    if n < 1 << 16:
        return _MEDIUM_HEADER(_FIN | opcode, 126, n) + payload
    return _LONG_HEADER(_FIN | opcode, 127, n) + payload


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


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: ``code``, then ``reason`` cut to fit 125 bytes."""
    raw = reason.encode()[:123]
    while True:  # never cut inside a UTF-8 sequence
        try:
            raw.decode()
            break
        except UnicodeDecodeError:
            raw = raw[:-1]
    return code.to_bytes(2, "big") + raw


class FrameError(Exception):
    """The client broke the protocol: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a client's close frame (1005: none given).

    Raises :class:`FrameError`: 1002 for a one-byte payload or a code a peer
    may not send, 1007 for a reason that is not UTF-8.
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(1002, "close frame too short")
    code = int.from_bytes(payload[:2], "big")
    if code not in _PEER_CLOSE_CODES and not 3000 <= code < 5000:
        raise FrameError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(1007, "invalid UTF-8 in close reason") from None
    return code, reason


class FrameReader:
    """The frames of one client's byte stream, checked (RFC 6455, 5.2-5.5).

    :meth:`feed` returns the whole frames the bytes complete, as ``(opcode,
    fin, payload)`` with the payload unmasked. At the first frame that breaks
    a rule, :attr:`error` is set (the frames before it are still returned)
    and nothing more is read. A frame's header is checked as soon as it is
    in, so a frame announcing more than ``max_size`` fails at once instead
    of being buffered.
    """

    __slots__ = (
        "_buffer",
        "_in_message",
        "_max_size",
        "_message_size",
        "compressed",
        "error",
    )

    def __init__(self, max_size: int | None) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        #: permessage-deflate was negotiated: a message's first frame may
        #: have RSV1 set (returned as ``opcode | RSV1``; the size bound then
        #: counts compressed bytes, the inflater bounds the rest).
        self.compressed = False
        #: A fragmented data message is open, and its size so far.
        self._in_message = False
        self._message_size = 0
        self.error: FrameError | None = None

    @property
    def idle(self) -> bool:
        """Between messages, with no part of a frame held: any connection's
        next bytes may go to this reader (see ``WireHost.reader``)."""
        return not self._buffer and not self._in_message and self.error is None

    def feed(self, data: bytes) -> list[tuple[int, bool, bytes]]:
        if self.error is not None:
            return []
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bool, bytes]] = []
        end = len(buffer)
        at = 0
        try:
            while end - at >= 2:
                first = buffer[at]
                length = buffer[at + 1]
                opcode = first & 0x0F
                fin = first & 0x80 != 0
                # RSV1 only on a message's first frame, and only once
                # permessage-deflate was agreed; RSV2 and RSV3 never.
                if first & 0x70 and (
                    first & 0x70 != RSV1
                    or not self.compressed
                    or opcode not in (OP_TEXT, OP_BINARY)
                ):
                    raise FrameError(1002, "reserved bits must be 0")
                if opcode not in _OPCODES:
                    raise FrameError(1002, f"invalid opcode {opcode:#x}")
                if not length & 0x80:
                    raise FrameError(1002, "a client's frames must be masked")
                length &= 0x7F
                head = at + 2
                if length == 126:
                    if end - head < 2:
                        break
                    length = int.from_bytes(buffer[head : head + 2], "big")
                    head += 2
                elif length == 127:
                    if end - head < 8:
                        break
                    length = int.from_bytes(buffer[head : head + 8], "big")
                    if length >> 63:
                        raise FrameError(1002, "frame length past 2**63")
                    head += 8
                if opcode >= OP_CLOSE:
                    if not fin:
                        raise FrameError(1002, "fragmented control frame")
                    if length > 125:
                        raise FrameError(1002, "control frame too long")
                else:
                    if (opcode == OP_CONT) != self._in_message:
                        raise FrameError(
                            1002,
                            "unexpected continuation frame"
                            if opcode == OP_CONT
                            else "expected a continuation frame",
                        )
                    size = self._message_size + length
                    if self._max_size is not None and size > self._max_size:
                        raise FrameError(
                            1009, f"over size limit ({size} > {self._max_size} bytes)"
                        )
                start = head + 4
                if end - start < length:
                    break
                payload = apply_mask(buffer[start : start + length], buffer[head:start])
                at = start + length
                if opcode < OP_CLOSE:
                    self._in_message = not fin
                    self._message_size = 0 if fin else size
                frames.append((opcode | (first & RSV1), fin, payload))
        except FrameError as exc:
            self.error = exc
            buffer.clear()
            return frames
        del buffer[:at]
        return frames
