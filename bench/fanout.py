"""Fan-out against the peers: one trigger, K broadcasts of ~100 bytes, C clients.

    python bench/fanout.py [--clients 100 1000] [--k 200] [--rounds 3]
                           [--servers ours naive websockets socketio ...]

Each server runs alone, pinned to core 0; the Node load client
(``bench/loadclient.mjs``, raw sockets, frames parsed in place) runs pinned to
core 1, opens C connections (spread over the server's nodes), sends one
trigger, and counts C*K frames: delivered messages/s from the trigger to the
last frame, and latency p50/p99 from the send time stamped in every message.
Servers interleave round by round; medians with ranges; ratios to the naive
Sanic loop of the same round. ``client-ceiling`` is not a server: it runs the
load client against a trivial Node server that sends pre-framed bytes, to
show the client's own ceiling. The peers are listed in ``bench/peers.py``.
"""

from __future__ import annotations

import argparse
import sys

from peers import PEERS, fmt, load_client, run_load, serving


def run_one(server: str, clients: int, k: int, stalled: int = 0) -> dict[str, float]:
    with serving(server) as served:
        options = ["--k", str(k), "--timeout", "60", "--stalled", str(stalled)]
        load = load_client(served, clients, *options)
        result = run_load(server, load)
    if result["received"] != result["expected"]:
        print(f"  {server}: only {result['received']}/{result['expected']}")
    return result


def table(
    results: dict[tuple[int, str], list[dict[str, float]]],
    clients: int,
    servers: list[str],
) -> list[str]:
    """The markdown table of one client count: medians (range), x naive."""
    lines = [
        "| server | delivered msg/s | x naive | p50 ms | p99 ms | complete |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = [x["rate"] for x in results.get((clients, "naive"), [])]
    for server in servers:
        runs = results[(clients, server)]
        rates = [x["rate"] for x in runs]
        ratio = "-"
        if base:
            ratio = fmt([a / b for a, b in zip(rates, base, strict=True)], 2)
        complete = sum(x["received"] == x["expected"] for x in runs)
        lines.append(
            f"| {server} | {fmt(rates)} | {ratio} |"
            f" {fmt([x['p50_ms'] for x in runs], 1)} |"
            f" {fmt([x['p99_ms'] for x in runs], 1)} | {complete}/{len(runs)} |"
        )
    return lines


def run(clients: list[int], k: int, rounds: int, servers: list[str]) -> list[str]:
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    for r in range(rounds):
        for c in clients:
            for server in servers:  # interleaved, round by round
                results.setdefault((c, server), []).append(run_one(server, c, k))
        print(f"fan-out: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    out = [
        f"Fan-out, K = {k} messages of ~100 bytes, {rounds} rounds; medians (range)."
    ]
    for c in clients:
        out += ["", f"C = {c} clients", "", *table(results, c, servers)]
    return out


def stall(clients: int, k: int, rounds: int, server: str = "ours") -> list[str]:
    """The others' fan-out with one stalled client among them, and without."""
    runs: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    for r in range(rounds):
        # Interleaved, and in turn first: the second run of a pair is often
        # a little slower, whichever it is.
        for stalled in (0, 1) if r % 2 == 0 else (1, 0):
            runs[stalled].append(run_one(server, clients, k, stalled))
        print(f"stall: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    rates = {s: [x["rate"] for x in v] for s, v in runs.items()}
    ratios = [a / b for a, b in zip(rates[1], rates[0], strict=True)]
    return [
        f"{server}, C = {clients} clients reading and K = {k}; medians (range)"
        f" of {rounds} rounds.",
        "",
        "| stalled clients | delivered msg/s to the others | p99 ms | complete |",
        "| --- | --- | --- | --- |",
        *(
            f"| {s} | {fmt(rates[s])} | {fmt([x['p99_ms'] for x in v], 1)} |"
            f" {sum(x['received'] == x['expected'] for x in v)}/{len(v)} |"
            for s, v in runs.items()
        ),
        "",
        f"With one stalled client: {fmt(ratios, 2)} times the throughput without.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=[*PEERS, "client-ceiling"])
    parser.add_argument(
        "--stall", action="store_true", help="ours with one stalled client and without"
    )
    args = parser.parse_args()
    if args.stall:
        print("\n".join(stall(max(args.clients), args.k, args.rounds)))
    else:
        print("\n".join(run(args.clients, args.k, args.rounds, args.servers)))


if __name__ == "__main__":
    main()
