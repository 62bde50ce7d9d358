"""Hostile input: every abuse gets its error frame or close code, and nobody else
notices.

Each attack runs against a real server with a bystander connected; afterwards
the bystander still gets its echo and a broadcast, and a newcomer can still
connect (:func:`assert_unaffected`). Frames that polite clients refuse to send
go out through :class:`~tests.rawws.RawClient` or raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sanic import Sanic
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect as sync_connect

from sanic_ws_ext import CloseCode, Connection, Envelope, ErrorCode, MessageError
from sanic_ws_ext.envelope import decode_envelope, encode_envelope
from sanic_ws_ext.testing import LiveServer, WSTestClient, serve
from sanic_ws_ext.wire import ConnectionState, fragment_limit

from .conftest import units
from .helpers import ws_app
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]


# -- the app under attack, and the bystander's view ---------------------------


def hostile_app(
    make_app: AppFactory, *, binary: bool = False, **config: Any
) -> tuple[Sanic[Any, Any], asyncio.Queue[Connection]]:
    """An app that echoes and relays envelopes (and bytes, when ``binary``).

    No heartbeat: raw clients read exactly the frames their attack provokes.
    """
    app, handlers, gone = ws_app(make_app, WS_PING_INTERVAL=None, **config)

    @handlers.on("echo")
    async def echo(conn: Connection, msg: Envelope) -> None:
        await conn.send("echo", msg.data)

    @handlers.on("relay")
    async def relay(conn: Connection, msg: Envelope) -> None:
        await conn.manager.broadcast("relay", msg.data, exclude=[conn.id])

    if binary:

        @handlers.on_binary
        async def echo_bytes(conn: Connection, data: bytes) -> None:
            await conn.send(raw=data)

    return app, gone


async def assert_unaffected(server: LiveServer, bystander: WSTestClient) -> None:
    """The bystander is served, broadcasts arrive, newcomers get in."""
    await bystander.send("echo", "still here")
    assert (await bystander.expect("echo")).data == "still here"
    await server.app.ctx.ws.broadcast("news", 1)
    assert (await bystander.expect("news")).data == 1
    async with await WSTestClient.connect(server.ws_url()) as newcomer:
        await newcomer.send("echo", 2)
        assert (await newcomer.expect("echo")).data == 2


async def dropped(gone: asyncio.Queue[Connection], conn_id: str) -> Connection:
    """Wait for the connection ``conn_id`` to close on the server."""
    while True:
        conn = await asyncio.wait_for(gone.get(), units(5))
        if conn.id == conn_id:
            return conn


async def ws_client(server: LiveServer) -> tuple[WSTestClient, str]:
    """A polite client and its connection id on the server."""
    before = set(server.app.ctx.ws.connections)
    client = await WSTestClient.connect(server.ws_url())
    await client.send("echo", None)  # the server has it once it answers
    await client.expect("echo")
    (conn_id,) = set(server.app.ctx.ws.connections) - before
    return client, conn_id


async def raw_client(server: LiveServer, **kw: Any) -> tuple[RawClient, str]:
    """A raw client and its connection id on the server."""
    before = set(server.app.ctx.ws.connections)
    raw = await RawClient.connect(server.host, server.port, **kw)
    (conn_id,) = set(server.app.ctx.ws.connections) - before
    return raw, conn_id


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """Frame bytes as they are, valid or not (a zero mask key keeps the payload)."""
    n = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += struct.pack("!BH", mask_bit | 126, n)
    else:
        head += struct.pack("!BQ", mask_bit | 127, n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def _refuse_constant(name: str) -> Any:
    """For ``json.loads``: what a browser's ``JSON.parse`` would reject."""
    raise AssertionError(f"{name} is not JSON")


# -- 1. envelopes of every wrong shape -----------------------------------------

