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
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fanout import PEERS, load_client, serving


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def run_one(server: str, clients: int) -> float:
    # Settle 1 s: imports done, listeners run, memory at rest.
    with serving(server, settle=1.0) as (port, pid):
        before = rss_kb(pid)
        load = subprocess.Popen(
            load_client(port, clients, "--hold", "1"),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=PEERS,
    )
    args = parser.parse_args()
    per: dict[str, list[float]] = {s: [] for s in args.servers}
    for r in range(args.rounds):
        for server in args.servers:
            per[server].append(run_one(server, args.clients))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"idle memory, {args.clients:,} connections, {args.rounds} rounds")
    print("| server | KB per idle connection |")
    print("| --- | --- |")
    for server, values in per.items():
        med = statistics.median(values)
        print(f"| {server} | {med:.1f} ({min(values):.1f} - {max(values):.1f}) |")


if __name__ == "__main__":
    main()
