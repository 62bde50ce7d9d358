"""Cluster-wide figures from any worker of a real `sanic --workers 4`.

Each worker's counters ride on its relay beat (``WS_RELAY_BEAT``, 0.5 s in
the test app), so whichever worker answers ``/ws/stats`` or ``/ws/metrics``
knows everyone's. Requests go out on fresh connections (``Connection:
close``), so different workers answer them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import ujson

from .conftest import units
from .procs import SanicProcess
from .prom import Metrics, parse
from .rawws import RawClient
from .test_cluster import WORKERS, Cluster, cluster, drain, worker_names

# The slow client's backlog passes 128 KiB; nobody else's ever does.
ENV = {"SANIC_WS_STATS": "true", "SANIC_WS_MAX_BACKPRESSURE": str(128 * 1024)}
FRESH = {"connection": "close"}  # a new TCP connection: any worker may answer


async def stalled_client_on(c: Cluster, worker: str) -> tuple[RawClient, str]:
    """A raw client held by ``worker`` that reads nothing after its welcome.

    Which worker accepts is the kernel's choice, and a worker busy on a
    loaded machine wins it less often: up to 200 tries (seen: 50 not enough
    at load 11)."""
    for _ in range(200):
        raw = await RawClient.connect("127.0.0.1", c.server.port, rcvbuf=4096)
        welcome = ujson.loads(bytes((await raw.read_frame()).data))["data"]
        if welcome["worker"] == worker:
            return raw, welcome["id"]
        raw.close_socket()
    raise AssertionError(f"no connection landed on {worker}")


async def get_json(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await http.get(url, headers=FRESH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until(
    fetch: Callable[[], Any], want: Callable[[Any], bool], what: str
) -> Any:
    """Poll another process until ``want`` holds (bounded); the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(15)
    while True:
        value = await fetch()
        if want(value):
            return value
        assert loop.time() < deadline, f"never {what}: {value}"
        await asyncio.sleep(0.05)  # polling another process: no event to await


def per_worker(stats: dict[str, Any], key: str) -> dict[str, Any]:
    return {w: entry[key] for w, entry in stats["per_worker"].items()}


def connections_of(c: Cluster) -> dict[str, int]:
    return {w: len(c.on(w)) for w in worker_names()}


async def test_stats_and_metrics_are_cluster_wide_from_any_worker() -> None:
    async with cluster(env=ENV) as c, httpx.AsyncClient() as http:
        await c.cover(per_worker=2)
        for _ in range(3):  # uneven counts: three more, wherever they land
            await c.connect()
        conns = connections_of(c)
        total = len(c.clients)
        stats_url = c.server.url("/ws/stats")

        health = await until(
            lambda: get_json(http, c.server.url("/ws/health")),
            lambda h: h["workers"] == WORKERS,
            "all workers in health",
        )
        assert health == {
            "alive": True,
            "ready": True,
            "delivery": "relay",
            "relay": "ok",
            "backplane": None,
            "workers": WORKERS,
            "expected": WORKERS,
            "heard": WORKERS,
        }

        # Settled: every worker's connections, and its sample says that each
        # connection it ever opened got one "welcome" and sent nothing yet.
        def settled(stats: dict[str, Any]) -> bool:
            per = stats["per_worker"]
            return per_worker(stats, "connections") == conns and all(
                per[w]["messages_in"] == 0
                and per[w]["messages_out"] == per[w]["opened"]
                and per[w]["opened"] - per[w]["closed"] == conns[w]
                for w in worker_names()
            )

        base = await until(lambda: get_json(http, stats_url), settled, "settled")
        assert base["connections"] == total
        assert base["workers"] == WORKERS

        # Known traffic: 5 requests from every client (5 in, 5 "done" out),
        # then one broadcast from a client of worker 0 (1 in, 1 "done" and
        # one frame per connection out).
        for client in c.clients:
            for _ in range(5):
                assert await client.do("count") is not None
        sender = c.on(worker_names()[0])[0]
        await sender.do("broadcast", data="to all")
        for client in c.clients:
            assert (await client.ws.expect("b")).data == "to all"
        # Counted against the same answer's own "opened" (each open sent one
        # welcome), not against the baseline's: a worker's figures ride on its
        # beat, so "settled" can pass on an answer from before cover() closed
        # its last extra connection there (seen once under load).
        want_in = {w: 5 * conns[w] + (w == sender.worker) for w in worker_names()}

        def want_out(stats: dict[str, Any]) -> dict[str, int]:
            per = stats["per_worker"]
            return {
                w: per[w]["opened"] + 6 * conns[w] + (w == sender.worker)
                for w in worker_names()
            }

        def counted(stats: dict[str, Any]) -> bool:
            return per_worker(stats, "messages_in") == want_in and per_worker(
                stats, "messages_out"
            ) == want_out(stats)

        # Several answers in a row, from whichever workers take them, agree.
        answered_by: set[str] = set()
        for _ in range(8):
            stats = await until(lambda: get_json(http, stats_url), counted, "counted")
            answered_by.add(stats["answered_by"])
            assert stats["messages_in"] == 5 * total + 1
            assert stats["messages_out"] == stats["opened"] + 6 * total + 1
            assert stats["connections"] == total
            assert per_worker(stats, "connections") == conns
        print(f"/ws/stats answered by {sorted(answered_by)}")

        # The same figures in Prometheus' text format.
        async def fetch_metrics() -> Metrics:
            response = await http.get(c.server.url("/ws/metrics"), headers=FRESH)
            assert response.headers["content-type"] == (
                "text/plain; version=0.0.4; charset=utf-8"
            )
            return parse(response.text)

        metrics = await until(
            fetch_metrics,
            lambda m: (
                m.by("sanic_ws_messages_received_total", "worker") == want_in
                and m.by("sanic_ws_messages_sent_total", "worker") == want_out(stats)
            ),
            "the same figures in /metrics",
        )
        assert metrics.by("sanic_ws_connections", "worker") == conns
        assert metrics.value("sanic_ws_cluster_connections") == total
        assert metrics.value("sanic_ws_workers") == WORKERS
        assert set(metrics.by("sanic_ws_slow_consumers_closed_total", "worker")) == set(
            worker_names()
        )


