"""The backplane's own RESP path (sanic_ws_ext.delivery.resp), on a real Redis.

The parser is fed the bytes a private ``redis-server`` actually sent (read
off a raw socket up to a ``PING <marker>`` sent last), cut at every byte
boundary; the connections are run against it, faults included.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from sanic_ws_ext.delivery.redislink import client
from sanic_ws_ext.delivery.resp import (
    Hooks,
    Moved,
    Publisher,
    Push,
    PyPublisher,
    PySubscriber,
    Replies,
    ReplyError,
    Subscriber,
    _error,
    command,
)

from .conftest import units
from .redisproc import RedisServer


@asynccontextmanager
async def raw_socket(port: int) -> AsyncIterator[Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def said(*commands: Sequence[bytes | str | int]) -> bytes:
        """What Redis answered ``commands``, up to and with a PING's answer."""
        marker = os.urandom(8).hex().encode()
        writer.write(b"".join(command(*c) for c in [*commands, ("PING", marker)]))
        data = b""
        while not data.endswith(marker + b"\r\n"):
            chunk = await asyncio.wait_for(reader.read(1 << 16), units(5))
            assert chunk, data[-200:]
            data += chunk
        return data

    try:
        yield said
    finally:
        writer.close()
        await writer.wait_closed()


def parse(data: bytes) -> list[Any]:
    replies = Replies()
    replies.feed(data)
    found = list(replies)
    assert replies.pending == 0
    return found


def check_every_split(data: bytes, expected: list[Any]) -> None:
    """Cut in two at every byte boundary, and fed a byte at a time."""
    expected = errors_as_text(expected)
    for cut in range(len(data) + 1):
        replies = Replies()
        replies.feed(data[:cut])
        found = list(replies)
        replies.feed(data[cut:])
        found += list(replies)
        assert errors_as_text(found) == expected, cut
    replies = Replies()
    found = []
    for i in range(len(data)):
        replies.feed(data[i : i + 1])
        found += list(replies)
    assert errors_as_text(found) == expected
    assert replies.pending == 0


def errors_as_text(replies: list[Any]) -> list[Any]:
    """ReplyError values compared by their text."""
    return [
        ("error", str(r)) if isinstance(r, ReplyError) else errors_as_text(r)
        if isinstance(r, list) else r
        for r in replies
    ]  # fmt: skip


async def test_resp2_replies_split_at_every_byte() -> None:
    async with RedisServer() as server, raw_socket(server.port) as said:
        data = await said(
            ("SET", "k", "v\r\nwith a line end"),
            ("GET", "k"),
            ("GET", "missing"),
            ("INCR", "n"),
            ("INCR", "k"),  # an error: not an integer
            ("NOSUCHCOMMAND",),
            ("RPUSH", "l", "a", "", "c"),
            ("LRANGE", "l", 0, -1),
            ("LRANGE", "missing", 0, -1),
            ("EVAL", "return {1, {2, 'x', {}}, {'y'}, -3}", 0),
            ("EVAL", "return {false}", 0),  # a null inside an array
        )
        found = errors_as_text(parse(data))
        assert found[:-1] == [
            b"OK",
            b"v\r\nwith a line end",
            None,
            1,
            ("error", "ERR value is not an integer or out of range"),
            found[5],
            3,
            [b"a", b"", b"c"],
            [],
            [1, [2, b"x", []], [b"y"], -3],
            [None],
        ]
        assert found[5][1].startswith("ERR unknown command")
        assert found[-1] == found[-1].__class__(found[-1])  # the PING's marker
        check_every_split(data, parse(data))


