"""Abuse limits: connections in total and per IP, connects and messages per second.

Pure tests of the buckets and counts first, then a real server with real
clients. Rates are tested against a fake clock put on the manager, or with
bursts sent at once, so no result depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ujson
from sanic import Request, Sanic
from websockets.exceptions import InvalidStatus
from websockets.frames import Opcode
from websockets.http11 import Response

from sanic_ws_ext import Connection, ConnectionState, Envelope, ErrorCode, WSConfig
from sanic_ws_ext.limits import ClientLimits, client_key, retry_after, take
from sanic_ws_ext.testing import LiveServer, WSTestClient, serve

from .conftest import units
from .helpers import AppFactory, ws_app
from .rawws import RawClient

# -- pure: buckets, keys, counts ------------------------------------------------


def test_take_refills_lazily_up_to_the_burst() -> None:
    assert take(3.0, 0.0, 0.0, 1.0, 3) == 2.0
    assert take(0.0, 0.0, 0.5, 1.0, 3) == -0.5  # half a token: over
    assert take(0.0, 0.0, 100.0, 1.0, 3) == 2.0  # full at 3, never more
    # A debt is repaid by the refill before anything passes again.
    assert take(-3.0, 0.0, 3.0, 1.0, 3) == -1.0
    assert take(-3.0, 0.0, 4.0, 1.0, 3) == 0.0


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.2) == "2"
    assert retry_after(300) == "300"


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),  # Sanic brackets forwarded IPv6
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("/run/app.sock", "/run/app.sock"),
        ("", ""),
    ],
)
def test_client_key(ip: str, key: str) -> None:
    assert client_key(ip) == key


def test_connect_bucket_refuses_with_the_true_wait() -> None:
    limits = ClientLimits(max_open=None, rate=2.0, burst=3)
    assert [limits.connect_wait("203.0.113.7", 0.0) for _ in range(3)] == [0, 0, 0]
    assert limits.connect_wait("203.0.113.7", 0.0) == 0.5
    # A refused attempt takes nothing: the wait it was told holds.
    assert limits.connect_wait("203.0.113.7", 0.25) == 0.25
    assert limits.connect_wait("203.0.113.7", 0.5) == 0.0
    assert limits.connect_wait("203.0.113.7", 0.5) == 0.5
    # Other clients have their own buckets; an IPv6 /64 shares one.
    assert limits.connect_wait("198.51.100.9", 0.5) == 0.0
    for host in range(3):
        assert limits.connect_wait(f"2001:db8::{host + 1}", 0.5) == 0.0
    assert limits.connect_wait("2001:db8::ffff", 0.5) == 0.5


def test_connect_buckets_are_pruned_and_bounded() -> None:
    limits = ClientLimits(max_open=None, rate=10.0, burst=5, max_buckets=1000)
    # An attacker with many addresses: the buckets never pass the cap...
    for n in range(5000):
        limits.connect_wait(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", 0.0)
    assert limits.buckets == 1000
    # ...and vanish once they would be full again (burst / rate = 0.5 s).
    limits.connect_wait("203.0.113.7", 0.4)
    assert limits.buckets == 1000  # the cap still holds
    limits.connect_wait("203.0.113.7", 0.5)
    assert limits.buckets == 1
    # A forgotten bucket is a full one: nothing was lost by forgetting.
    assert [limits.connect_wait("10.0.0.1", 0.5) for _ in range(6)][-2:] == [0, 0.1]


def test_open_counts_exist_only_while_connections_do() -> None:
    limits = ClientLimits(max_open=2, rate=None, burst=1)
    assert limits.connect_wait("203.0.113.7", 0.0) == 0.0  # no rate: no state
    assert limits.buckets == 0
    limits.opened("203.0.113.7")
    assert not limits.at_limit("203.0.113.7")
    limits.opened("203.0.113.7")
    assert limits.at_limit("203.0.113.7")
    assert not limits.at_limit("198.51.100.9")
    limits.closed("203.0.113.7")
    assert not limits.at_limit("203.0.113.7")
    limits.closed("203.0.113.7")
    assert limits.clients == 0
    unlimited = ClientLimits(max_open=None, rate=None, burst=1)
    unlimited.opened("203.0.113.7")
    assert unlimited.clients == 0 and not unlimited.at_limit("203.0.113.7")


def test_the_hardening_guide_suggests_valid_config() -> None:
    guide = Path(__file__).parent.parent / "docs" / "howto" / "security.md"
    block = re.search(
        r"```python\n(app\.config\.update\(.*?)```", guide.read_text(), re.S
    )
    assert block is not None, "docs/howto/security.md lost its suggested limits"
    settings: dict[str, Any] = {}
    exec(block.group(1), {"app": SimpleNamespace(config=settings)})
    config = WSConfig.from_mapping(settings)
    assert None not in (
        config.max_connections,
        config.max_connections_per_ip,
        config.connect_rate_per_ip,
        config.message_rate,
    )


# -- against a real server ---------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand (put on ``manager._wires.clock``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def echo_app(
    make_app: AppFactory, **config: Any
) -> tuple[Sanic[Any, Any], list[Any], asyncio.Queue[Connection]]:
    """An app that says hello with the client's address and echoes "ping"."""
    app, handlers, gone = ws_app(make_app, **config)
    seen: list[Any] = []

    @handlers.on_connect
    async def hello(conn: Connection) -> None:
        await conn.send("hello", {"remote": conn.remote})

    @handlers.on("ping")
    async def pong(conn: Connection, msg: Envelope) -> None:
        seen.append(msg.data)
        await conn.send("pong", msg.data)

    return app, seen, gone


