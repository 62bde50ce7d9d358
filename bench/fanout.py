"""Fan-out against the peers: one trigger, K broadcasts of ~100 bytes, C clients.

    python bench/fanout.py [--clients 100 1000] [--k 200] [--rounds 3]
                           [--servers ours naive websockets node-ws socketify]

Each server runs alone, pinned to core 0; the Node load client
(``bench/loadclient.mjs``, raw sockets, frames parsed in place) runs pinned to
core 1, opens C connections, sends one trigger, and counts C*K frames: delivered
messages/s from the trigger to the last frame, and latency p50/p99 from the
send time stamped in every message. Servers interleave round by round; medians
with ranges; ratios to the naive Sanic loop of the same run. ``--servers
client-ceiling`` is not a server: it runs the load client against a trivial
Node server that sends pre-framed bytes, to show the client's own ceiling.

Peers: naive Sanic (``await ws.send`` per client), the websockets library's
``broadcast()``, Node's ``ws`` (``npm install --prefix bench``), and
uWebSockets through socketify (``pip install socketify``). Loopback only;
every run is bounded in count and time; servers are ended by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
#: The peers every scenario compares, ours included.
PEERS = ["naive", "ours", "websockets", "node-ws", "socketify"]


def command(server: str, port: int) -> list[str]:
    sanic = [PY, "-m", "sanic", "--host", "127.0.0.1", "--port", str(port), "--no-motd"]
    return {
        "ours": [*sanic, "bench.servers.ours:app", "--single-process"],
        # The same app on 4 workers, the relay between them (same core set).
        "ours-4w": [*sanic, "bench.servers.ours:app", "--workers", "4"],
        "naive": [*sanic, "bench.servers.naive:app", "--single-process"],
        "websockets": [PY, str(BENCH / "servers" / "wslib.py"), str(port)],
        "node-ws": ["node", str(BENCH / "servers" / "node_ws.mjs"), str(port)],
        "socketify": [PY, str(BENCH / "servers" / "socketify_server.py"), str(port)],
        "client-ceiling": ["node", str(BENCH / "servers" / "ceiling.mjs"), str(port)],
    }[server]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # another process starting: poll it
    raise TimeoutError(f"nothing listening on {port}")


@contextmanager
def serving(server: str, settle: float = 0.3) -> Iterator[tuple[int, int]]:
    """Run ``server`` alone on core 0 until the block exits: ``(port, pid)``."""
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *command(server, port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # never a pipe nobody reads
        start_new_session=True,
    )
    try:
        wait_listening(port, proc)
        time.sleep(settle)  # let it finish starting (workers, listeners)
        yield port, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def load_client(port: int, clients: int, *options: str) -> list[str]:
    """The Node load client's command, pinned to core 1."""
    return [
        "taskset", "-c", "1", "node", str(BENCH / "loadclient.mjs"),
        "--url", f"ws://127.0.0.1:{port}/ws", "--clients", str(clients), *options,
    ]  # fmt: skip


def run_load(server: str, command: list[str]) -> dict[str, float]:
    """Run the load client to the end; its JSON result line."""
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if not out.stdout.strip():
        raise RuntimeError(f"{server}: load client failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_one(server: str, clients: int, k: int) -> dict[str, float]:
    with serving(server) as (port, _):
        load = load_client(port, clients, "--k", str(k), "--timeout", "60")
        result = run_load(server, load)
    if result["received"] != result["expected"]:
        print(f"  {server}: only {result['received']}/{result['expected']}")
    return result


def fmt(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f} - {max(values):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=[*PEERS, "client-ceiling"],
    )
    args = parser.parse_args()
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for clients in args.clients:
            for server in args.servers:  # interleaved, round by round
                res = run_one(server, clients, args.k)
                results.setdefault((clients, server), []).append(res)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(
        f"fan-out, K={args.k} messages, {args.rounds} rounds, server on core 0,"
        " load client on core 1; medians (range)"
    )
    for clients in args.clients:
        print(f"\nC = {clients}\n")
        print("| server | delivered msg/s | x naive | p50 ms | p99 ms |")
        print("| --- | --- | --- | --- | --- |")
        base = [x["rate"] for x in results.get((clients, "naive"), [])]
        for server in args.servers:
            runs = results[(clients, server)]
            rates = [x["rate"] for x in runs]
            ratio = (
                fmt([a / b for a, b in zip(rates, base, strict=True)], 2)
                if base
                else "-"
            )
            print(
                f"| {server} | {fmt(rates)} | {ratio} |"
                f" {fmt([x['p50_ms'] for x in runs], 1)} |"
                f" {fmt([x['p99_ms'] for x in runs], 1)} |"
            )


if __name__ == "__main__":
    main()
