"""The relay's op codec and record packing, without sockets."""

from __future__ import annotations

import pytest

from sanic_ws_ext.delivery import Op, OpKind
from sanic_ws_ext.delivery.wire import (
    decode_op,
    encode_op,
    frame_record,
    iter_records,
    pack_records,
)


@pytest.mark.parametrize(
    "op",
    [
        Op(OpKind.BROADCAST, b'{"type":"t"}', origin="Sanic-Server-0-0"),
        Op(OpKind.SEND, b"\x00\xff", True, "conn-id", code=1000),
        Op(OpKind.ROOM_SEND, "ü".encode(), False, "room ü", frozenset({"a", "bé"})),
        Op(OpKind.DISCONNECT, target="x", code=4000, reason="kicked ü", origin="w"),
        Op(OpKind.SYNC, b"[]", reason="request", origin="Sanic-Server-3-0"),
    ],
)
def test_roundtrip(op: Op) -> None:
    assert decode_op(encode_op(op)) == op


def test_every_kind_roundtrips() -> None:
    for kind in OpKind:
        assert decode_op(encode_op(Op(kind, b"p", origin="o"))).kind is kind


def test_field_too_long_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_op(Op(OpKind.SEND, target="x" * 70_000))


def test_pack_and_iter_keep_order_and_limit() -> None:
    records = [bytes([i]) * (i * 37 % 500 + 1) for i in range(200)]
    chunks = list(pack_records([frame_record(r) for r in records], 2048))
    assert all(len(c) <= 2048 for c in chunks)
    assert [r for c in chunks for r in iter_records(c)] == records


def test_oversized_record_gets_its_own_chunk() -> None:
    big = b"x" * 5000
    chunks = list(
        pack_records([frame_record(b"a"), frame_record(big), frame_record(b"b")], 1024)
    )
    assert [list(iter_records(c)) for c in chunks] == [[b"a"], [big], [b"b"]]
