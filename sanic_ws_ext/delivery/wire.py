"""Bytes for ops between processes. Pure functions.

An encoded op::

    u8 kind | u8 binary | u16 code | u16 len + target | u16 len + reason
    | u16 len + origin | u16 count, then (u16 len + id) per excluded id
    | payload (the rest)

A datagram carries many ops as ``u32 length + op`` records, so one write
moves a whole event-loop pass worth of ops. An op larger than a datagram is
cut into fragments that the receiver joins per sender (datagrams from one
sender arrive in order).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from . import Op, OpKind

__all__ = ["decode_op", "encode_op", "iter_records", "pack_records"]

_HEAD = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _str16(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"string too long for an op field ({len(raw)} bytes)")
    return _U16.pack(len(raw)) + raw


def encode_op(op: Op) -> bytes:
    parts = [
        _HEAD.pack(op.kind, op.binary, op.code),
        _str16(op.target),
        _str16(op.reason),
        _str16(op.origin),
        _U16.pack(len(op.exclude)),
    ]
    parts.extend(_str16(conn_id) for conn_id in op.exclude)
    parts.append(op.payload)
    return b"".join(parts)


def decode_op(data: bytes | memoryview) -> Op:
    view = memoryview(data)
    kind, binary, code = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    fields: list[str] = []
    for _ in range(3):
        (n,) = _U16.unpack_from(view, pos)
        pos += 2
        fields.append(bytes(view[pos : pos + n]).decode())
        pos += n
    (count,) = _U16.unpack_from(view, pos)
    pos += 2
    exclude: list[str] = []
    for _ in range(count):
        (n,) = _U16.unpack_from(view, pos)
        pos += 2
        exclude.append(bytes(view[pos : pos + n]).decode())
        pos += n
    return Op(
        OpKind(kind),
        bytes(view[pos:]),
        bool(binary),
        fields[0],
        frozenset(exclude),
        code,
        fields[1],
        fields[2],
    )


def pack_records(records: list[bytes], limit: int) -> Iterator[bytes]:
    """Group length-prefixed records into chunks of at most ``limit`` bytes.

    A record that alone exceeds the limit is yielded in a chunk of its own
    (the caller fragments it).
    """
    chunk: list[bytes] = []
    size = 0
    for record in records:
        framed = _U32.pack(len(record)) + record
        if chunk and size + len(framed) > limit:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(framed)
        size += len(framed)
    if chunk:
        yield b"".join(chunk)


def iter_records(chunk: bytes | memoryview) -> Iterator[memoryview]:
    """The records of a chunk made by :func:`pack_records`."""
    view = memoryview(chunk)
    pos = 0
    end = len(view)
    while pos < end:
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        yield view[pos : pos + n]
        pos += n
