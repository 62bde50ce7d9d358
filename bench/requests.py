"""Request and reply: round trips per second and their latency, one worker.

    python bench/requests.py [--clients 50] [--duration 5] [--rounds 3]
                             [--servers ours socketio]

Each server runs one process pinned to core 0; the Node client
(``bench/requestclient.mjs``, core 1) opens C connections, each keeping one
request in flight: ours sends ``{"type": "add", "ref": ...}`` and waits for
its ``reply``; python-socketio's gets an event with an ack id, what its
``call()`` and a client's emit-with-ack wait on. The handler returns a sum
either way. Figures: round trips per second and p50/p99 in ms, medians of
``--rounds`` runs (range).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from peers import BENCH, fmt, serving

SERVERS = ["ours", "socketio"]


def once(server: str, clients: int, duration: float) -> dict[str, float]:
    with serving(server) as served:
        command = [
            "taskset", "-c", "1", "node", str(BENCH / "requestclient.mjs"),
            "--url", served.urls[0], "--proto", served.proto,
            "--clients", str(clients), "--duration", str(duration),
        ]  # fmt: skip
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=duration * 4 + 60
        )
    if not out.stdout.strip():
        raise RuntimeError(f"{server}: request client failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
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
    rows = []
    for server in servers:
        runs = [once(server, clients, duration) for _ in range(rounds)]
        rows.append(
            {
                "server": server,
                "round trips/s": fmt([r["round_trips_per_s"] for r in runs]),
                "p50 ms": fmt([r["p50_ms"] for r in runs], 2),
                "p99 ms": fmt([r["p99_ms"] for r in runs], 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=SERVERS)
    args = parser.parse_args()
    rows = run(args.clients, args.duration, args.rounds, args.servers)
    print(f"| server | round trips/s | p50 ms | p99 ms | ({args.clients} clients)")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['server']} | {row['round trips/s']} | {row['p50 ms']}"
              f" | {row['p99 ms']} |")  # fmt: skip


if __name__ == "__main__":
    main()
