"""Bytes for ops between processes.

Pure functions, but for :func:`apply_records`, which calls back.

An encoded op::

    head: u8 kind | u8 flags (1 binary, 2 volatile) | u16 code | u16 target length
          | u16 reason length | u16 origin length | u16 excluded ids
    target | reason | origin | (u16 length + id) per excluded id | payload

A datagram carries many ops as ``u32 length + op`` records, so one write
moves a whole event-loop pass worth of ops. An op larger than a datagram is
cut into fragments that the receiver joins per sender (datagrams from one
sender arrive in order).

A Redis message carries a chunk of records behind a header that lets
receivers drop duplicates and notice gaps::

    u8 version | u64 sender's life | u64 sequence | u16 origin length
    | origin | records
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator

from . import Op, OpKind

__all__ = [
    "apply_records",
    "decode_op",
    "encode_op",
    "frame_record",
    "iter_records",
    "pack_message",
    "pack_records",
    "unpack_message",
]

_HEAD = struct.Struct("!BBHHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_KINDS = {int(kind): kind for kind in OpKind}
_MESSAGE = struct.Struct("!BQQH")
_VERSION = 1


def encode_op(op: Op) -> bytes:
    target = op.target.encode()
    reason = op.reason.encode()
    origin = op.origin.encode()
    if max(len(target), len(reason), len(origin), len(op.exclude)) > 0xFFFF:
        raise ValueError("op field too long")
    head = _HEAD.pack(
        op.kind,
        op.binary | op.volatile << 1,
        op.code,
        len(target),
        len(reason),
        len(origin),
        len(op.exclude),
    )
    if not op.exclude:
        return b"".join((head, target, reason, origin, op.payload))
    ids = b"".join(
        _U16.pack(len(raw)) + raw for raw in (i.encode() for i in op.exclude)
    )
    return b"".join((head, target, reason, origin, ids, op.payload))


def decode_op(data: bytes) -> Op:
    kind, flags, code, n_target, n_reason, n_origin, n_exclude = _HEAD.unpack_from(data)
    pos = _HEAD.size
    target = data[pos : pos + n_target].decode()
    pos += n_target
    reason = data[pos : pos + n_reason].decode()
    pos += n_reason
    origin = data[pos : pos + n_origin].decode()
    pos += n_origin
    exclude: frozenset[str] = frozenset()
    if n_exclude:
        ids = []
        for _ in range(n_exclude):
            (n,) = _U16.unpack_from(data, pos)
            pos += 2
            ids.append(data[pos : pos + n].decode())
            pos += n
        exclude = frozenset(ids)
    return Op(
        _KINDS[kind],
        data[pos:],
        bool(flags & 1),
        target,
        exclude,
        code,
        reason,
        origin,
        bool(flags & 2),
    )


def frame_record(record: bytes) -> bytes:
    """A record with its length prefix, ready for :func:`pack_records`."""
    return _U32.pack(len(record)) + record


def pack_records(framed: list[bytes], limit: int) -> Iterator[bytes]:
    """Group framed records into chunks of at most ``limit`` bytes.

    A record that alone exceeds the limit is yielded in a chunk of its own
    (the caller fragments it).
    """
    chunk: list[bytes] = []
    size = 0
    for record in framed:
        if chunk and size + len(record) > limit:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(record)
        size += len(record)
    if chunk:
        yield b"".join(chunk)


def iter_records(chunk: bytes) -> Iterator[bytes]:
    """The records of a chunk made by :func:`pack_records`."""
    pos = 0
    end = len(chunk)
    unpack = _U32.unpack_from
    while pos < end:
        (n,) = unpack(chunk, pos)
        pos += 4
        yield chunk[pos : pos + n]
        pos += n


def pack_message(origin: bytes, life: int, seq: int, chunk: bytes) -> bytes:
    """A Redis message: header, then a chunk made by :func:`pack_records`."""
    return _MESSAGE.pack(_VERSION, life, seq, len(origin)) + origin + chunk


def unpack_message(data: bytes) -> tuple[str, int, int, bytes]:
    """``(origin, life, seq, chunk)`` of a message made by :func:`pack_message`."""
    version, life, seq, n_origin = _MESSAGE.unpack_from(data)
    if version != _VERSION:
        raise ValueError(f"unknown backplane message version {version}")
    start = _MESSAGE.size
    origin = data[start : start + n_origin].decode()
    return origin, life, seq, data[start + n_origin :]


def apply_records(
    apply: Callable[[Op], None], chunk: bytes, log: logging.Logger, source: str
) -> None:
    """Decode and apply each op of ``chunk``; one that fails is logged, not raised.

    The receivers' loop (relay and backplane): a bad op must never escape
    into the event loop nor stop the ops after it.
    """
    for record in iter_records(chunk):
        try:
            apply(decode_op(record))
        except Exception:
            log.exception("applying an op from %s failed", source)
