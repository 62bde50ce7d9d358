"""Request and reply: round trips per second and their latency, one worker.

    python bench/requests.py [--clients 50] [--duration 5] [--rounds 3]
                             [--servers ours socketio]

Each server runs one process pinned to core 0; the Node client
(``bench/requestclient.mjs``, core 1) opens C connections, each keeping one
request in flight: ours sends ``{"type": "add", "ref": ...}`` and waits for
its ``reply``; python-socketio's gets an event with an ack id, what its
``call()`` and a client's emit-with-ack wait on. The handler returns a sum
either way. Figures: round trips per second, the server's CPU per round
trip (its own /proc counters, ``bench/measure.py``), p50/p99 in ms, and the
client's CPU as a share of the run (near 100%: the client was the limit);
medians of ``--rounds`` runs (range), servers interleaved round by round.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from measure import cpu_seconds
from peers import BENCH, fmt, serving

SERVERS = ["ours", "socketio"]


def once(server: str, clients: int, duration: float) -> dict[str, float]:
    with serving(server) as served:
        command = [
            "taskset", "-c", "1", "node", str(BENCH / "requestclient.mjs"),
            "--url", served.urls[0], "--proto", served.proto,
            "--clients", str(clients), "--duration", str(duration),
        ]  # fmt: skip
        cpu = cpu_seconds(served.pids)
        client = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=duration * 4 + 60
        )
        server_cpu = cpu_seconds(served.pids) - cpu
        # Before the servers end: only the client is a waited-for child yet.
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not out.stdout.strip():
        raise RuntimeError(f"{server}: request client failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    # Beside the rate: what each round trip cost the server (its own
    # counters, whatever the client), and how busy the client was (near
    # 100%: the client, not the server, was the limit). Both span the
    # client's connecting too, a small part of a run of seconds.
    result["cpu_us"] = server_cpu * 1e6 / max(1, result["count"])
    used = (after.ru_utime + after.ru_stime) - (client.ru_utime + client.ru_stime)
    result["client_cpu_pct"] = 100 * used / duration
    print(
        f"  {server}: {result['round_trips_per_s']:,.0f} round trips/s"
        f" p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return result


def run(
    clients: int, duration: float, rounds: int, servers: list[str]
) -> list[dict[str, str]]:
    runs: dict[str, list[dict[str, float]]] = {server: [] for server in servers}
    for _ in range(rounds):  # servers interleaved round by round
        for server in servers:
            runs[server].append(once(server, clients, duration))
    return [
        {
            "server": server,
            "round trips/s": fmt([r["round_trips_per_s"] for r in done]),
            "server CPU us/round trip": fmt([r["cpu_us"] for r in done], 1),
            "p50 ms": fmt([r["p50_ms"] for r in done], 2),
            "p99 ms": fmt([r["p99_ms"] for r in done], 2),
            "client CPU": fmt([r["client_cpu_pct"] for r in done]) + "%",
        }
        for server, done in runs.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=SERVERS)
    args = parser.parse_args()
    rows = run(args.clients, args.duration, args.rounds, args.servers)
    print(f"{args.clients} clients, {args.rounds} rounds; medians (range).\n")
    names = list(rows[0])
    print("| " + " | ".join(names) + " |")
    print("|" + " --- |" * len(names))
    for row in rows:
        print("| " + " | ".join(row[name] for name in names) + " |")


if __name__ == "__main__":
    main()