async def connect(
    server: LiveServer, *, source: str = "127.0.0.1", **kwargs: Any
) -> WSTestClient:
    """Connect from the loopback address ``source``; wait for the hello."""
    client = await WSTestClient.connect(
        server.ws_url(), local_addr=(source, 0), **kwargs
    )
    await client.expect("hello")
    return client


async def refused(
    server: LiveServer, *, source: str = "127.0.0.1", **kwargs: Any
) -> Response:
    """The HTTP response to an upgrade that must be refused."""
    with pytest.raises(InvalidStatus) as info:
        await WSTestClient.connect(server.ws_url(), local_addr=(source, 0), **kwargs)
    return info.value.response


async def test_total_limit_refuses_with_503_until_one_closes(
    make_app: AppFactory,
) -> None:
    app, _, gone = echo_app(make_app, WS_MAX_CONNECTIONS=2)
    async with serve(app) as server:
        first = await connect(server)
        second = await connect(server, source="127.0.0.2")
        for source in ("127.0.0.1", "127.0.0.3"):
            response = await refused(server, source=source)
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            assert b"connection limit" in response.body
        assert await app.ctx.ws.count() == 2
        # Those connected are unaffected...
        await second.send("ping", 1)
        assert (await second.expect("pong")).data == 1
        # ...and a slot frees up when one closes.
        await first.close()
        await asyncio.wait_for(gone.get(), units(5))
        third = await connect(server, source="127.0.0.3")
        assert await app.ctx.ws.count() == 2
        await second.close()
        await third.close()


async def test_total_limit_is_exact_while_verify_hooks_wait(
    make_app: AppFactory,
) -> None:
    app, handlers, _ = ws_app(make_app, WS_MAX_CONNECTIONS=2)
    waiting = 0
    all_waiting = asyncio.Event()
    release = asyncio.Event()

    @handlers.verify
    async def slow_lookup(request: Request) -> None:
        nonlocal waiting
        waiting += 1
        if waiting == 3:
            all_waiting.set()
        await release.wait()

    async with serve(app) as server:
        # All three pass the first check: nobody is connected yet.
        attempts = [
            asyncio.ensure_future(WSTestClient.connect(server.ws_url()))
            for _ in range(3)
        ]
        await asyncio.wait_for(all_waiting.wait(), units(5))
        release.set()
        results = await asyncio.gather(*attempts, return_exceptions=True)
        clients = [r for r in results if isinstance(r, WSTestClient)]
        refusals = [r for r in results if isinstance(r, InvalidStatus)]
        assert len(clients) == 2
        assert [r.response.status_code for r in refusals] == [503]
        assert len(app.ctx.ws.connections) == 2
        for client in clients:
            await client.close()


async def test_per_ip_limit_refuses_with_429_and_spares_other_ips(
    make_app: AppFactory,
) -> None:
    app, _, gone = echo_app(make_app, WS_MAX_CONNECTIONS_PER_IP=2)
    async with serve(app) as server:
        mine = [await connect(server), await connect(server)]
        response = await refused(server)
        assert response.status_code == 429
        assert "Retry-After" in response.headers
        assert b"Too many connections" in response.body
        # Another address is not counted with this one.
        other = await connect(server, source="127.0.0.2")
        assert app.ctx.ws._limits.open_count("127.0.0.1") == 2
        # Closing one frees one place for this address, and only one.
        await mine.pop().close()
        await asyncio.wait_for(gone.get(), units(5))
        assert app.ctx.ws._limits.open_count("127.0.0.1") == 1
        mine.append(await connect(server))
        assert (await refused(server)).status_code == 429
        for client in [*mine, other]:
            await client.close()
        for _ in range(3):
            await asyncio.wait_for(gone.get(), units(5))
        # Nothing is kept for clients that left.
        assert app.ctx.ws._limits.clients == 0


