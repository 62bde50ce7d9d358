"""Request and reply: round trips per second and their latency.

    python bench/requests.py [--clients 50] [--duration 5] [--rounds 3]
                             [--servers ours socketio client-ceiling
                                        ours-2w-same ours-2w-across
                                        socketio-2w-redis-across]

Each server runs pinned to core 0 (its workers too); the Node client
(``bench/requestclient.mjs``, core 1) opens C connections, each keeping one
request in flight. One worker (``ours``, ``socketio``): ours sends
``{"type": "add", "ref": ...}`` and waits for its ``reply``;
python-socketio's gets an event with an ack id, what its ``call()`` and a
client's emit-with-ack wait on. The handler returns a sum either way.

Across workers (``ours-2w-across``): a 2-worker Sanic server (the relay
between them); each connection asks the server to ask a peer connection on
the *other* worker (``ask_peer``), whose handler awaits
``conn.manager.request(peer, "add", ...)`` and replies with the peer's
answer: a round trip is the client's request, the server's request to the
peer, across the relay both ways. ``ours-2w-same`` is the same with the peer
on the asker's own worker (no relay), to tell the relay's share.
``socketio-2w-redis-across`` is python-socketio's ``call()`` to a client on
the other uvicorn worker, through its Redis manager (the only way its
workers reach each other; the machine's shared Redis, a channel per run).

``client-ceiling`` is not a server: a native one (``bench/servers/ceiling.c``;
the Node ``ceiling.mjs`` without a compiler) that answers every request frame
at once, the cheapest reply there is, to show the client's own limit.

Figures: round trips per second, the servers' CPU per round trip (every
server process's and its workers' /proc counters, ``bench/measure.py``,
from the connected client's start to its end, divided by the round trips
made meanwhile, warm-up included; read once the servers' CPU went quiet
after their start),
p50/p99 in ms, and the client's CPU as a share of the run (near 100%: the
client was the limit); medians of ``--rounds`` runs (range), servers
interleaved round by round. Exits non-zero if a reply carried a wrong sum.
"""

from __future__ import annotations

import argparse
import resource
import sys
from typing import Any

from measure import quiet, run_load
from peers import BENCH, fmt, serving

#: A row: the server it runs, and whom the server asks (None: nobody, the
#: handler answers itself).
CASES: dict[str, tuple[str, str | None]] = {
    "ours": ("ours", None),
    "socketio": ("socketio", None),
    "client-ceiling": ("client-ceiling", None),
    "ours-2w-same": ("ours-2w", "same"),
    "ours-2w-across": ("ours-2w", "across"),
    "socketio-2w-redis-across": ("socketio-2w-redis", "across"),
}


def once(case: str, clients: int, duration: float) -> dict[str, Any]:
    server, pair = CASES[case]
    with serving(server) as served:
        quiet(served.pids)  # workers done starting: their start is not a cost
        command = [
            "taskset", "-c", "1", "node", str(BENCH / "requestclient.mjs"),
            "--url", served.urls[0], "--proto", served.proto,
            "--clients", str(clients), "--duration", str(duration),
        ]  # fmt: skip
        if pair:
            command += ["--pair", pair]
        client = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The servers' CPU from the connected, paired client's start to its
        # end (warm-up included), per round trip made in that time.
        result = run_load(case, command, served.pids, limit=duration * 4 + 60)
        # Before the servers end: only the client is a waited-for child yet.
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # How busy the client was (near 100%: the client, not the server, was
    # the limit); its connecting too, a small part of a run of seconds.
    used = (after.ru_utime + after.ru_stime) - (client.ru_utime + client.ru_stime)
    result["client_cpu_pct"] = 100 * used / duration
    if case == "client-ceiling":
        result["wrong"] = 0  # its replies carry no sum
    print(
        f"  {case}: {result['round_trips_per_s']:,.0f} round trips/s"
        f" p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return result


def run(
    clients: int, duration: float, rounds: int, cases: list[str]
) -> tuple[list[dict[str, str]], list[str]]:
    """The table's rows, and the cases that got a wrong reply."""
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    for _ in range(rounds):  # servers interleaved round by round
        for case in cases:
            runs[case].append(once(case, clients, duration))
    rows = [
        {
            "server": case,
            "round trips/s": fmt([r["round_trips_per_s"] for r in done]),
            "server CPU us/round trip": fmt([r["cpu_us"] for r in done], 1),
            "p50 ms": fmt([r["p50_ms"] for r in done], 2),
            "p99 ms": fmt([r["p99_ms"] for r in done], 2),
            "client CPU": fmt([r["client_cpu_pct"] for r in done]) + "%",
        }
        for case, done in runs.items()
    ]
    wrong = [case for case, done in runs.items() if any(r["wrong"] for r in done)]
    return rows, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=list(CASES), choices=CASES)
    args = parser.parse_args()
    rows, wrong = run(args.clients, args.duration, args.rounds, args.servers)
    print(f"{args.clients} clients, {args.rounds} rounds; medians (range).\n")
    names = list(rows[0])
    print("| " + " | ".join(names) + " |")
    print("|" + " --- |" * len(names))
    for row in rows:
        print("| " + " | ".join(row[name] for name in names) + " |")
    if wrong:
        sys.exit(f"wrong sums in the replies of: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