async def test_resp3_types_and_pushes() -> None:
    async with (
        RedisServer("--enable-debug-command", "yes") as server,
        raw_socket(server.port) as said,
    ):
        hello = parse(await said(("HELLO", 3)))[0]
        assert isinstance(hello, dict) and hello[b"proto"] == 3
        types = ["string", "integer", "double", "bignum", "null", "array", "set",
                 "map", "attrib", "push", "verbatim", "true", "false"]  # fmt: skip
        data = await said(*(("DEBUG", "PROTOCOL", kind) for kind in types))
        # DEBUG PROTOCOL push sends a push, then its own reply.
        pushes = [r for r in parse(data) if isinstance(r, Push)]
        assert len(pushes) == 1 and pushes[0]
        answers = [r for r in parse(data) if not isinstance(r, Push)]
        found = dict(zip(types, answers, strict=False))
        assert isinstance(found["string"], bytes)
        assert isinstance(found["integer"], int)
        assert isinstance(found["double"], float)
        assert found["bignum"] > 2**64
        assert found["null"] is None
        assert isinstance(found["array"], list) and isinstance(found["set"], list)
        assert isinstance(found["map"], dict) and found["map"]
        assert found["true"] is True and found["false"] is False
        assert isinstance(found["attrib"], bytes)  # the attribute is dropped
        assert found["verbatim"] == b"This is a verbatim\nstring"
        assert found["verbatim"].format == b"txt"
        check_every_split(data, parse(data))

        sub = await said(("SUBSCRIBE", "ch"), ("SSUBSCRIBE", "sh"))
        async with aioredis.Redis(port=server.port) as pub:
            await pub.publish("ch", b"one\r\n$3\r\n")
            await pub.execute_command("SPUBLISH", "sh", b"two")  # type: ignore[no-untyped-call]
            sub += await said(("UNSUBSCRIBE", "ch"), ("SUNSUBSCRIBE", "sh"))
        replies = parse(sub)
        kinds = [r[0] for r in replies if isinstance(r, Push)]
        assert kinds == [b"subscribe", b"ssubscribe", b"message", b"smessage",
                         b"unsubscribe", b"sunsubscribe"]  # fmt: skip
        assert [b"message", b"ch", b"one\r\n$3\r\n"] in replies
        check_every_split(sub, replies)


async def test_resp2_subscriber_stream_split_at_every_byte() -> None:
    async with RedisServer() as server, raw_socket(server.port) as said:
        data = await said(("SUBSCRIBE", "a", "b"))
        async with aioredis.Redis(port=server.port) as pub:
            for n in range(5):
                await pub.publish("ab"[n % 2], b"\x00\r\n" * n)
        data += await said(("UNSUBSCRIBE", "a"))
        replies = parse(data)
        assert [r for r in replies if r[0] == b"message"] == [
            [b"message", b"ab"[n % 2 : n % 2 + 1], b"\x00\r\n" * n] for n in range(5)
        ]
        check_every_split(data, replies)


async def test_big_bulk_strings_in_pieces() -> None:
    big = os.urandom(3 << 20)
    async with RedisServer() as server, raw_socket(server.port) as said:
        data = await said(("SET", "big", big), ("GET", "big"), ("GET", "big"))
    replies = Replies()
    found: list[Any] = []
    for start in range(0, len(data), 4096):
        replies.feed(data[start : start + 4096])
        found += list(replies)
    assert found[:3] == [b"OK", big, big]
    assert replies.pending == 0
    # Cut just before, inside and after the CRLF ending the bulk string.
    end = data.index(big, 10) + len(big)
    for cut in range(end - 2, end + 3):
        replies = Replies()
        replies.feed(data[:cut])
        found = list(replies)
        replies.feed(data[cut:])
        assert [*found, *replies][:3] == [b"OK", big, big]


def test_errors_and_what_redis_never_sends() -> None:
    """Shapes Redis 7 does not send on these commands, written by hand."""
    assert errors_as_text(parse(b"!21\r\nSYNTAX invalid syntax\r\n")) == [
        ("error", "SYNTAX invalid syntax")
    ]
    assert parse(b"*-1\r\n$-1\r\n_\r\n") == [None, None, None]
    assert parse(b"(-12345678901234567890\r\n,inf\r\n") == [
        -12345678901234567890,
        float("inf"),
    ]
    with pytest.raises(ReplyError, match="not RESP"):
        parse(b"?what\r\n")


