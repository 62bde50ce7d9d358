"""Chat: C clients each sending at a fixed rate, every message broadcast to all.

    python bench/chat.py [--clients 100] [--rates 10 20 40 ...] [--refine 3]
                         [--duration 2] [--rounds 3] [--servers ...]

For each server (pinned to core 0) and each rate R (messages/s per client),
the Node load client (core 1) sends C*R messages/s for ``--duration`` seconds;
the server broadcasts each to all C clients. A rate passes when every delivery
arrived and p99 latency (from the send time stamped in the message) is at
most 100 ms. Rates rise through the grid until one fails, then ``--refine``
bisection steps between the last pass and the first failure. Figure: the
highest passing rate, per round; medians (range); ratios to socketify (uWS)
and to the naive loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from peers import PEERS, SAMPLE_EVERY, fmt, load_client, run_load, serving

P99_LIMIT_MS = 100.0
RATES = [10, 20, 40, 80, 160, 320, 640, 1280]


def passes(server: str, clients: int, rate: int, duration: float) -> bool:
    samples = int(clients * clients * rate * duration * 1.2 / SAMPLE_EVERY) + 1000
    options = ["--rate", str(rate), "--duration", str(duration)]
    with serving(server) as served:
        load = load_client(served, clients, *options, "--samples", str(samples))
        res = run_load(server, load)
    p99 = res["p99_ms"] if res["p99_ms"] is not None else float("inf")
    ok = res["received"] == res["expected"] and p99 <= P99_LIMIT_MS
    print(
        f"  {server} R={rate}: {res['received']}/{res['expected']}"
        f" p99 {p99:.1f} ms {'ok' if ok else 'FAIL'}",
        file=sys.stderr,
        flush=True,
    )
    return ok


def highest_rate(
    server: str, clients: int, rates: list[int], duration: float, refine: int
) -> int:
    best, failed = 0, None
    for rate in rates:
        if not passes(server, clients, rate, duration):
            failed = rate
            break
        best = rate
    for _ in range(refine):
        if failed is None:
            break
        mid = (best + failed) // 2
        if mid in (best, failed):
            break
        if passes(server, clients, mid, duration):
            best = mid
        else:
            failed = mid
    return best


def run(
    clients: int,
    rates: list[int],
    refine: int,
    duration: float,
    rounds: int,
    servers: list[str],
) -> list[str]:
    best: dict[str, list[int]] = {s: [] for s in servers}
    for r in range(rounds):
        for server in servers:
            best[server].append(highest_rate(server, clients, rates, duration, refine))
        print(f"chat: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    out = [
        f"Chat, {clients} clients, {duration:g} s per rate, p99 <= {P99_LIMIT_MS:g} ms,"
        f" {rounds} rounds; medians (range).",
        "",
        "| server | highest rate per client (msg/s) | deliveries/s"
        " | x socketify | x naive |",
        "| --- | --- | --- | --- | --- |",
    ]

    def ratio(server: str, base: str) -> str:
        if base not in best or not all(best[base]):
            return "-"
        values = [a / b for a, b in zip(best[server], best[base], strict=True)]
        return fmt(values, 2)

    for server, values in best.items():
        med = statistics.median(values)
        out.append(
            f"| {server} | {med:g} ({min(values)} - {max(values)}) |"
            f" {med * clients * clients:,.0f} | {ratio(server, 'socketify')} |"
            f" {ratio(server, 'naive')} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rates", type=int, nargs="+", default=RATES)
    parser.add_argument("--refine", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=[*PEERS, "client-ceiling"])
    args = parser.parse_args()
    lines = run(
        args.clients, args.rates, args.refine, args.duration, args.rounds, args.servers
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
