"""Connections between messages share one frame reader (WireHost.reader).

An idle connection holds no reader of its own (one object less per
connection in every full garbage collection); a connection with part of a
frame, or of a fragmented message, in keeps the reader it got. Interleaved
partial frames and fragments from several clients must still each arrive
whole, each to its own handler call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sanic import Sanic
from websockets.frames import Frame, Opcode

from sanic_ws_ext import Connection, Envelope
from sanic_ws_ext.testing import serve

from .helpers import until, ws_app
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]


def message(text: str) -> bytes:
    return json.dumps({"type": "echo", "data": text}).encode()


def masked(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


async def echoed(client: RawClient) -> Any:
    frame = await client.read_frame()
    return json.loads(bytes(frame.data))["data"]


async def test_partial_frames_and_fragments_from_many_clients_each_arrive_whole(
    make_app: AppFactory,
) -> None:
    app, handlers, _ = ws_app(make_app, WS_PING_INTERVAL=None)

    @handlers.on("echo")
    async def echo(conn: Connection, msg: Envelope) -> None:
        await conn.send("echo", msg.data)

    async with serve(app) as server:
        ws = app.ctx.ws
        a = await RawClient.connect(server.host, server.port)
        b = await RawClient.connect(server.host, server.port)
        await until(lambda: len(ws.connections) == 2)
        wire_a, wire_b = (ws.get(i)._wire for i in ws.connections)
        assert wire_a._reader is None and wire_b._reader is None

        # A's frame in two halves, B's whole one between them.
        first = masked(Opcode.TEXT, message("from a"))
        a.writer.write(first[:7])
        await until(lambda: wire_a._reader is not None)
        b.writer.write(masked(Opcode.TEXT, message("from b")))
        assert await echoed(b) == "from b"
        assert wire_b._reader is None  # lent the shared reader, gave it back
        a.writer.write(first[7:])
        assert await echoed(a) == "from a"
        await until(lambda: wire_a._reader is None)

        # A fragmented message from B, A's whole messages in between.
        whole = message("fragmented, from b")
        b.writer.write(masked(Opcode.TEXT, whole[:10], fin=False))
        await until(lambda: wire_b._reader is not None)
        for i in range(3):
            a.writer.write(masked(Opcode.TEXT, message(f"a{i}")))
            assert await echoed(a) == f"a{i}"
        b.writer.write(masked(Opcode.CONT, whole[10:], fin=True))
        assert await echoed(b) == "fragmented, from b"
        await until(lambda: wire_b._reader is None)

        # A broken frame fails only its own connection.
        a.writer.write(bytes([0x81, 0x05]) + b"hello")  # unmasked: 1002
        close, _ = await a.read_until_close()
        assert close.code == 1002
        b.writer.write(masked(Opcode.TEXT, message("still here")))
        assert await echoed(b) == "still here"
        a.close_socket()
        b.close_socket()


async def test_a_backlog_of_small_and_large_frames_goes_out_whole_and_in_order(
    make_app: AppFactory,
) -> None:
    """A reader that stopped for a while holds small frames and frames larger
    than one write (64 KiB) one after another; each flush writes one chunk
    across them, cutting the frame that crosses it, and the reader gets every
    frame whole and in order once it reads again."""
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        ws = app.ctx.ws
        reader = await RawClient.connect(server.host, server.port, rcvbuf=4096)
        await until(lambda: len(ws.connections) == 1)
        (conn_id,) = ws.connections
        sizes = [10, 300_000, 20, 30, 100_000, 40, 70_000, 65_000, 50]
        for i, size in enumerate(sizes):
            await ws.send(conn_id, "part", {"i": i, "body": "y" * size})
        for i, size in enumerate(sizes):
            frame = await reader.read_frame()
            data = json.loads(bytes(frame.data))["data"]
            assert (data["i"], len(data["body"])) == (i, size)
        reader.close_socket()