class Heard:
    """A link's hooks, recording."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.confirmed: list[bytes] = []
        self.heard = 0
        self.arrived = asyncio.Event()

    def hooks(self) -> Hooks:
        return Hooks(("127.0.0.1", 0), self.message, self.confirmed.append, self.hear)

    def message(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))
        self.arrived.set()

    def hear(self) -> None:
        self.heard += 1

    async def until(self, count: int) -> None:
        while len(self.messages) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), units(5))


@pytest.mark.parametrize("use_redis_py", [False, True], ids=["own", "redis-py"])
async def test_subscriber_and_publisher_carry_messages_in_order(
    use_redis_py: bool,
) -> None:
    async with RedisServer() as server:
        heard = Heard()
        py = client(server.url, socket_timeout=None)
        if use_redis_py:  # the TLS path, on a plain socket
            sub: Subscriber | PySubscriber = await PySubscriber.open(py, heard.hooks())
            pub: Publisher | PyPublisher = await PyPublisher.open(py, "r:")
        else:
            sub = await Subscriber.open(server.url, None, heard.hooks())
            pub = await Publisher.open(server.url, None, "r:")
        try:
            sub.send("SUBSCRIBE", "p")
            sub.send("SSUBSCRIBE", "r:1")
            await sub.until_confirmed(2)
            assert heard.confirmed == [b"p", b"r:1"]
            sent = [("p" if n % 3 else "r:1", b"m%d" % n) for n in range(2000)]
            for start in range(0, len(sent), 256):
                await pub.publish(sent[start : start + 256])
            await heard.until(len(sent))
            assert heard.messages == [(c.encode(), m) for c, m in sent]
            assert heard.heard >= 1
            # A sunsubscribe we asked for is fine; one we did not is a move.
            sub.leaving.add(b"r:1")
            sub.send("SUNSUBSCRIBE", "r:1")
            sub.send("SSUBSCRIBE", "r:2")
            await sub.until_confirmed(3)
            sub.send("SUNSUBSCRIBE", "r:2")
            with pytest.raises(Moved, match="dropped b'r:2'"):
                await asyncio.wait_for(sub.wait_failed(), units(5))
        finally:
            sub.close()
            pub.close()
            await py.aclose(close_connection_pool=True)


async def test_a_closed_connection_fails_both() -> None:
    async with RedisServer() as server:
        heard = Heard()
        sub = await Subscriber.open(server.url, None, heard.hooks())
        pub = await Publisher.open(server.url, None)
        try:
            sub.send("SUBSCRIBE", "p")
            await sub.until_confirmed(1)
            server.kill()
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(sub.wait_failed(), units(5))
            with pytest.raises((ConnectionError, OSError)):
                await pub.publish([("p", b"x")])
            with pytest.raises(ConnectionError):
                sub.send("PING")
        finally:
            sub.close()
            pub.close()


async def test_an_error_reply_fails_a_subscriber() -> None:
    async with RedisServer() as server:
        heard = Heard()
        sub = await Subscriber.open(server.url, None, heard.hooks())
        try:
            sub.send("SUBSCRIBE", "p")
            await sub.until_confirmed(1)
            sub.send("SSUBSCRIBE")  # no channel: an error reply
            with pytest.raises(ReplyError, match="wrong number of arguments"):
                await asyncio.wait_for(sub.wait_failed(), units(5))
        finally:
            sub.close()
    # What a cluster answers when a slot moved or is not served.
    assert isinstance(_error("MOVED 3999 127.0.0.1:6381"), Moved)
    assert isinstance(_error("CLUSTERDOWN The cluster is down"), Moved)
    assert type(_error("ERR other")) is ReplyError


async def test_auth_from_the_url() -> None:
    async with RedisServer() as server:
        async with aioredis.Redis(port=server.port) as admin:
            await admin.config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        heard = Heard()
        sub = await Subscriber.open(url, None, heard.hooks())
        pub = await Publisher.open(url, None)
        try:
            sub.send("SUBSCRIBE", "p")
            await sub.until_confirmed(1)
            await pub.publish([("p", b"x")])
            await heard.until(1)
        finally:
            sub.close()
            pub.close()
        with pytest.raises(ReplyError, match="WRONGPASS"):
            await Publisher.open(f"redis://:wrong@127.0.0.1:{server.port}/0", None)
        # No password: the first publish is refused, and raises.
        pub = await Publisher.open(server.url, None)
        try:
            with pytest.raises(ReplyError, match="NOAUTH"):
                await pub.publish([("p", b"x")])
        finally:
            pub.close()


@pytest.mark.parametrize("unix", [False, True], ids=["tcp-auth", "unix"])
async def test_a_single_link_over_a_password_or_a_unix_socket(
    unix: bool, tmp_path: Any
) -> None:
    from sanic_ws_ext.delivery.redislink import SingleLink

    sock = tmp_path / "redis.sock"
    async with RedisServer("--unixsocket", str(sock)) as server:
        if unix:
            url = f"unix://{sock}"
        else:
            async with aioredis.Redis(port=server.port) as admin:
                await admin.config_set("requirepass", "s3cret")
            url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        heard = Heard()
        link = SingleLink(
            url,
            message=heard.message,
            confirmed=heard.confirmed.append,
            heard=heard.hear,
        )
        try:
            assert not await link.serves_cluster()
            await link.connect(["p:room:r"], ["p:all"])
            reading = asyncio.ensure_future(link.read())
            await link.publish([("p:all", b"1"), ("p:room:r", b"2")])
            await heard.until(2)
            assert heard.messages == [(b"p:all", b"1"), (b"p:room:r", b"2")]
            await link.disconnect()
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(reading, units(5))
        finally:
            await link.close()
