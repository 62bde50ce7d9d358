"""permessage-deflate (RFC 7692), the server's side. Pure.

Negotiated (``WS_COMPRESSION``) with *no context takeover* both ways: the
server compresses every message on its own, so a broadcast is compressed
once and the same compressed frame goes to every receiver that negotiated
the extension (with the same window size); and a client compresses each
message on its own, so a connection keeps no inflate state between
messages: compression costs no memory per idle connection.

Rules this module keeps:

- A message under ``WS_COMPRESSION_MIN`` bytes, or one that compression does
  not make smaller, goes uncompressed (RSV1 clear), as RFC 7692 allows.
- Inflating is bounded: output past ``WS_MAX_MESSAGE_SIZE`` stops at once
  with 1009 (a decompression bomb costs its first bytes past the bound, not
  its size); data zlib cannot inflate is 1007.
"""

from __future__ import annotations

import zlib

from .frames import OP_BINARY, OP_TEXT, RSV1, FrameError, encode_frame

__all__ = ["RSV1", "Deflater", "Inflater"]

#: What a sync flush ends with, and what RFC 7692 leaves out of each message.
_TAIL = b"\x00\x00\xff\xff"


class Deflater:
    """Compresses server frames for the sockets that negotiated the extension.

    One per process. Remembers the last frame it was given, so a broadcast,
    which hands the same ``bytes`` object for every receiver, is compressed
    once (per window size: nearly always one, 15 bits).
    """

    __slots__ = ("_encoders", "_last", "_outs", "level", "min_size")

    def __init__(self, level: int, min_size: int) -> None:
        self.level = level
        self.min_size = min_size
        # One compressor per window size, reused: a full flush after each
        # message resets it, so no message depends on an earlier one.
        self._encoders: dict[int, zlib._Compress] = {}
        self._last: bytes | None = None
        self._outs: dict[int, bytes] = {}

    def frame(self, frame: bytes, bits: int) -> bytes:
        """``frame`` (a server data frame) as a receiver with a ``bits`` window
        gets it: compressed, or ``frame`` itself."""
        if frame is self._last:
            out = self._outs.get(bits)
            if out is not None:
                return out
        else:
            self._last = frame
            self._outs = {}
        out = self._outs[bits] = self._compress(frame, bits)
        return out

    def _compress(self, frame: bytes, bits: int) -> bytes:
        opcode = frame[0] & 0x0F
        if opcode not in (OP_TEXT, OP_BINARY):
            return frame
        length = frame[1] & 0x7F
        start = 2 if length < 126 else 4 if length == 126 else 10
        if len(frame) - start < self.min_size:
            return frame
        encoder = self._encoders.get(bits)
        if encoder is None:
            encoder = self._encoders[bits] = zlib.compressobj(
                self.level, zlib.DEFLATED, -bits
            )
        payload = memoryview(frame)[start:]
        data = encoder.compress(payload) + encoder.flush(zlib.Z_FULL_FLUSH)
        if data.endswith(_TAIL):
            data = data[:-4]
        if len(data) >= len(payload):
            return frame  # incompressible (already compressed media, say)
        return encode_frame(opcode | RSV1, data)


class Inflater:
    """Inflates one compressed message from a client, fragment by fragment."""

    __slots__ = ("_decoder", "_limit", "_size")

    def __init__(self, limit: int | None) -> None:
        # A 15-bit window inflates whatever window the client compressed with.
        self._decoder = zlib.decompressobj(-15)
        self._limit = limit
        self._size = 0

    def feed(self, data: bytes | bytearray, final: bool) -> bytes:
        """The message's next inflated bytes; raises :class:`FrameError`."""
        if final:
            data = bytes(data) + _TAIL
        decoder = self._decoder
        limit = self._limit
        try:
            if limit is None:
                out = decoder.decompress(data)
            else:
                # One byte past what is left: enough to know the bound is passed.
                out = decoder.decompress(data, limit - self._size + 1)
        except zlib.error:
            raise FrameError(1007, "invalid compressed data") from None
        self._size += len(out)
        if limit is not None and (self._size > limit or decoder.unconsumed_tail):
            raise FrameError(
                1009, f"over size limit (more than {limit} bytes inflated)"
            )
        return out