async def test_rates_and_slow_clients_across_workers() -> None:
    async with cluster(env=ENV) as c, httpx.AsyncClient() as http:
        await c.cover(per_worker=2)
        stats_url = c.server.url("/ws/stats")
        await until(
            lambda: get_json(http, stats_url),
            lambda s: per_worker(s, "connections") == connections_of(c),
            "all connections",
        )

        # A client of worker 1 that stops reading, sent 200 kB messages from
        # worker 0 until its backlog passes WS_MAX_BACKPRESSURE: worker 1
        # drops it as a slow consumer (bounded: 100 messages at most).
        sender = c.on(worker_names()[0])[0]
        victim_worker = worker_names()[1]
        victim, victim_id = await stalled_client_on(c, victim_worker)
        for _ in range(100):
            await sender.do("send", to=victim_id, data="x" * 200_000)
            s = await get_json(http, stats_url)
            if per_worker(s, "slow_closed").get(victim_worker):
                break
        victim.close_socket()
        stats = await until(
            lambda: get_json(http, stats_url),
            lambda s: (
                per_worker(s, "slow_closed")
                == {w: int(w == victim_worker) for w in worker_names()}
                and per_worker(s, "connections") == connections_of(c)
            ),
            "the slow client counted on its worker",
        )
        assert stats["slow_closed"] == 1

        # Steady broadcasts for about 3 s: every worker's outgoing rate, as
        # the answering worker sees it, shows them.
        n = 600
        await sender.ws.send("do", {"op": "paced", "n": n, "pause": 0.05})
        stats = await until(
            lambda: get_json(http, stats_url),
            lambda s: (
                all(r > 0 for r in per_worker(s, "messages_out_per_second").values())
                and len(s["per_worker"]) == WORKERS
            ),
            "a positive rate on every worker",
        )
        assert stats["messages_out_per_second"] > 0
        for client in c.clients:  # every message arrived
            assert len(await drain(client, "burst", n)) == n


async def test_not_ready_until_every_worker_of_the_machine_is_heard() -> None:
    """While 3 of 4 workers still boot, the one serving says so: 503, with
    how many workers it hears and how many the machine runs. A load balancer
    sending clients then would get a server whose cluster-wide answers
    (counts, members, users) miss the workers still booting."""
    slow = units(3)
    async with (
        SanicProcess(
            "tests.apps.slow_boot:app",
            "--workers",
            str(WORKERS),
            ready_path="/up",  # any worker serving, the first one here
            env={"SLOW_BOOT_SECONDS": str(slow)},
        ) as server,
        httpx.AsyncClient() as http,
    ):
        early = await http.get(server.url("/ws/health"), headers=FRESH)
        assert early.status_code == 503, early.text
        body = early.json()
        assert body["ready"] is False and body["alive"] is True
        assert body["expected"] == WORKERS and body["heard"] < WORKERS

        async def health() -> httpx.Response:
            return await http.get(server.url("/ws/health"), headers=FRESH)

        ready = await until(health, lambda r: r.status_code == 200, "ready")
        assert ready.json()["ready"] is True
        assert ready.json()["heard"] == ready.json()["expected"] == WORKERS
        # Every worker booted: stop from here (see SanicProcess.stop).
        await server.wait_serving("/ws/health")