async def test_connect_rate_refuses_with_429_before_the_verify_hooks(
    make_app: AppFactory,
) -> None:
    app, handlers, _ = ws_app(
        make_app, WS_CONNECT_RATE_PER_IP=0.5, WS_CONNECT_BURST_PER_IP=2
    )
    verified = 0

    @handlers.verify
    async def count_verifies(request: Request) -> None:
        nonlocal verified
        verified += 1

    async with serve(app) as server:
        clock = FakeClock()
        app.ctx.ws._wires.clock = clock
        url = server.ws_url()
        clients = [await WSTestClient.connect(url) for _ in range(2)]
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(url)
        response = info.value.response
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"  # one token at 0.5/s
        assert b"Too many new connections" in response.body
        assert verified == 2  # the refused attempt never reached the hook
        # Another address has its own bucket.
        clients.append(await WSTestClient.connect(url, local_addr=("127.0.0.2", 0)))
        # Half the wait: still refused, told the rest.
        clock.now += 1.0
        with pytest.raises(InvalidStatus) as info:
            await WSTestClient.connect(url)
        assert info.value.response.headers["Retry-After"] == "1"
        # The bucket refills: one more may come, not two.
        clock.now += 1.0
        clients.append(await WSTestClient.connect(url))
        with pytest.raises(InvalidStatus):
            await WSTestClient.connect(url)
        assert verified == 4
        # Closing connections gives back no connect tokens: it is a rate.
        for client in clients:
            await client.close()
        with pytest.raises(InvalidStatus):
            await WSTestClient.connect(url)


# -- who the client is: forwarded headers only from a configured proxy ------------


async def test_forwarded_headers_are_ignored_without_proxy_config(
    make_app: AppFactory,
) -> None:
    app, _, _ = echo_app(make_app, WS_MAX_CONNECTIONS_PER_IP=1)
    async with serve(app) as server:
        url = server.ws_url()
        spoofer = await WSTestClient.connect(
            url, headers={"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7"}
        )
        assert (await spoofer.expect("hello")).data == {"remote": "127.0.0.1"}
        # A new made-up address each time does not buy a new allowance.
        for fake in ("198.51.100.9", "198.51.100.10"):
            with pytest.raises(InvalidStatus) as info:
                await WSTestClient.connect(
                    url,
                    headers={
                        "X-Forwarded-For": fake,
                        "X-Real-IP": fake,
                        "Forwarded": f"for={fake}",
                    },
                )
            assert info.value.response.status_code == 429
        await spoofer.close()


@pytest.mark.parametrize(
    ("proxy_config", "header"),
    [
        # The proxy appends the peer it saw to X-Forwarded-For: trust the last one.
        ({"PROXIES_COUNT": 1}, "X-Forwarded-For"),
        ({"REAL_IP_HEADER": "X-Real-IP"}, "X-Real-IP"),
        ({"FORWARDED_SECRET": "s3cret"}, "Forwarded"),
    ],
)
async def test_limits_count_the_forwarded_ip_behind_a_configured_proxy(
    make_app: AppFactory, proxy_config: dict[str, Any], header: str
) -> None:
    app, _, gone = echo_app(make_app, WS_MAX_CONNECTIONS_PER_IP=1, **proxy_config)

    def via_proxy(ip: str) -> dict[str, str]:
        if header == "Forwarded":
            return {header: f"for={ip};secret=s3cret"}
        return {header: ip}

    async with serve(app) as server:
        # Every client arrives from the proxy's address (127.0.0.1 here).
        alice = await WSTestClient.connect(
            server.ws_url(), headers=via_proxy("203.0.113.7")
        )
        assert (await alice.expect("hello")).data == {"remote": "203.0.113.7"}
        bob = await WSTestClient.connect(
            server.ws_url(), headers=via_proxy("198.51.100.9")
        )
        assert (await bob.expect("hello")).data == {"remote": "198.51.100.9"}
        response = await refused(server, headers=via_proxy("203.0.113.7"))
        assert response.status_code == 429
        if header == "X-Forwarded-For":
            # A client's own X-Forwarded-For entry comes before the proxy's.
            forged = {header: "198.51.100.77, 203.0.113.7"}
            assert (await refused(server, headers=forged)).status_code == 429
        await alice.close()
        await asyncio.wait_for(gone.get(), units(5))
        again = await WSTestClient.connect(
            server.ws_url(), headers=via_proxy("203.0.113.7")
        )
        await again.expect("hello")
        await again.close()
        await bob.close()


# -- messages per second -----------------------------------------------------------


def ping(n: int) -> bytes:
    return ujson.dumps({"type": "ping", "data": n}).encode()


async def read_envelopes(raw: RawClient, count: int) -> list[Envelope]:
    out = []
    for _ in range(count):
        frame = await raw.read_frame(units(5))
        assert frame.opcode is Opcode.TEXT
        obj = ujson.loads(bytes(frame.data))
        out.append(Envelope(obj["type"], obj.get("data")))
    return out