NESTED = 100_000
BAD_ENVELOPES = [
    ("", ErrorCode.INVALID_JSON),
    ("null", ErrorCode.INVALID_ENVELOPE),
    ('"echo"', ErrorCode.INVALID_ENVELOPE),
    ('{"type": ""}', ErrorCode.INVALID_ENVELOPE),
    ('{"type": null}', ErrorCode.INVALID_ENVELOPE),
    ('{"type": ["echo"]}', ErrorCode.INVALID_ENVELOPE),
    ('{"type": {"echo": 1}}', ErrorCode.INVALID_ENVELOPE),
    ('{"type": "' + "x" * 257 + '"}', ErrorCode.INVALID_ENVELOPE),
    ('{"type": "echo", "timestamp": "now"}', ErrorCode.INVALID_ENVELOPE),
    ('{"type": "echo", "timestamp": 1e400}', ErrorCode.INVALID_JSON),
    ('{"type": "echo"} trailing', ErrorCode.INVALID_JSON),
    ('{"type": "echo", "data": NaN}', ErrorCode.INVALID_JSON),
    ('{"type": "echo", "data": [1, {"x": -Infinity}]}', ErrorCode.INVALID_JSON),
    # A lone surrogate: echoed, it would fail in the handler and log an error.
    ('{"type": "echo", "data": "\\udbff"}', ErrorCode.INVALID_JSON),
    # Deep nesting: ujson stops at depth 1024 with an error; nothing recurses.
    ("[" * NESTED + "]" * NESTED, ErrorCode.INVALID_JSON),
    (
        '{"type": "echo", "data": ' + "[" * NESTED + "]" * NESTED + "}",
        ErrorCode.INVALID_JSON,
    ),
    (
        '{"type": "echo", "data": ' + '{"a": ' * NESTED + "1" + "}" * NESTED + "}",
        ErrorCode.INVALID_JSON,
    ),
    ("[" * NESTED, ErrorCode.INVALID_JSON),
]


async def test_wrong_envelopes_get_error_frames(make_app: AppFactory) -> None:
    app, _ = hostile_app(make_app)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        client = await WSTestClient.connect(server.ws_url())
        for raw, code in BAD_ENVELOPES:
            await client.send_raw(raw)
            error = await client.recv()
            assert isinstance(error, Envelope) and error.type == "error", raw[:40]
            assert error.data["code"] == code, (raw[:40], error.data)
        await client.send("echo", "after all that")
        assert (await client.expect("echo")).data == "after all that"
        await assert_unaffected(server, bystander)
        await client.close()
        await bystander.close()


async def test_data_up_to_the_size_limit_is_served(make_app: AppFactory) -> None:
    """Exactly WS_MAX_MESSAGE_SIZE bytes pass; one more closes with 1009."""
    limit = 64 * 1024
    app, _ = hostile_app(make_app, WS_MAX_MESSAGE_SIZE=limit)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        client = await WSTestClient.connect(server.ws_url())
        head, tail = '{"type": "echo", "data": "', '"}'
        body = "x" * (limit - len(head) - len(tail))
        await client.send_raw(head + body + tail)
        assert (await client.expect("echo")).data == body
        # ujson's deepest nesting (1023) decodes and encodes again.
        deep = '{"type": "echo", "data": ' + "[" * 1022 + "]" * 1022 + "}"
        await client.send_raw(deep)
        echoed = await client.expect("echo")
        assert ujson.dumps(echoed.data) == "[" * 1022 + "]" * 1022
        await client.send_raw(head + body + "x" + tail)
        assert (await client.wait_closed())[0] == 1009
        await assert_unaffected(server, bystander)
        await bystander.close()


