"""Chat: C clients each sending at a fixed rate, every message broadcast to all.

    python bench/chat.py [--clients 100] [--rates 10 20 30 ...]
                         [--duration 3] [--rounds 3]
                         [--servers naive ours websockets node-ws socketify]

For each server (pinned to core 0) and each rate R (messages/s per client),
the Node load client (core 1) sends C*R messages/s for ``--duration`` seconds;
the server broadcasts each to all C clients. A rate passes when every delivery
arrived and p99 latency (from the send time stamped in the message) is at
most 100 ms. Figure: the highest passing rate, per round; medians (range).
Rates rise until one fails. Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from fanout import PEERS, load_client, run_load, serving

P99_LIMIT_MS = 100.0
RATES = [10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480]


def highest_rate(server: str, clients: int, rates: list[int], duration: float) -> int:
    best = 0
    for rate in rates:
        samples = int(clients * clients * rate * duration * 1.2) + 1000
        options = ["--rate", str(rate), "--duration", str(duration)]
        with serving(server) as (port, _):
            load = load_client(port, clients, *options, "--samples", str(samples))
            res = run_load(server, load)
        p99 = res["p99_ms"] if res["p99_ms"] is not None else float("inf")
        ok = res["received"] == res["expected"] and p99 <= P99_LIMIT_MS
        print(
            f"  {server} R={rate}: {res['received']}/{res['expected']}"
            f" p99 {res['p99_ms']:.1f} ms {'ok' if ok else 'FAIL'}",
            file=sys.stderr,
            flush=True,
        )
        if not ok:
            break
        best = rate
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rates", type=int, nargs="+", default=RATES)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=PEERS,
    )
    args = parser.parse_args()
    best: dict[str, list[int]] = {s: [] for s in args.servers}
    for r in range(args.rounds):
        for server in args.servers:
            best[server].append(
                highest_rate(server, args.clients, args.rates, args.duration)
            )
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(
        f"chat, {args.clients} clients, {args.duration:.0f} s per rate,"
        f" p99 <= {P99_LIMIT_MS:.0f} ms, {args.rounds} rounds; medians (range)"
    )
    print("| server | highest rate per client (msg/s) | deliveries/s | x naive |")
    print("| --- | --- | --- | --- |")
    base = statistics.median(best.get("naive", [0])) or None
    for server, values in best.items():
        med = statistics.median(values)
        ratio = f"{med / base:.2f}" if base else "-"
        print(
            f"| {server} | {med:g} ({min(values)} - {max(values)}) |"
            f" {med * args.clients * args.clients:,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