async def test_messages_over_the_rate_are_dropped_with_an_error_frame(
    make_app: AppFactory,
) -> None:
    # 1 message per 1000 s: nothing refills while the test runs.
    app, seen, _ = echo_app(make_app, WS_MESSAGE_RATE=0.001, WS_MESSAGE_BURST=3)
    async with serve(app) as server:
        raw = await RawClient.connect(server.host, server.port)
        assert [e.type for e in await read_envelopes(raw, 1)] == ["hello"]
        for n in range(5):
            raw.send_frame(Opcode.TEXT, ping(n))
        replies = await read_envelopes(raw, 5)
        assert sorted(e.data for e in replies if e.type == "pong") == [0, 1, 2]
        errors = [e.data for e in replies if e.type == "error"]
        assert [e["code"] for e in errors] == [ErrorCode.RATE_LIMITED] * 2
        assert "message dropped" in errors[0]["reason"]
        assert seen == [0, 1, 2]  # the handler never saw the others
        # Under the close threshold: still open.
        (conn,) = app.ctx.ws.connections.values()
        assert conn.state is ConnectionState.OPEN
        raw.close_socket()


async def test_a_client_that_keeps_going_is_closed_1008(
    make_app: AppFactory,
) -> None:
    app, seen, gone = echo_app(make_app, WS_MESSAGE_RATE=0.001, WS_MESSAGE_BURST=3)
    async with serve(app) as server:
        bystander = await connect(server)
        raw = await RawClient.connect(server.host, server.port)
        await read_envelopes(raw, 1)  # hello
        # BURST pass, BURST more are dropped with an error frame, the next closes.
        for n in range(7):
            raw.send_frame(Opcode.TEXT, ping(n))
        close, before = await raw.read_until_close(units(5))
        assert (close.code, close.reason) == (1008, "rate limit")
        bodies = [ujson.loads(bytes(frame.data)) for frame in before]
        errors = [b["data"]["code"] for b in bodies if b["type"] == "error"]
        assert errors == [ErrorCode.RATE_LIMITED] * 3
        raw.close_socket()
        closed = await asyncio.wait_for(gone.get(), units(5))
        assert (closed.close_code, closed.close_reason) == (1008, "rate limit")
        assert seen == [0, 1, 2]
        # Other connections have their own bucket.
        for n in range(3):
            await bystander.send("ping", 100 + n)
            assert (await bystander.expect("pong")).data == 100 + n
        await bystander.close()


async def test_a_ping_flood_spends_the_message_budget(make_app: AppFactory) -> None:
    """Pings from a client that reads its pongs cost the same as messages:
    pongs while the budget lasts, no error frames, then close 1008."""
    app, seen, gone = echo_app(make_app, WS_MESSAGE_RATE=0.001, WS_MESSAGE_BURST=3)
    async with serve(app) as server:
        bystander = await connect(server)
        raw = await RawClient.connect(server.host, server.port)
        await read_envelopes(raw, 1)  # hello
        for n in range(100):
            raw.send_frame(Opcode.PING, str(n).encode())
        close, before = await raw.read_until_close(units(5))
        assert (close.code, close.reason) == (1008, "rate limit")
        # Every ping read before the close got its pong, and nothing else came.
        assert {frame.opcode for frame in before} == {Opcode.PONG}
        assert 3 <= len(before) < 100  # those parsed in the batch that closed it
        raw.close_socket()
        closed = await asyncio.wait_for(gone.get(), units(5))
        assert closed.close_code == 1008
        assert seen == []
        await bystander.send("ping", 1)
        assert (await bystander.expect("pong")).data == 1
        await bystander.close()


async def test_the_message_bucket_refills_from_the_clock(
    make_app: AppFactory,
) -> None:
    app, seen, _ = echo_app(
        make_app, WS_MESSAGE_RATE=1, WS_MESSAGE_BURST=2, WS_PING_INTERVAL=None
    )
    async with serve(app) as server:
        clock = FakeClock()
        app.ctx.ws._wires.clock = clock
        client = await connect(server)
        for n in range(3):
            await client.send("ping", n)
        assert (await client.expect("error")).data["code"] == ErrorCode.RATE_LIMITED
        assert [(await client.expect("pong")).data for _ in range(2)] == [0, 1]
        # One second repays the debt of the dropped message, the next buys one.
        clock.now += 2.0
        await client.send("ping", 3)
        assert (await client.expect("pong")).data == 3
        await client.send("ping", 4)
        assert (await client.expect("error")).data["code"] == ErrorCode.RATE_LIMITED
        # A client that slowed down was never closed.
        clock.now += 10.0
        for n in (5, 6):
            await client.send("ping", n)
            assert (await client.expect("pong")).data == n
        assert seen == [0, 1, 3, 5, 6]
        await client.close()