async def test_non_finite_numbers_never_reach_other_clients(
    make_app: AppFactory,
) -> None:
    """ujson reads 1e400 as infinity: refused on arrival, it never reaches a
    handler that would relay it."""
    app, _ = hostile_app(make_app)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        client = await WSTestClient.connect(server.ws_url())
        await client.send_raw('{"type": "relay", "data": [1e400]}')
        error = await client.expect("error")
        assert error.data["code"] == ErrorCode.INVALID_JSON
        await client.send("relay", "fine")
        # The bystander's next frame is the valid relay: strict JSON, no Infinity.
        frame = await asyncio.wait_for(bystander.connection.recv(), units(5))
        assert json.loads(frame, parse_constant=_refuse_constant)["data"] == "fine"
        await assert_unaffected(server, bystander)
        await client.close()
        await bystander.close()


# -- 2. invalid UTF-8 and oversized messages -------------------------------------


async def test_invalid_utf8_in_fragments_closes_1007(make_app: AppFactory) -> None:
    app, gone = hostile_app(make_app)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        # A euro sign split between fragments is fine.
        raw, _ = await raw_client(server)
        raw.send_frame(Opcode.TEXT, b'{"type": "echo", "data": "\xe2\x82', fin=False)
        raw.send_frame(Opcode.CONT, b'\xac"}')
        assert b'"data":"\xe2\x82\xac"' in (await raw.read_frame()).data
        raw.close_socket()
        # A bad byte fails the connection at once: the message never ends.
        for first, rest in [
            (b'{"type": "echo", "data": "\xff', None),
            (b'{"type": "echo", "data": "\xe2\x82', b'("}'),  # bad continuation
            (b'{"type": "echo", "data": "\xe2\x82', b""),  # ends mid-character
        ]:
            raw, conn_id = await raw_client(server)
            raw.send_frame(Opcode.TEXT, first, fin=False)
            if rest is not None:
                raw.send_frame(Opcode.CONT, rest)
            close, before = await raw.read_until_close()
            assert (close.code, close.reason, before) == (1007, "invalid UTF-8", [])
            conn = await dropped(gone, conn_id)
            assert (conn.close_code, conn.close_reason) == (1007, "invalid UTF-8")
            raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


async def test_fragments_over_the_size_limit_close_1009(make_app: AppFactory) -> None:
    app, gone = hostile_app(make_app, WS_MAX_MESSAGE_SIZE=1024)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        raw, conn_id = await raw_client(server)
        raw.send_frame(Opcode.BINARY, b"x" * 300, fin=False)
        for _ in range(3):
            raw.send_frame(Opcode.CONT, b"x" * 300, fin=False)
        close, _ = await raw.read_until_close()
        assert close.code == 1009
        assert (await dropped(gone, conn_id)).close_code == 1009
        raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


@pytest.mark.parametrize("length", [(1 << 20) + 1, 1 << 40, (1 << 63) - 1])
async def test_announced_huge_frame_closes_1009_at_once(
    make_app: AppFactory, length: int
) -> None:
    """The header alone is refused: the server neither waits nor buffers."""
    app, gone = hostile_app(make_app)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        raw, conn_id = await raw_client(server)
        raw.writer.write(raw_frame(Opcode.TEXT.value, length=length))
        close, _ = await raw.read_until_close(units(2))
        assert close.code == 1009
        conn = await dropped(gone, conn_id)
        assert conn.close_code == 1009
        raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


# -- 3. frame kinds the app does not accept --------------------------------------


