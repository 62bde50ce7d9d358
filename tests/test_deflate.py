"""permessage-deflate (issue 22): compressed once per broadcast, inflated
with a bound. Pure parts first, then a real server against websockets'
client (which offers the extension by default) and a raw socket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from sanic import Sanic
from websockets.frames import Opcode

from sanic_ws_ext import Connection, Envelope
from sanic_ws_ext.deflate import Deflater, Inflater
from sanic_ws_ext.frames import OP_CONT, OP_PING, OP_TEXT, RSV1, FrameReader
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import until, ws_app

AppFactory = Callable[..., Sanic[Any, Any]]

TAIL = b"\x00\x00\xff\xff"
#: A chat-like message that compresses well.
BIG = {"text": "the quick brown fox jumps over the lazy dog " * 40}


def inflate(data: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(-bits).decompress(data + TAIL)


def payload_of(frame: bytes) -> bytes:
    """A server frame's payload (server frames are not masked)."""
    length = frame[1] & 0x7F
    return frame[2 if length < 126 else 4 if length == 126 else 10 :]


def deflate(data: bytes) -> bytes:
    encoder = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]


def masked(first: int, payload: bytes) -> bytes:
    """A client frame: ``first`` is FIN | RSV | opcode."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


# -- pure ---------------------------------------------------------------------------


def test_a_frame_is_compressed_once_for_every_receiver() -> None:
    deflater = Deflater(6, 256)
    body = json.dumps(BIG).encode()
    frame = bytes((0x80 | OP_TEXT, 126)) + struct.pack("!H", len(body)) + body
    first = deflater.frame(frame, 15)
    assert first is deflater.frame(frame, 15)  # the same object: compressed once
    assert first[0] == 0x80 | RSV1 | OP_TEXT and len(first) < len(frame) // 4
    assert inflate(payload_of(first)) == body
    # Each message stands alone (no context takeover): the same message
    # again compresses to the same bytes, which a fresh inflater reads.
    again = frame[:1] + frame[1:]  # an equal frame, another object
    assert again is not frame
    second = deflater.frame(again, 15)
    assert second is not first and second == first
    # A smaller window asked for by a client gets frames of its own.
    small = deflater.frame(again, 10)
    assert (
        small is not second
        and inflate(small[2:] if small[1] < 126 else small[4:], 10) == body
    )


def test_small_and_incompressible_frames_go_as_they_are() -> None:
    deflater = Deflater(6, 256)
    short = bytes((0x80 | OP_TEXT, 5)) + b"hello"
    assert deflater.frame(short, 15) is short
    noise = os.urandom(2000)
    frame = bytes((0x82, 126)) + struct.pack("!H", len(noise)) + noise
    assert deflater.frame(frame, 15) is frame


def test_inflating_stops_at_the_bound() -> None:
    bomb = deflate(b"\x00" * (16 << 20))  # 16 MB of zeros: ~16 KB compressed
    assert len(bomb) < 64 << 10
    with pytest.raises(Exception) as caught:
        Inflater(1 << 20).feed(bomb, True)
    assert getattr(caught.value, "code", None) == 1009
    with pytest.raises(Exception) as caught:
        Inflater(1 << 20).feed(b"\xff\xfe garbage \x00", True)
    assert getattr(caught.value, "code", None) == 1007
    # Fragment by fragment, the bound is the whole message's.
    data = deflate(b"a" * 3000)
    inflater = Inflater(2500)
    with pytest.raises(Exception) as caught:
        for i in range(0, len(data), 4):
            inflater.feed(data[i : i + 4], i + 4 >= len(data))
    assert getattr(caught.value, "code", None) == 1009
    ok = Inflater(3000)
    out = b"".join(
        ok.feed(data[i : i + 4], i + 4 >= len(data)) for i in range(0, len(data), 4)
    )
    assert out == b"a" * 3000


def test_the_reader_takes_rsv1_only_where_it_may_be() -> None:
    frame = masked(0x80 | 0x40 | OP_TEXT, b"x")
    off = FrameReader(None)
    assert off.feed(frame) == [] and off.error is not None and off.error.code == 1002
    on = FrameReader(None)
    on.compressed = True
    assert on.feed(frame) == [(OP_TEXT | RSV1, True, b"x")]
    for first in (0x80 | 0x40 | OP_PING, 0x20 | OP_TEXT):  # control frame; RSV2
        reader = FrameReader(None)
        reader.compressed = True
        reader.feed(first.to_bytes(1, "big") + masked(0, b"")[1:])
        assert reader.error is not None and reader.error.code == 1002
    reader = FrameReader(None)
    reader.compressed = True
    reader.feed(masked(0x40 | OP_TEXT, b"a") + masked(0x80 | 0x40 | OP_CONT, b"b"))
    assert reader.error is not None and reader.error.code == 1002


# -- a real server ----------------------------------------------------------------


def compressing_app(
    make_app: AppFactory, **config: Any
) -> tuple[Sanic[Any, Any], asyncio.Queue[Connection]]:
    app, handlers, gone = ws_app(
        make_app, WS_COMPRESSION=True, WS_PING_INTERVAL=None, **config
    )

    @handlers.on("echo")
    async def echo(conn: Connection, msg: Envelope) -> None:
        await conn.send("echo", msg.data)

    @handlers.on("shout")
    async def shout(conn: Connection, msg: Envelope) -> None:
        await conn.manager.broadcast("shout", msg.data)

    return app, gone


async def raw_connect(host: str, port: int, offer: str | None) -> Any:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), units(5))
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer, head.decode().lower()


async def read_raw(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame: its first byte and its payload."""
    head = await asyncio.wait_for(reader.readexactly(2), units(5))
    length = head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return head[0], await asyncio.wait_for(reader.readexactly(length), units(5))


