"""Idle memory per connection: server RSS with 5,000 open, idle connections.

    python bench/memory.py [--clients 5000] [--rounds 3]
                           [--servers naive ours websockets node-ws socketify]

Each server starts alone (pinned to core 0); its resident set size is read
from /proc before and after the Node load client (``--hold``) opens C
connections and keeps them idle; the difference over C is the cost of one
idle connection. Servers interleave round by round; medians (range).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from peers import PEERS, fmt, load_client, serving


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def run_one(server: str, clients: int) -> float:
    # Settle 1 s: imports done, listeners run, memory at rest.
    with serving(server, settle=1.0) as served:
        (pid,) = served.pids  # one process: its RSS is the server's
        before = rss_kb(pid)
        load = subprocess.Popen(
            load_client(served, clients, "--hold", "1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert load.stdout is not None and load.stdin is not None
            ready = json.loads(load.stdout.readline())
            assert ready["ready"] == clients, ready
            time.sleep(1.0)  # settle: every handshake handled, buffers released
            after = rss_kb(pid)
            load.stdin.close()
            load.wait(timeout=30)
        finally:
            if load.poll() is None:
                load.kill()
    return (after - before) / clients


def run(clients: int, rounds: int, servers: list[str]) -> list[str]:
    per: dict[str, list[float]] = {s: [] for s in servers}
    for r in range(rounds):
        for server in servers:
            per[server].append(run_one(server, clients))
        print(f"memory: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    out = [
        f"Idle memory, {clients:,} connections, {rounds} rounds; medians (range).",
        "",
        "| server | KB per idle connection |",
        "| --- | --- |",
    ]
    for server, values in per.items():
        out.append(f"| {server} | {fmt(values, 1)} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=PEERS)
    args = parser.parse_args()
    print("\n".join(run(args.clients, args.rounds, args.servers)))


if __name__ == "__main__":
    main()