@pytest.mark.parametrize(
    ("accept", "refused", "served"),
    [(["text"], Opcode.BINARY, Opcode.TEXT), ("binary", Opcode.TEXT, Opcode.BINARY)],
)
async def test_frame_kind_not_accepted_closes_1003(
    make_app: AppFactory, accept: Any, refused: Opcode, served: Opcode
) -> None:
    app, gone = hostile_app(make_app, binary=True, WS_ACCEPT=accept)
    kind = "text" if refused is Opcode.TEXT else "binary"
    payloads = {Opcode.TEXT: b'{"type": "echo", "data": 1}', Opcode.BINARY: b"\x01"}
    async with serve(app) as server:
        bystander = await RawClient.connect(server.host, server.port)
        # The accepted kind is served...
        bystander.send_frame(served, payloads[served])
        assert (await bystander.read_frame()).opcode is served
        # ...the other closes with 1003, refused at its first fragment.
        for fin in (True, False):
            raw, conn_id = await raw_client(server)
            raw.send_frame(refused, payloads[refused], fin=fin)
            close, before = await raw.read_until_close()
            assert (close.code, close.reason) == (
                1003,
                f"{kind} frames are not accepted",
            )
            assert before == []
            conn = await dropped(gone, conn_id)
            assert (conn.close_code, conn.close_reason) == (close.code, close.reason)
            raw.close_socket()
        bystander.send_frame(served, payloads[served])
        assert (await bystander.read_frame()).opcode is served
        await app.ctx.ws.broadcast(raw=b"news")
        assert (await bystander.read_frame()).data == b"news"
        async with await WSTestClient.connect(server.ws_url()):
            pass
        bystander.close_socket()


# -- 4. floods ---------------------------------------------------------------------


async def test_fragment_count_is_bounded(make_app: AppFactory) -> None:
    """Empty continuation frames would keep a message open forever: 1009."""
    app, gone = hostile_app(make_app, WS_MAX_MESSAGE_SIZE=1024)
    limit = fragment_limit(1024)
    assert limit == 16
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        # As many fragments as the limit: reassembled and served.
        raw, _ = await raw_client(server)
        parts = [b'{"type": "echo", "data": "', *[b"x"] * (limit - 2), b'"}']
        raw.send_frame(Opcode.TEXT, parts[0], fin=False)
        for i, part in enumerate(parts[1:], 2):
            raw.send_frame(Opcode.CONT, part, fin=i == limit)
        assert b'"data":"' + b"x" * (limit - 2) + b'"' in (await raw.read_frame()).data
        raw.close_socket()
        # 100k empty fragments: closed once past the limit.
        raw, conn_id = await raw_client(server)
        raw.send_frame(Opcode.TEXT, b"", fin=False)
        raw.writer.write(raw_frame(Opcode.CONT.value, fin=False) * 100_000)
        close, _ = await raw.read_until_close()
        assert (close.code, close.reason) == (1009, "too many fragments")
        assert (await dropped(gone, conn_id)).close_code == 1009
        raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


