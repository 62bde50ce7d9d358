"""Chat: C clients each sending at a fixed rate, every message broadcast to all.

    python bench/chat.py [--clients 100] [--rates 10 20 40 ...] [--refine 3]
                         [--duration 2] [--rounds 3] [--servers ...]

For each server (pinned to core 0) and each rate R (messages/s per client),
the load client (core 1; the native one when there is a C compiler, else
Node's, or as ``--client`` says) sends C*R messages/s for ``--duration`` seconds;
the server broadcasts each to all C clients. A rate passes when every delivery
arrived and p99 latency (from the send time stamped in the message) is at
most 100 ms. Rates rise through the grid until one fails, then ``--refine``
bisection steps between the last pass and the first failure. Figure: the
highest passing rate, per round; medians (range); ratios to socketify (uWS)
and to the naive loop; beside it, the server's own CPU time per delivered
message at that rate (all its processes, over the run alone:
``bench/measure.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from fanout import DEFAULT_CLIENT
from measure import run_load
from peers import PEERS, SAMPLE_EVERY, fmt, load_client, serving

P99_LIMIT_MS = 100.0
#: Up to 5,120: the client's ceiling passed 1,280, the grid's old end, so
#: its figure was the grid's and not the client's (2026-12-03: ours reached
#: 640, half of it).
RATES = [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120]


def passes(
    server: str, clients: int, rate: int, duration: float, client: str
) -> tuple[bool, dict[str, Any]]:
    samples = int(clients * clients * rate * duration * 1.2 / SAMPLE_EVERY) + 1000
    options = ["--rate", str(rate), "--duration", str(duration)]
    with serving(server) as served:
        options += ["--samples", str(samples)]
        load = load_client(served, clients, *options, client=client)
        res = run_load(server, load, served.pids)
    p99 = res["p99_ms"] if res["p99_ms"] is not None else float("inf")
    ok = res["received"] == res["expected"] and p99 <= P99_LIMIT_MS
    print(
        f"  {server} R={rate}: {res['received']}/{res['expected']}"
        f" p99 {p99:.1f} ms {res['cpu_us']:.2f} us/msg {'ok' if ok else 'FAIL'}",
        file=sys.stderr,
        flush=True,
    )
    return ok, res


def highest_rate(
    server: str,
    clients: int,
    rates: list[int],
    duration: float,
    refine: int,
    client: str = DEFAULT_CLIENT,
) -> tuple[int, dict[str, Any] | None]:
    """The highest passing rate, and the run that passed at it."""
    best, failed, at_best = 0, None, None
    for rate in rates:
        ok, res = passes(server, clients, rate, duration, client)
        if not ok:
            failed = rate
            break
        best, at_best = rate, res
    for _ in range(refine):
        if failed is None:
            break
        mid = (best + failed) // 2
        if mid in (best, failed):
            break
        ok, res = passes(server, clients, mid, duration, client)
        if ok:
            best, at_best = mid, res
        else:
            failed = mid
    return best, at_best


def run(
    clients: int,
    rates: list[int],
    refine: int,
    duration: float,
    rounds: int,
    servers: list[str],
    client: str = DEFAULT_CLIENT,
    into: list[dict[str, Any]] | None = None,
    bases: tuple[str, ...] = ("socketify", "naive"),
) -> list[str]:
    """The table; each passing run at a highest rate is appended to ``into``.

    ``bases``: the servers each is compared with (a column each).
    """
    best: dict[str, list[int]] = {s: [] for s in servers}
    cpu: dict[str, list[float]] = {s: [] for s in servers}
    for r in range(rounds):
        for server in servers:
            rate, res = highest_rate(server, clients, rates, duration, refine, client)
            best[server].append(rate)
            if res is not None:
                cpu[server].append(res["cpu_us"])
                if into is not None:
                    into.append(res)
        print(f"chat: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    out = [
        f"Chat, {clients} clients, {duration:g} s per rate, p99 <= {P99_LIMIT_MS:g} ms,"
        f" {rounds} rounds; medians (range); load client: {client}.",
        "",
        "| server | highest rate per client (msg/s) | deliveries/s"
        " | server CPU us/msg |" + "".join(f" x {b} |" for b in bases),
        "| --- | --- | --- | --- |" + " --- |" * len(bases),
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
            f" {med * clients * clients:,.0f} |"
            f" {fmt(cpu[server], 2) if cpu[server] else '-'} |"
            + "".join(f" {ratio(server, b)} |" for b in bases)
        )
    return out


def typed(
    clients: int,
    rates: list[int],
    refine: int,
    duration: float,
    rounds: int,
    client: str = DEFAULT_CLIENT,
    into: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Typed messages' cost: ours with a typed chat handler (a dataclass
    validated per message, the typed object broadcast) against ours; target
    >= 0.8x. Rounds alternate the two, so load drifts touch both."""
    lines = run(
        clients, rates, refine, duration, rounds, ["ours", "ours-typed"],
        client, into, bases=("ours",),
    )  # fmt: skip
    lines[0] = lines[0].replace("Chat,", "Typed chat against untyped,")
    # The highest rate is a threshold on p99, which a shared machine's load
    # moves by 2x between rounds; the server's CPU per delivered message at
    # one rate both pass is the steadier cost: its inverse ratio is the
    # throughput ratio a CPU-bound server would see.
    same = rates[min(2, len(rates) - 1)]
    cpu: dict[str, list[float]] = {"ours": [], "ours-typed": []}
    for _ in range(max(rounds, 3)):
        for server in cpu:
            ok, res = passes(server, clients, same, duration, client)
            if ok:
                cpu[server].append(res["cpu_us"])
    if cpu["ours"] and cpu["ours-typed"]:
        plain = statistics.median(cpu["ours"])
        typed_ = statistics.median(cpu["ours-typed"])
        lines += [
            "",
            f"At {same} msg/s per client ({same * clients * clients:,} deliveries/s),"
            f" server CPU per delivered message, median of {len(cpu['ours'])} and"
            f" {len(cpu['ours-typed'])} runs: ours {fmt(cpu['ours'], 2)} us,"
            f" ours-typed {fmt(cpu['ours-typed'], 2)} us: typed throughput"
            f" {plain / typed_:.2f}x untyped (CPU-bound; target >= 0.8x).",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rates", type=int, nargs="+", default=RATES)
    parser.add_argument("--refine", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=[*PEERS, "client-ceiling"])
    parser.add_argument("--client", choices=["native", "node"], default=DEFAULT_CLIENT)
    parser.add_argument(
        "--typed", action="store_true", help="only ours-typed against ours"
    )
    args = parser.parse_args()
    if args.typed:
        lines = typed(
            args.clients,
            args.rates,
            args.refine,
            args.duration,
            args.rounds,
            args.client,
        )
        print("\n".join(lines))
        return
    lines = run(
        args.clients,
        args.rates,
        args.refine,
        args.duration,
        args.rounds,
        args.servers,
        args.client,
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
