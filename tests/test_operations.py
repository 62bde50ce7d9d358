"""Health, stats, metrics, the dashboard and the logs, on a real server.

One process here (``serve()``); tests/test_cluster_stats.py checks the same
figures across the workers of a real ``sanic --workers 4``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from sanic import Request, Sanic
from websockets.exceptions import InvalidStatus
from websockets.frames import Opcode

from sanic_ws_ext import Accept, ConfigError, Connection, Envelope, Reject, WSConfig
from sanic_ws_ext.monitoring import redact_query_strings
from sanic_ws_ext.testing import WSTestClient, serve

from .conftest import units
from .helpers import ws_app
from .prom import parse
from .rawws import RawClient

AppFactory = Callable[..., Sanic[Any, Any]]
TOKEN = "a-stats-token-long-enough"


async def test_health_is_public_and_stats_are_off_by_default(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app)
    async with serve(app) as server, httpx.AsyncClient() as http:
        response = await http.get(server.url("/ws/health"))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.json() == {
            "alive": True,
            "ready": True,
            "delivery": "local",
            "relay": None,
            "backplane": None,
            "workers": 1,
            "expected": None,
            "heard": 1,
        }
        for path in ("stats", "metrics", "dashboard", "dashboard.js"):
            assert (await http.get(server.url(f"/ws/{path}"))).status_code == 404


async def test_health_is_503_while_the_worker_shuts_down(
    make_app: AppFactory,
) -> None:
    """A load balancer must stop sending new clients as soon as the stop
    begins, while existing ones are still being closed."""
    app, _, _ = ws_app(make_app, WS_CLOSE_TIMEOUT=units(3))
    async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
        server = await stack.enter_async_context(serve(app))
        # A client that never answers the close holds the stop open.
        raw = await RawClient.connect(server.host, server.port)
        stopping = asyncio.create_task(stack.aclose())
        frame = await raw.read_frame()  # the server's 1001: the stop has begun
        assert frame.opcode is Opcode.CLOSE
        response = await http.get(server.url("/ws/health"))
        assert response.status_code == 503
        assert response.json()["ready"] is False
        assert response.json()["alive"] is True
        await asyncio.wait_for(stopping, units(10))
        raw.writer.close()


async def test_health_can_be_switched_off_and_follows_ws_path(
    make_app: AppFactory,
) -> None:
    app, _, _ = ws_app(make_app, WS_PATH="/live", WS_HEALTH=False, WS_STATS=True)
    async with serve(app) as server, httpx.AsyncClient() as http:
        assert (await http.get(server.url("/live/health"))).status_code == 404
        assert (await http.get(server.url("/live/stats"))).status_code == 200


def test_switches_and_token_are_checked() -> None:
    with pytest.raises(ConfigError, match="WS_STATS"):
        WSConfig.from_mapping({"WS_STATS": "sometimes"})
    with pytest.raises(ConfigError, match="WS_HEALTH"):
        WSConfig.from_mapping({"WS_HEALTH": 2})
    # Words and 1/0, as the environment gives them.
    assert WSConfig.from_mapping({"WS_STATS": "yes", "WS_HEALTH": 0}).stats is True
    with pytest.raises(ConfigError, match="WS_STATS_TOKEN") as refused:
        WSConfig.from_mapping({"WS_STATS_TOKEN": "short-secret"})
    assert "short-secret" not in str(refused.value)  # a secret is never echoed
    config = WSConfig.from_mapping({"WS_STATS": True, "WS_STATS_TOKEN": TOKEN})
    assert (config.health, config.stats, config.stats_token) == (True, True, TOKEN)


async def test_switches_are_set_before_registering(make_app: AppFactory) -> None:
    # Their routes are added at registration: a later change would be ignored.
    app, _, _ = ws_app(make_app)
    app.config.WS_STATS = True
    with pytest.raises(ConfigError, match="WS_STATS"):
        async with serve(app):
            pass


async def fetch_stats(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await http.get(url)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_stats_and_metrics_count_what_happened(make_app: AppFactory) -> None:
    app, handlers, gone = ws_app(
        make_app,
        WS_STATS=True,
        WS_MAX_BACKPRESSURE=4096,
        WS_PING_INTERVAL=None,
        WS_RELAY_BEAT=0.2 * units(1),
    )

    @handlers.on("echo")
    async def echo(conn: Connection, msg: Envelope) -> None:
        await conn.send("echo", msg.data)

    @handlers.on("shout")
    async def shout(conn: Connection, msg: Envelope) -> None:
        await conn.manager.broadcast("shout", msg.data, exclude=[conn.id])

    @handlers.on("join")
    async def join(conn: Connection, msg: Envelope) -> None:
        await conn.join(msg.data)
        await conn.send("joined", msg.data)

    @handlers.on("big")
    async def big(conn: Connection, msg: Envelope) -> None:
        # The first is queued (a client that keeps up gets any one message);
        # the second finds the backlog past WS_MAX_BACKPRESSURE: dropped.
        await conn.send("big", "x" * 8192)
        await conn.send("big", "x" * 8192)

    async with serve(app) as server, httpx.AsyncClient() as http:
        stats_url = server.url("/ws/stats")
        clients = [await WSTestClient.connect(server.ws_url()) for _ in range(3)]
        for client in clients:
            for i in range(5):
                await client.send("echo", i)
            for i in range(5):
                assert (await client.expect("echo")).data == i
        await clients[0].send("shout", "hi")
        for client in clients[1:]:
            assert (await client.expect("shout")).data == "hi"
        for client in clients[1:]:
            await client.send("join", "lobby")
            await client.expect("joined")
        # In: 15 echo + 1 shout + 2 join. Out: 15 echo + 2 shout + 2 "joined"
        # (the lobby has no presence: nothing else is sent).
        stats = await fetch_stats(http, stats_url)
        assert stats["answered_by"] == "main"
        assert (stats["connections"], stats["rooms"], stats["workers"]) == (3, 1, 1)
        assert (stats["messages_in"], stats["messages_out"]) == (18, 19)
        assert (stats["opened"], stats["closed"], stats["slow_closed"]) == (3, 0, 0)
        assert stats["per_worker"]["main"]["connections"] == 3

        # A frame larger than WS_MAX_BACKPRESSURE: its receiver is dropped.
        await clients[2].send("big")
        dropped = await asyncio.wait_for(gone.get(), units(5))
        assert dropped.close_reason == "slow consumer"
        stats = await fetch_stats(http, stats_url)
        # The first "big" frame was queued, the second not.
        assert (stats["messages_in"], stats["messages_out"]) == (19, 20)
        assert (stats["closed"], stats["slow_closed"]) == (1, 1)
        assert stats["connections"] == 2

        metrics_response = await http.get(server.url("/ws/metrics"))
        assert metrics_response.headers["content-type"] == (
            "text/plain; version=0.0.4; charset=utf-8"
        )
        metrics = parse(metrics_response.text)
        assert metrics.by("sanic_ws_connections", "worker") == {"main": 2}
        assert metrics.value("sanic_ws_messages_received_total", worker="main") == 19
        assert metrics.value("sanic_ws_messages_sent_total", worker="main") == 20
        assert metrics.value("sanic_ws_slow_consumers_closed_total", worker="main") == 1
        assert metrics.value("sanic_ws_cluster_rooms") == 1

        # Steady traffic: the rate over the last beat shows it.
        quiet = asyncio.Event()

        async def chatter() -> None:
            # Stopped by an event, not cancelled: Python 3.11's wait_for can
            # swallow a cancellation that lands as its result arrives.
            while not quiet.is_set():
                await clients[0].send("echo", "tick")
                await clients[0].expect("echo")
                await asyncio.sleep(0.01)  # pacing the load, not waiting for it

        talking = asyncio.ensure_future(chatter())
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + units(10)
            while (await fetch_stats(http, stats_url))["messages_in_per_second"] <= 0:
                assert loop.time() < deadline, "the rate never showed the traffic"
                await asyncio.sleep(0.05)  # polling: the rate changes per beat
        finally:
            quiet.set()
            await talking
        for client in clients:
            await client.close()


async def test_stats_token(make_app: AppFactory) -> None:
    app, _, _ = ws_app(make_app, WS_STATS=True, WS_STATS_TOKEN=TOKEN)
    async with serve(app) as server, httpx.AsyncClient() as http:
        for path in ("/ws/stats", "/ws/metrics"):
            refused = await http.get(server.url(path))
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            # Where to put the token, for a person reading the 401.
            assert "open /ws/dashboard#token=<WS_STATS_TOKEN>" in refused.text
            wrong = await http.get(
                server.url(path), headers={"authorization": f"Bearer {TOKEN}x"}
            )
            assert wrong.status_code == 401
            right = await http.get(
                server.url(path), headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert right.status_code == 200
        # The page holds no figures: served without the token, which it
        # reads from its URL fragment.
        page = await http.get(server.url("/ws/dashboard"))
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'src="dashboard.js"' in page.text
        script = await http.get(server.url("/ws/dashboard.js"))
        assert script.headers["content-type"].startswith("text/javascript")
        assert "location.hash" in script.text
        # Health stays public.
        assert (await http.get(server.url("/ws/health"))).status_code == 200


SECRET = "s3cret-value-in-the-query"
# The extension logs through Sanic's logger, as its child.
LOGGER = "sanic.root.sanic_ws_ext"


async def test_logs_name_connections_and_never_secrets(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Sanic's access log prints every request's URL: on here on purpose.
    app, handlers, gone = ws_app(make_app, ACCESS_LOG=True)
    # After the app: Sanic's logging setup resets the levels under sanic.root.
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    @handlers.verify
    async def check(request: Request) -> Accept:
        token = request.args.get("token", "")
        if token.startswith("crash"):
            raise RuntimeError("a bug in the verify hook")  # Sanic logs a 500
        if token != SECRET:
            raise Reject(401, "bad token")
        return Accept(user="alice")

    @handlers.on("fail")
    async def fail(conn: Connection, msg: Envelope) -> None:
        raise ValueError("a bug in a handler")

    headers = {"cookie": f"session={SECRET}", "authorization": f"Bearer {SECRET}"}
    async with serve(app) as server:
        client = await WSTestClient.connect(
            server.ws_url() + f"?token={SECRET}", headers=headers
        )
        (conn_id,) = app.ctx.ws.connections
        await client.send("fail")
        assert (await client.expect("error")).data["code"] == "handler_error"
        await client.close()
        await asyncio.wait_for(gone.get(), units(5))
        for query in (f"?token=wrong{SECRET}", f"?token=crash{SECRET}"):
            with pytest.raises(InvalidStatus):
                await WSTestClient.connect(server.ws_url() + query, headers=headers)

    # The server's loggers: Sanic's and ours (not the test's own client).
    records = [r for r in caplog.records if r.name.startswith("sanic")]
    messages = [r.getMessage() for r in records]
    # The extension's lines name the connection.
    assert any(conn_id in m and "open" in m for m in messages), messages
    assert any(conn_id in m and "closed" in m for m in messages), messages
    assert any(conn_id in m and "failed" in m for m in messages), messages
    # Sanic's access log and its log of the 500 show the query, values hidden.
    requests = [str(getattr(r, "request", "")) for r in records]
    assert any("/ws?token=***" in r for r in requests), requests
    assert any("Exception occurred" in m and "token=***" in m for m in messages)
    formatter = logging.Formatter()
    for record in records:
        seen = [record.getMessage(), repr(vars(record))]
        if record.exc_info:
            seen.append(formatter.formatException(record.exc_info))
        assert not any(SECRET in text for text in seen), record


def test_redaction_hides_values_of_the_endpoint_query_only() -> None:
    redact_query_strings(["/ws"])
    access = logging.LogRecord(
        "sanic.access", logging.INFO, __file__, 1, "", None, None
    )
    access.__dict__["request"] = "GET http://h:1/ws?token=abc&user=bob&bare"
    assert logging.getLogger("sanic.access").filter(access)
    assert access.__dict__["request"] == "GET http://h:1/ws?token=***&user=***&***"
    error = logging.LogRecord(
        "sanic.error",
        logging.ERROR,
        __file__,
        1,
        "uri: %s %s",
        ("'http://h/ws?t=abc'", "http://h/api?page=2"),
        None,
    )
    assert logging.getLogger("sanic.error").filter(error)
    assert error.getMessage() == "uri: 'http://h/ws?t=***' http://h/api?page=2"