async def next_message(reader: asyncio.StreamReader, bits: int = 15) -> Any:
    """The next data message, inflated when it came compressed."""
    while True:
        first, payload = await read_raw(reader)
        if first & 0x0F in (1, 2):
            return json.loads(inflate(payload, bits) if first & RSV1 else payload)


async def test_one_broadcast_reaches_compressing_and_plain_clients(
    make_app: AppFactory,
) -> None:
    app, _ = compressing_app(make_app)
    async with serve(app) as server:
        reader, writer, head = await raw_connect(
            server.host, server.port, "permessage-deflate; client_max_window_bits"
        )
        assert "permessage-deflate" in head
        assert "server_no_context_takeover" in head
        assert "client_no_context_takeover" in head
        small, small_writer, small_head = await raw_connect(
            server.host, server.port, "permessage-deflate; server_max_window_bits=10"
        )
        assert "server_max_window_bits=10" in small_head
        plain, plain_writer, plain_head = await raw_connect(
            server.host, server.port, None
        )
        assert "permessage-deflate" not in plain_head
        async with await WSTestClient.connect(server.ws_url()) as sender:
            await until(lambda: len(app.ctx.ws.connections) == 4)
            await sender.send("shout", BIG)
            for r, bits in ((reader, 15), (small, 10), (plain, 15)):
                got = await next_message(r, bits)
                assert got["type"] == "shout" and got["data"] == BIG
            # On the wire: compressed for the first two, plain for the last.
            await sender.send("shout", BIG)
            first, payload = await read_raw(reader)
            assert first & RSV1 and len(payload) < len(json.dumps(BIG)) // 4
            first, _ = await read_raw(small)
            assert first & RSV1
            first, _ = await read_raw(plain)
            assert not first & RSV1
        for w in (writer, small_writer, plain_writer):
            w.transport.abort()


async def test_compressed_messages_from_a_client_are_read(
    make_app: AppFactory,
) -> None:
    app, _ = compressing_app(make_app)
    async with (
        serve(app) as server,
        websockets.connect(server.ws_url(), compression="deflate") as ws,
    ):
        assert ws.response is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in extensions
        for n in range(3):  # each message inflated on its own
            body = {"n": n, **BIG}
            await ws.send(json.dumps({"type": "echo", "data": body}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), units(5)))
            assert reply["type"] == "echo" and reply["data"] == body
        # A fragmented compressed message.
        text = json.dumps({"type": "echo", "data": BIG})
        await ws.send([text[:100], text[100:1000], text[1000:]])
        reply = json.loads(await asyncio.wait_for(ws.recv(), units(5)))
        assert reply["data"] == BIG


