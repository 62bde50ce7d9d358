"""Fan-out against the peers: one trigger, K broadcasts of ~100 bytes, C clients.

    python bench/fanout.py [--clients 100 1000] [--k 200 1000] [--rounds 3]
                           [--servers ours naive websockets socketio ...]
                           [--client native node]

Each server runs alone, pinned to core 0; the load client runs pinned to core
1, opens C connections (spread over the server's nodes), sends one trigger,
and counts C*K frames: delivered messages/s from the trigger to the last
frame, and latency p50/p99 from the send time stamped in every message. The
client is the native one (``bench/loadclient.c``, epoll, frames parsed in
place; built with ``cc`` on first use) when there is a C compiler, else Node's
(``bench/loadclient.mjs``); ``--client node`` picks Node's, ``--client native
node`` runs both, interleaved, for a comparison. Beside each figure: the
server's own CPU time per delivered message (user + system of every server
process, workers included, over the burst alone; ``bench/measure.py``), and
the client's CPU over the burst as a share of its wall time. Servers
interleave round by round; medians with ranges; ratios to the naive Sanic loop
of the same round. ``client-ceiling`` is not a server: a trivial native server
(Node's without a compiler) that sends pre-framed bytes, to show the client's
own ceiling; ``client-ceiling@N`` is the native one writing the burst in
batches of N bytes, each stamped as it is framed and written to every client
before the next: the throughput and p99 the kernel alone allows for writes of
that size. The peers are listed in ``bench/peers.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import native
from measure import run_load
from peers import PEERS, fmt, load_client, serving

#: The native client when it can be built: the Node one tops out near the
#: fastest servers (see docs/performance.md).
DEFAULT_CLIENT = "native" if native.compiler() else "node"

Result = dict[str, Any]


def run_one(
    server: str,
    clients: int,
    k: int,
    stalled: int = 0,
    client: str = DEFAULT_CLIENT,
    warmup: int = 0,
) -> Result:
    """One fresh server, C clients, one measured burst of K.

    ``warmup``: broadcasts of one burst before it, not measured: a server
    process's first burst pays for its cold start (memory it has not touched,
    caches), which a server up for a while does not (see docs/performance.md).
    """
    # Long enough for the slowest peer's million messages.
    timeout = 60 + clients * k // 20_000
    with serving(server) as served:
        options = ["--k", str(k), "--timeout", str(timeout), "--stalled", str(stalled)]
        if warmup:
            options += ["--warmup", str(warmup)]
        load = load_client(served, clients, *options, client=client)
        limit = timeout + 60 + (timeout if warmup else 0)
        result = run_load(server, load, served.pids, limit=limit)
    if result["received"] != result["expected"]:
        print(f"  {server}: only {result['received']}/{result['expected']}")
    return result


def busy(run: Result) -> float:
    """The client's CPU over the burst, as a share of the burst's wall time."""
    return 100 * run["client_cpu_ms"] / 1000 / run["seconds"] if run["seconds"] else 0


def table(
    results: dict[str, list[Result]], rows: list[str], base: str = "naive"
) -> list[str]:
    """The markdown table of one (C, K): medians (range), x ``base``.

    ``results`` holds each row's runs, round by round."""
    lines = [
        "| server | delivered msg/s | server CPU us/msg | of it in the kernel"
        " | x naive | p50 ms | p99 ms | client CPU | complete |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base_runs = results.get(base, [])
    for row in rows:
        runs = [x for x in results[row] if "failed" not in x]
        rates = [x["rate"] for x in runs]
        ratio = "-"
        if base_runs:  # round by round, where both ran
            pairs = zip(results[row], base_runs, strict=True)
            ratios = [
                a["rate"] / b["rate"]
                for a, b in pairs
                if "failed" not in a and "failed" not in b
            ]
            ratio = fmt(ratios, 2) if ratios else "-"
        complete = sum(x["received"] == x["expected"] for x in runs)
        lines.append(
            f"| {row} | {fmt(rates)} | {fmt([x['cpu_us'] for x in runs], 2)} |"
            f" {fmt([x['sys_us'] for x in runs], 2)} | {ratio} |"
            f" {fmt([x['p50_ms'] for x in runs], 1)} |"
            f" {fmt([x['p99_ms'] for x in runs], 1)} |"
            f" {fmt([busy(x) for x in runs])}% | {complete}/{len(results[row])} |"
        )
    return lines


def run(
    clients: list[int],
    ks: list[int],
    rounds: int,
    servers: list[str],
    kinds: tuple[str, ...] = (DEFAULT_CLIENT,),
    warmup: int | None = None,
) -> list[str]:
    """Every (C, K) for every server and client kind, interleaved round by round.

    ``warmup``: broadcasts before each measured burst (``None``: K)."""
    label = {
        (kind, s): s if len(kinds) == 1 else f"{s} [{kind}]"
        for kind in kinds
        for s in servers
    }
    results: dict[tuple[int, int], dict[str, list[Result]]] = {}
    for r in range(rounds):
        for k in ks:
            for c in clients:
                for server in servers:
                    for kind in kinds:
                        warm = k if warmup is None else warmup
                        try:
                            result = run_one(server, c, k, client=kind, warmup=warm)
                        except RuntimeError as exc:
                            # One peer failing one run (a load client that
                            # gave up on it) must not cost every other
                            # figure of the sitting: it shows as incomplete.
                            print(f"  {server}: failed: {exc}", file=sys.stderr)
                            result = {"failed": str(exc), "expected": c * k}
                        runs = results.setdefault((c, k), {})
                        runs.setdefault(label[kind, server], []).append(result)
        print(f"fan-out: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    out = [
        f"Fan-out, messages of ~100 bytes, {rounds} rounds; medians (range);"
        f" load client: {', '.join(kinds)}; warm-up burst before each:"
        f" {'K' if warmup is None else warmup}."
    ]
    for k in ks:
        for c in clients:
            out += ["", f"C = {c} clients, K = {k} ({c * k:,} messages per run)", ""]
            for kind in kinds:
                rows = [label[kind, s] for s in servers]
                if len(kinds) > 1:
                    out += [f"{kind} client:", ""]
                base = label.get((kind, "naive"), "naive")
                out += [*table(results[(c, k)], rows, base), ""]
    return out


def stall(
    clients: int,
    k: int,
    rounds: int,
    server: str = "ours",
    client: str = DEFAULT_CLIENT,
    into: list[Result] | None = None,
) -> list[str]:
    """The others' fan-out with one stalled client among them, and without.

    Every run is also appended to ``into``, if given (to check for losses)."""
    runs: dict[int, list[Result]] = {0: [], 1: []}
    for r in range(rounds):
        # Interleaved, and in turn first: the second run of a pair is often
        # a little slower, whichever it is.
        for stalled in (0, 1) if r % 2 == 0 else (1, 0):
            runs[stalled].append(run_one(server, clients, k, stalled, client))
        print(f"stall: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    if into is not None:
        into += runs[0] + runs[1]
    rates = {s: [x["rate"] for x in v] for s, v in runs.items()}
    ratios = [a / b for a, b in zip(rates[1], rates[0], strict=True)]
    return [
        f"{server}, C = {clients} clients reading and K = {k}; medians (range)"
        f" of {rounds} rounds.",
        "",
        "| stalled clients | delivered msg/s to the others | server CPU us/msg"
        " | p99 ms | complete |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {s} | {fmt(rates[s])} | {fmt([x['cpu_us'] for x in v], 2)} |"
            f" {fmt([x['p99_ms'] for x in v], 1)} |"
            f" {sum(x['received'] == x['expected'] for x in v)}/{len(v)} |"
            for s, v in runs.items()
        ),
        "",
        f"With one stalled client: {fmt(ratios, 2)} times the throughput without.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--k", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=[*PEERS, "client-ceiling"])
    parser.add_argument(
        "--client", nargs="+", choices=["native", "node"], default=[DEFAULT_CLIENT]
    )
    parser.add_argument(
        "--stall", action="store_true", help="ours with one stalled client and without"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="broadcasts of an unmeasured burst before each measured one (default:"
        " K; 0: none, each burst is the server process's first)",
    )
    args = parser.parse_args()
    if args.stall:
        for kind in args.client:
            print(f"{kind} client:")
            lines = stall(max(args.clients), max(args.k), args.rounds, client=kind)
            print("\n".join(lines))
    else:
        kinds = tuple(args.client)
        lines = run(args.clients, args.k, args.rounds, args.servers, kinds, args.warmup)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
