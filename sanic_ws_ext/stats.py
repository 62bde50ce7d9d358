"""Counters, per-worker samples, cluster-wide stats and Prometheus text.

Pure: values in, values out. The manager counts, samples once per beat and
sends its sample to every peer on the beat it already publishes; every
process keeps the latest sample of each peer, so any worker can answer for
the whole cluster without asking anyone.

Rules this module keeps:

- Counting costs an integer increment: once per message received, once per
  operation sent (a broadcast adds the number of frames it queued, in one
  addition), once per connection opened, closed or dropped as slow. Nothing
  is kept per connection.
- Counters only grow, from zero at each start of a worker process
  (Prometheus takes a drop for a restart). Rates are computed by the worker
  that counts, from its own monotonic clock, over the last beat.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import ujson

__all__ = [
    "COUNTERS",
    "DELIVERY_COUNTERS",
    "Counters",
    "RateMeter",
    "clean_sample",
    "cluster_stats",
    "prometheus_text",
]


class Counters:
    """What one process counts, as plain integers."""

    __slots__ = (
        "closed",
        "compressed_in",
        "compressed_out",
        "messages_in",
        "messages_out",
        "opened",
        "replaced",
        "slow_closed",
        "volatile_skipped",
    )

    def __init__(self) -> None:
        #: Messages received from clients (text and binary, whole messages).
        self.messages_in = 0
        #: Data frames queued to clients: envelopes, raw frames, presence
        #: events and error frames (not pings, pongs or close frames).
        self.messages_out = 0
        #: Connections upgraded, and connections gone.
        self.opened = 0
        self.closed = 0
        #: Connections closed with 1008 "slow consumer" (WS_MAX_BACKPRESSURE).
        self.slow_closed = 0
        #: Volatile frames not queued for a receiver that was behind.
        self.volatile_skipped = 0
        #: Keyed frames that replaced an unsent one of the same key.
        self.replaced = 0
        #: Messages that came compressed (permessage-deflate), and data
        #: frames queued compressed (a broadcast to 1,000 counts 1,000).
        self.compressed_in = 0
        self.compressed_out = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


#: Counters a sample carries, beyond :class:`Counters`: filled in from the
#: delivery backend's own counts.
DELIVERY_COUNTERS = (
    "relay_dropped",
    "backplane_reconnects",
    "backplane_lost",
    "backplane_missed",
)
#: Every counter of a sample, in the order they are shown.
COUNTERS = (*Counters.__slots__, *DELIVERY_COUNTERS)


class RateMeter:
    """Messages per second in and out, over the interval between samples."""

    __slots__ = ("_at", "_in", "_out", "rates")

    def __init__(self) -> None:
        self._at: float | None = None
        self._in = 0
        self._out = 0
        #: ``(in, out)`` per second over the last interval, until the next.
        self.rates = (0.0, 0.0)

    def update(
        self, now: float, messages_in: int, messages_out: int
    ) -> tuple[float, float]:
        """Rates since the previous call (0.0 at the first)."""
        rate_in = rate_out = 0.0
        if self._at is not None and now > self._at:
            elapsed = now - self._at
            rate_in = (messages_in - self._in) / elapsed
            rate_out = (messages_out - self._out) / elapsed
        self._at, self._in, self._out = now, messages_in, messages_out
        self.rates = (round(rate_in, 3), round(rate_out, 3))
        return self.rates


#: The numbers a worker's sample may carry, besides its COUNTERS.
_SAMPLE_NUMBERS = (
    "messages_in_per_second",
    "messages_out_per_second",
    "connections",
    "rooms",
)


def clean_sample(raw: bytes) -> dict[str, Any]:
    """A peer's sample as it rode on its beat, keeping only what is known.

    A peer may be hostile (anyone who can publish to the Redis channel) or of
    another version: anything but a finite number for a known figure, or a
    string for ``backplane``, is left out, so one peer cannot break
    ``/stats`` for every worker that hears it.
    """
    try:
        decoded = ujson.loads(raw)
    except (ValueError, OverflowError, RecursionError):
        return {}
    if not isinstance(decoded, dict):
        return {}
    sample: dict[str, Any] = {}
    for key in (*COUNTERS, *_SAMPLE_NUMBERS):
        value = decoded.get(key)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            sample[key] = value
    backplane = decoded.get("backplane")
    if backplane is None or isinstance(backplane, str):
        sample["backplane"] = backplane
    return sample


def cluster_stats(
    *,
    answered_by: str,
    samples: Mapping[str, Mapping[str, Any]],
    ages: Mapping[str, float],
    connections: Mapping[str, int],
) -> dict[str, Any]:
    """The cluster's figures, JSON-able, from every worker's latest sample.

    Everything comes from each worker's sample, ``ages[worker]`` seconds old
    (the answering worker's own is live). ``rooms`` and ``users`` are summed
    over workers: a room with members on two workers counts twice (knowing
    the distinct ones would mean replicating every membership).
    """
    workers: dict[str, dict[str, Any]] = {}
    for name in sorted(set(samples) | set(connections)):
        sample = samples.get(name, {})
        entry: dict[str, Any] = {
            "connections": connections.get(name, 0),
            "rooms": sample.get("rooms", 0),
            "messages_in_per_second": sample.get("messages_in_per_second", 0.0),
            "messages_out_per_second": sample.get("messages_out_per_second", 0.0),
        }
        for counter in COUNTERS:
            entry[counter] = sample.get(counter, 0)
        entry["backplane"] = sample.get("backplane")
        entry["age"] = round(ages.get(name, 0.0), 3)
        workers[name] = entry
    totals: dict[str, Any] = {
        "connections": sum(connections.values()),
        "rooms": sum(int(s.get("rooms", 0)) for s in samples.values()),
        "users": sum(int(s.get("users", 0)) for s in samples.values()),
        "workers": len(workers),
    }
    for key in ("messages_in_per_second", "messages_out_per_second"):
        totals[key] = round(sum(w[key] for w in workers.values()), 3)
    for counter in COUNTERS:
        totals[counter] = sum(w[counter] for w in workers.values())
    return {"answered_by": answered_by, **totals, "per_worker": workers}


# name, type, help, key in a worker's entry
_PER_WORKER: tuple[tuple[str, str, str, str], ...] = (
    ("connections", "gauge", "Open websocket connections.", "connections"),
    ("rooms", "gauge", "Rooms with members on this worker.", "rooms"),
    (
        "messages_received_total",
        "counter",
        "Messages received from clients.",
        "messages_in",
    ),
    (
        "messages_sent_total",
        "counter",
        "Data frames queued to clients (a broadcast counts one per receiver).",
        "messages_out",
    ),
    (
        "messages_received_per_second",
        "gauge",
        "Messages received per second over the last beat.",
        "messages_in_per_second",
    ),
    (
        "messages_sent_per_second",
        "gauge",
        "Data frames queued per second over the last beat.",
        "messages_out_per_second",
    ),
    ("connections_opened_total", "counter", "Connections upgraded.", "opened"),
    ("connections_closed_total", "counter", "Connections gone.", "closed"),
    (
        "slow_consumers_closed_total",
        "counter",
        "Connections closed with 1008 for passing WS_MAX_BACKPRESSURE.",
        "slow_closed",
    ),
    (
        "relay_dropped_total",
        "counter",
        "Relay datagrams dropped for a worker that did not read.",
        "relay_dropped",
    ),
    (
        "backplane_reconnects_total",
        "counter",
        "Reconnections of the Redis backplane.",
        "backplane_reconnects",
    ),
    (
        "backplane_lost_total",
        "counter",
        "Ops dropped because the backplane buffer was full.",
        "backplane_lost",
    ),
    (
        "backplane_missed_total",
        "counter",
        "Backplane messages from other processes never received.",
        "backplane_missed",
    ),
    (
        "stats_age_seconds",
        "gauge",
        "Age of the worker's figures as seen by the answering worker.",
        "age",
    ),
)

_CLUSTER: tuple[tuple[str, str, str], ...] = (
    ("cluster_connections", "Open connections in the cluster.", "connections"),
    ("cluster_rooms", "Rooms with at least one member in the cluster.", "rooms"),
    ("cluster_users", "Distinct users connected to the cluster.", "users"),
    ("workers", "Worker processes the answering worker knows of.", "workers"),
)


def _label(value: str) -> str:
    """A label value escaped as the exposition format wants."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


def prometheus_text(stats: Mapping[str, Any], prefix: str = "sanic_ws") -> str:
    """``stats`` (from :func:`cluster_stats`) in Prometheus' text format 0.0.4.

    Per-worker series carry a ``worker`` label; cluster gauges have none.
    With the Redis backplane, ``sanic_ws_backplane_connected`` says per worker
    whether its link is up (1) or not (0).
    """
    workers: Mapping[str, Mapping[str, Any]] = stats["per_worker"]
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: Iterable[str]) -> None:
        lines.append(f"# HELP {prefix}_{name} {help_}")
        lines.append(f"# TYPE {prefix}_{name} {kind}")
        lines.extend(samples)

    for name, kind, help_, key in _PER_WORKER:
        family(
            name,
            kind,
            help_,
            (
                f'{prefix}_{name}{{worker="{_label(worker)}"}} {_number(entry[key])}'
                for worker, entry in workers.items()
            ),
        )
    backplane = {w: e["backplane"] for w, e in workers.items() if e["backplane"]}
    if backplane:
        family(
            "backplane_connected",
            "gauge",
            "Whether the worker's Redis link is connected (1) or not (0).",
            (
                f'{prefix}_backplane_connected{{worker="{_label(worker)}"}} '
                f"{int(state == 'connected')}"
                for worker, state in backplane.items()
            ),
        )
    for name, help_, key in _CLUSTER:
        family(name, "gauge", help_, (f"{prefix}_{name} {_number(stats[key])}",))
    return "\n".join(lines) + "\n"