async def test_a_decompression_bomb_closes_1009_and_nothing_else_breaks(
    make_app: AppFactory,
) -> None:
    app, gone = compressing_app(make_app, WS_MAX_MESSAGE_SIZE=64 << 10)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as bystander,
    ):
        reader, writer, _ = await raw_connect(
            server.host, server.port, "permessage-deflate"
        )
        bomb = deflate(b"[" * (8 << 20))  # 8 MB inflated, ~8 KB on the wire
        writer.write(masked(0x80 | 0x40 | OP_TEXT, bomb))
        code = None
        while code is None:
            first, payload = await read_raw(reader)
            if first & 0x0F == Opcode.CLOSE:
                code = int.from_bytes(payload[:2], "big")
        assert code == 1009
        closed = await asyncio.wait_for(gone.get(), units(5))
        assert closed.close_code == 1009
        writer.transport.abort()
        # Invalid compressed data: 1007.
        reader, writer, _ = await raw_connect(
            server.host, server.port, "permessage-deflate"
        )
        writer.write(masked(0x80 | 0x40 | OP_TEXT, b"\xff\xff\xff\xff"))
        first, payload = await read_raw(reader)
        while first & 0x0F != Opcode.CLOSE:
            first, payload = await read_raw(reader)
        assert int.from_bytes(payload[:2], "big") == 1007
        writer.transport.abort()
        # The server and the other client are fine.
        await bystander.send("echo", {"still": "here"})
        reply = await bystander.recv(units(5))
        assert not isinstance(reply, bytes) and reply.data == {"still": "here"}


async def test_compression_is_off_unless_asked_for(make_app: AppFactory) -> None:
    app, _, _ = ws_app(make_app, WS_PING_INTERVAL=None)
    async with serve(app) as server:
        _, writer, head = await raw_connect(
            server.host, server.port, "permessage-deflate"
        )
        assert "sec-websocket-extensions" not in head
        writer.transport.abort()


async def test_node_ws_and_websockets_clients_with_and_without_compression(
    make_app: AppFactory,
) -> None:
    """Clients as people run them: Node's ws and Python's websockets, each with
    compression on and off, against one compressing server."""
    app, _ = compressing_app(make_app)
    script = Path(__file__).parent / "interop" / "ws_deflate_client.mjs"
    async with serve(app) as server:
        for mode in ("on", "off"):
            node = await asyncio.create_subprocess_exec(
                "node", str(script), server.ws_url(), mode,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(node.communicate(), units(30))
            assert node.returncode == 0, err.decode()
            result = json.loads(out)
            assert result["echoed"] is True
            assert ("permessage-deflate" in result["extensions"]) == (mode == "on")
        for compression in ("deflate", None):
            async with websockets.connect(
                server.ws_url(), compression=compression
            ) as ws:
                await ws.send(json.dumps({"type": "echo", "data": BIG}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), units(5)))
                assert reply["data"] == BIG
        counters = app.ctx.ws._counters
        # Node's ws and websockets compressed theirs; ours went back compressed.
        assert counters.compressed_in >= 2 and counters.compressed_out >= 2


async def test_chromium_negotiates_and_reads_compressed_broadcasts(
    make_app: AppFactory,
) -> None:
    from sanic import html

    from .test_browser import chromium

    app, _ = compressing_app(make_app)

    @app.get("/")
    async def blank(request: Any) -> Any:
        return html("<!doctype html><title>deflate</title>")

    async with serve(app) as server, chromium() as browser:
        page = await browser.new_page()
        await page.goto(server.url("/"))
        before = app.ctx.ws._counters.compressed_out
        result = await page.evaluate(
            """async (big) => {
                const ws = new WebSocket(location.origin.replace("http", "ws") + "/ws");
                const got = [];
                await new Promise((resolve, reject) => {
                    ws.onopen = resolve;
                    ws.onerror = reject;
                });
                const done = new Promise((resolve) => {
                    ws.onmessage = (event) => {
                        const message = JSON.parse(event.data);
                        if (message.type === "shout") got.push(message.data);
                        if (got.length === 2) resolve();
                    };
                });
                ws.send(JSON.stringify({ type: "shout", data: big }));
                ws.send(JSON.stringify({ type: "shout", data: { small: 1 } }));
                await done;
                ws.close();
                return { extensions: ws.extensions, got };
            }""",
            BIG,
        )
    assert "permessage-deflate" in result["extensions"]
    assert result["got"] == [BIG, {"small": 1}]
    counters = app.ctx.ws._counters
    assert counters.compressed_in >= 1  # Chromium compresses what it sends
    assert counters.compressed_out - before == 1  # the big one; the small went plain