async def test_default_fragment_limit_stops_a_flood_quickly(
    make_app: AppFactory,
) -> None:
    app, gone = hostile_app(make_app)
    limit = fragment_limit(1 << 20)
    assert limit == 16384
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        raw, conn_id = await raw_client(server)
        raw.send_frame(Opcode.BINARY, b"x", fin=False)
        one_byte = raw_frame(Opcode.CONT.value, b"x", fin=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw.writer.write(one_byte * 100_000)
        close, _ = await raw.read_until_close()
        assert (close.code, close.reason) == (1009, "too many fragments")
        assert loop.time() - started < units(2)
        assert (await dropped(gone, conn_id)).close_code == 1009
        raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


async def test_ping_flood_from_a_client_that_never_reads(
    make_app: AppFactory,
) -> None:
    """Pongs count against WS_MAX_BACKPRESSURE like any frame: 1008, dropped."""
    limit = 64 * 1024
    app, gone = hostile_app(make_app, WS_MAX_BACKPRESSURE=limit)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        raw, conn_id = await raw_client(server, rcvbuf=4096)
        conn = app.ctx.ws.get(conn_id)
        assert conn is not None
        ping = raw_frame(Opcode.PING.value, b"p" * 125)
        peak = 0

        async def flood() -> None:
            nonlocal peak
            for _ in range(4000):  # 4000 x 100 pings: ~50 MB, far past the bound
                raw.writer.write(ping * 100)
                await raw.writer.drain()
                if conn.state is ConnectionState.OPEN:
                    peak = max(peak, conn.backlog)

        flooding = asyncio.create_task(flood())
        closed = await dropped(gone, conn_id)
        assert (closed.close_code, closed.close_reason) == (1008, "slow consumer")
        with pytest.raises(OSError):
            await flooding  # the server reset the socket
        assert peak <= limit
        raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


async def test_ping_flood_from_a_reading_client_gets_every_pong(
    make_app: AppFactory,
) -> None:
    app, _ = hostile_app(make_app)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        raw, _ = await raw_client(server)
        n = 5000
        raw.writer.write(
            b"".join(raw_frame(Opcode.PING.value, b"%d" % i) for i in range(n))
        )
        for i in range(n):
            frame = await raw.read_frame()
            assert (frame.opcode, frame.data) == (Opcode.PONG, b"%d" % i)
        raw.send_frame(Opcode.TEXT, b'{"type": "echo", "data": "done"}')
        assert b'"done"' in (await raw.read_frame()).data
        raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


async def test_unsolicited_pongs_are_ignored(make_app: AppFactory) -> None:
    app, _ = hostile_app(make_app)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        raw, conn_id = await raw_client(server)
        raw.writer.write(raw_frame(Opcode.PONG.value, b"unasked") * 10_000)
        raw.send_frame(Opcode.TEXT, b'{"type": "echo", "data": "next"}')
        # Nothing answers the pongs: the next frame is the echo.
        frame = await raw.read_frame()
        assert frame.opcode is Opcode.TEXT and b'"next"' in frame.data
        assert app.ctx.ws.get(conn_id) is not None
        raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


# -- 5. the handshake ---------------------------------------------------------------


async def raw_http(server: LiveServer, head: bytes, timeout: float) -> bytes:
    """Send ``head`` on a new socket and read until the server closes it."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
        await writer.wait_closed()


def upgrade_head(changes: dict[str, str | None] | None = None) -> bytes:
    """A valid upgrade request head, with headers changed (``None``: removed)."""
    fields: dict[str, str | None] = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **(changes or {}),
    }
    lines = [
        "GET /ws HTTP/1.1",
        *(f"{k}: {v}" for k, v in fields.items() if v is not None),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"Sec-WebSocket-Key": None}, 400),
        ({"Sec-WebSocket-Key": "not base64!"}, 400),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400),  # 5 bytes, not 16
        ({"Sec-WebSocket-Version": None}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Version": "13, 8"}, 426),
        ({"Upgrade": None}, 426),
    ],
)
async def test_bad_upgrade_requests_are_refused(
    make_app: AppFactory, changes: dict[str, str | None], status: int
) -> None:
    app, _ = hostile_app(make_app, KEEP_ALIVE=False)
    async with serve(app) as server:
        response = await raw_http(server, upgrade_head(changes), units(5))
        status_line, _, rest = response.partition(b"\r\n")
        assert status_line.split(b" ")[1] == str(status).encode(), response
        if changes.get("Sec-WebSocket-Version"):
            # RFC 6455, 4.4: tell the client which version to speak.
            assert b"sec-websocket-version: 13" in rest.lower()
        assert not app.ctx.ws.connections
        async with await WSTestClient.connect(server.ws_url()) as client:
            await client.send("echo", 1)
            assert (await client.expect("echo")).data == 1


async def test_a_handshake_that_never_completes_times_out(
    make_app: AppFactory,
) -> None:
    """Sanic's timeouts drop sockets that never finish their request head.

    REQUEST_TIMEOUT counts from the last byte received, so a client dribbling
    bytes keeps its socket meanwhile (docs/reference/protocol.md).
    """
    timeout = units(0.2)
    app, _ = hostile_app(make_app, REQUEST_TIMEOUT=timeout, KEEP_ALIVE_TIMEOUT=timeout)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        head = upgrade_head()
        loop = asyncio.get_running_loop()
        # Half a head, then silence: 408.
        started = loop.time()
        response = await raw_http(server, head[:40], units(5))
        assert response.startswith(b"HTTP/1.1 408"), response
        assert loop.time() - started < units(2)
        # A few bytes at a time for three timeouts: still waiting, then 408.
        reader, writer = await asyncio.open_connection(server.host, server.port)
        answer = asyncio.ensure_future(reader.read(-1))
        for i in range(0, 60, 5):
            writer.write(head[i : i + 5])
            await asyncio.sleep(timeout / 4)  # pacing the attack, not waiting on it
        assert not answer.done()
        response = await asyncio.wait_for(answer, units(5))
        assert response.startswith(b"HTTP/1.1 408"), response
        writer.close()
        await writer.wait_closed()
        # A socket that never sends a byte: KEEP_ALIVE_TIMEOUT drops it.
        reader, writer = await asyncio.open_connection(server.host, server.port)
        assert await asyncio.wait_for(reader.read(-1), units(5)) == b""
        writer.close()
        await writer.wait_closed()
        assert len(app.ctx.ws.connections) == 1
        await assert_unaffected(server, bystander)
        await bystander.close()


# -- protocol violations ------------------------------------------------------------

PROTOCOL_ERRORS = {
    "unmasked": raw_frame(Opcode.TEXT.value, b"{}", masked=False),
    "rsv1 without extension": raw_frame(Opcode.TEXT.value, b"{}", rsv=0x40),
    "reserved opcode": raw_frame(0x3, b""),
    "control frame too long": raw_frame(Opcode.PING.value, b"x" * 126),
    "fragmented ping": raw_frame(Opcode.PING.value, b"", fin=False),
    "continuation first": raw_frame(Opcode.CONT.value, b"x"),
    "new message inside a fragmented one": (
        raw_frame(Opcode.TEXT.value, b"{", fin=False) + raw_frame(Opcode.TEXT.value)
    ),
    "close frame of one byte": raw_frame(Opcode.CLOSE.value, b"\x03"),
    "close code 999": raw_frame(Opcode.CLOSE.value, struct.pack("!H", 999)),
}


async def test_protocol_violations_close_1002(make_app: AppFactory) -> None:
    app, gone = hostile_app(make_app)
    async with serve(app) as server:
        bystander = await WSTestClient.connect(server.ws_url())
        for name, data in PROTOCOL_ERRORS.items():
            raw, conn_id = await raw_client(server)
            raw.writer.write(data)
            close, _ = await raw.read_until_close()
            assert close.code == 1002, name
            assert (await dropped(gone, conn_id)).close_code == 1002, name
            raw.close_socket()
        await assert_unaffected(server, bystander)
        await bystander.close()


# -- 6. properties and fuzzing ------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5)
    ),
    max_leaves=30,
)
TYPES = st.text(min_size=1, max_size=256)


@settings(max_examples=300, deadline=None, database=None)
@given(type_=TYPES, data=JSON)
def test_codec_round_trip(type_: str, data: Any) -> None:
    envelope = decode_envelope(encode_envelope(type_, data).decode())
    assert (envelope.type, envelope.data) == (type_, data)


def _mutations(draw: st.DrawFn) -> str:
    """Envelope-like text: valid JSON, cut short, spliced or with junk inserted."""
    text = ujson.dumps(draw(st.dictionaries(st.sampled_from(["type", "data"]), JSON)))
    cut = draw(st.integers(0, len(text)))
    junk = draw(st.text(max_size=5) | st.sampled_from(["NaN", "Infinity", "[", "{"]))
    return draw(st.sampled_from([text, text[:cut], text[:cut] + junk + text[cut:]]))


ANY_TEXT = st.text() | st.composite(_mutations)()


@settings(max_examples=300, deadline=None, database=None)
@given(text=ANY_TEXT)
def test_decode_raises_only_its_own_error(text: str) -> None:
    try:
        envelope = decode_envelope(text)
    except MessageError as exc:
        assert exc.code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_ENVELOPE)
    else:
        assert isinstance(envelope.type, str) and envelope.type


async def test_any_message_is_answered_and_breaks_nothing(
    make_app: AppFactory,
) -> None:
    """Arbitrary text and binary messages: each gets its answer, in order."""
    app, gone = hostile_app(make_app, binary=True)
    async with serve(app) as server:
        bystander, bystander_id = await ws_client(server)
        url = server.ws_url()
        opened = 0

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(message=ANY_TEXT | st.binary())
        def exchange(message: str | bytes) -> None:
            nonlocal opened
            opened += 1
            with sync_connect(url, max_size=None) as client:
                client.send(message)
                client.send('{"type": "echo", "data": "probe"}')
                answers = []
                while True:
                    answer = client.recv(timeout=units(5))
                    if isinstance(answer, bytes):
                        answers.append(answer)
                        continue
                    obj = json.loads(answer, parse_constant=_refuse_constant)
                    if obj == {**obj, "type": "echo", "data": "probe"}:
                        break
                    answers.append(obj)
                # One answer per message: an echo, the bytes, or an error frame.
                assert len(answers) <= 1, answers

        await asyncio.to_thread(exchange)
        for _ in range(opened):
            assert (await asyncio.wait_for(gone.get(), units(5))).close_code == 1000
        assert list(app.ctx.ws.connections) == [bystander_id]
        await assert_unaffected(server, bystander)
        await bystander.close()
        await dropped(gone, bystander_id)
        assert not app.ctx.ws.connections


def _fuzz_cases(rng: random.Random, n: int) -> list[bytes]:
    """Random bytes, and valid frame sequences with bytes flipped, cut or doubled."""
    valid = [
        Frame(Opcode.TEXT, b'{"type": "echo", "data": [1, 2]}').serialize(mask=True),
        Frame(Opcode.BINARY, bytes(range(40))).serialize(mask=True),
        Frame(Opcode.PING, b"ping").serialize(mask=True),
        Frame(Opcode.TEXT, b'{"type": "ec', fin=False).serialize(mask=True)
        + Frame(Opcode.CONT, b'ho"}').serialize(mask=True),
        raw_frame(Opcode.TEXT.value, b'{"type": "echo"}'),
    ]
    cases = []
    for _ in range(n):
        if rng.random() < 0.3:
            cases.append(rng.randbytes(rng.randint(1, 300)))
            continue
        data = bytearray(b"".join(rng.choices(valid, k=rng.randint(1, 4))))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            what = rng.random()
            if what < 0.6:
                data[at] = rng.randrange(256)
            elif what < 0.8:
                del data[at:]
                if not data:
                    data.append(rng.randrange(256))
            else:
                data[at:at] = data[at : at + rng.randint(1, 16)]
        cases.append(bytes(data))
    return cases


async def test_fuzzed_frames_leave_the_server_serving(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Random and mutated frames on real sockets; then the server is as before."""
    app, gone = hostile_app(make_app, binary=True, WS_MAX_MESSAGE_SIZE=4096)
    cases = _fuzz_cases(random.Random(7), 300)
    async with serve(app) as server:
        bystander, bystander_id = await ws_client(server)

        async def attack(data: bytes) -> None:
            raw = await RawClient.connect(server.host, server.port)
            raw.writer.write(data)
            raw.writer.write_eof()
            # The server answers what it can, then closes: read to the end.
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                while True:
                    await raw.read_frame()
            raw.close_socket()

        for start in range(0, len(cases), 25):
            await asyncio.gather(*(attack(d) for d in cases[start : start + 25]))
        codes = Counter(
            [(await asyncio.wait_for(gone.get(), units(5))).close_code for _ in cases]
        )
        # Each attack ended in a verdict on the peer, never in a server error.
        assert CloseCode.INTERNAL_ERROR not in codes
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert list(app.ctx.ws.connections) == [bystander_id]
        await assert_unaffected(server, bystander)
        await bystander.close()
        await dropped(gone, bystander_id)
        assert not app.ctx.ws.connections
