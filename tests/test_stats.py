"""The pure side of operations: counters, rates, cluster figures, Prometheus text."""

from __future__ import annotations

from typing import Any

from sanic_ws_ext.stats import (
    COUNTERS,
    Counters,
    RateMeter,
    cluster_stats,
    prometheus_text,
)

from .prom import parse


def test_counters_are_slotted_ints() -> None:
    counters = Counters()
    assert not hasattr(counters, "__dict__")
    counters.messages_in += 3
    counters.slow_closed += 1
    assert counters.as_dict() == {
        "closed": 0,
        "compressed_in": 0,
        "compressed_out": 0,
        "messages_in": 3,
        "messages_out": 0,
        "opened": 0,
        "replaced": 0,
        "slow_closed": 1,
        "volatile_skipped": 0,
    }


def test_rates_come_from_deltas_between_samples() -> None:
    meter = RateMeter()
    assert meter.update(10.0, 100, 1000) == (0.0, 0.0)  # no interval yet
    assert meter.update(10.5, 150, 1400) == (100.0, 800.0)
    assert meter.rates == (100.0, 800.0)  # until the next update
    assert meter.update(12.5, 150, 1400) == (0.0, 0.0)
    assert meter.update(12.5, 160, 1400) == (0.0, 0.0)  # no time passed


def sample(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    base.update(
        messages_in_per_second=0.0,
        messages_out_per_second=0.0,
        rooms=0,
        backplane=None,
    )
    base.update(values)
    return base


def two_workers() -> dict[str, Any]:
    return cluster_stats(
        answered_by="w0",
        samples={
            "w0": sample(
                messages_in=10,
                messages_out=40,
                messages_in_per_second=2.5,
                rooms=3,
                users=2,
            ),
            "w1": sample(
                messages_in=5,
                slow_closed=2,
                messages_out_per_second=1.25,
                rooms=1,
                users=3,
            ),
        },
        ages={"w0": 0.0, "w1": 0.4},
        # w2: a connection count without a sample (listed with zero counters).
        connections={"w0": 3, "w1": 1, "w2": 2},
    )


def test_cluster_stats_sum_the_workers() -> None:
    stats = two_workers()
    assert stats["answered_by"] == "w0"
    assert (stats["connections"], stats["rooms"], stats["users"]) == (6, 4, 5)
    assert stats["workers"] == 3
    assert stats["messages_in"] == 15
    assert stats["messages_out"] == 40
    assert stats["slow_closed"] == 2
    assert stats["messages_in_per_second"] == 2.5
    assert stats["messages_out_per_second"] == 1.25
    per = stats["per_worker"]
    assert list(per) == ["w0", "w1", "w2"]
    assert per["w1"]["connections"] == 1 and per["w1"]["age"] == 0.4
    assert per["w2"]["connections"] == 2 and per["w2"]["messages_in"] == 0


def test_prometheus_text_has_the_same_figures() -> None:
    stats = two_workers()
    metrics = parse(prometheus_text(stats))
    assert metrics.types["sanic_ws_connections"] == "gauge"
    assert metrics.types["sanic_ws_messages_received_total"] == "counter"
    assert metrics.by("sanic_ws_connections", "worker") == {
        "w0": 3,
        "w1": 1,
        "w2": 2,
    }
    assert metrics.by("sanic_ws_messages_received_total", "worker") == {
        "w0": 10,
        "w1": 5,
        "w2": 0,
    }
    assert metrics.value("sanic_ws_slow_consumers_closed_total", worker="w1") == 2
    assert metrics.value("sanic_ws_messages_received_per_second", worker="w0") == 2.5
    assert metrics.value("sanic_ws_cluster_connections") == 6
    assert metrics.value("sanic_ws_workers") == 3
    # Every family has its HELP; no backplane family without a backplane.
    assert set(metrics.helps) == set(metrics.types)
    assert "sanic_ws_backplane_connected" not in metrics.types


def test_prometheus_labels_are_escaped() -> None:
    odd = 'node"a\\b\nc/Sanic-Server-0-0'
    stats = cluster_stats(
        answered_by=odd,
        samples={odd: sample(messages_in=7, backplane="reconnecting")},
        ages={},
        connections={odd: 1},
    )
    text = prometheus_text(stats)
    assert "\nc/" not in text  # the newline in the name is escaped
    metrics = parse(text)
    assert metrics.value("sanic_ws_messages_received_total", worker=odd) == 7
    assert metrics.value("sanic_ws_backplane_connected", worker=odd) == 0
