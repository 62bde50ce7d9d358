"""The whole benchmark suite, one command; a markdown report on stdout.

    python bench/suite.py [--rounds 3] [--out report.md]
    python bench/suite.py --smoke        # seconds: every scenario, tiny

Scenarios, each against the peers of ``bench/peers.py`` with the same load
client (the native one, ``bench/loadclient.c``, when there is a C compiler;
else Node's): fan-out (C = 100 and 1000, K = 200 and 1000, single-process
peers, then four workers on one core: ours over the relay, ours as two
machines over Redis, python-socketio with its Redis manager; and the load
client's ceiling, with the server's CPU per delivered message beside each
figure), the two load clients compared on the same servers, one stalled
client among 1000 (the others' throughput), a handler broadcasting ~22 MB
per receiver in a loop to 10 readers and one stalled client
(``bench/flood.py``: none of the readers closed, the stalled one closed with
1008), chat (100 clients; the highest rate with p99 <= 100 ms; and a typed
chat handler against the untyped one), idle memory (5,000 connections), the
relay between workers, and the Redis backplane between machines, and many
nodes (``bench/nodes.py``: 8 nodes over one Redis and over a Redis Cluster,
interest routing against the single channel of 5b7bee7; and
``bench/wakecost.py``: a server's CPU per message against the message rate,
a trivial echo server beside ours), and history rooms (``bench/history.py``:
publications per second against a plain room, 1,000 clients recovering at
once, memory per kept publication), and request and reply
(``bench/requests.py``: round trips against python-socketio's acks, on one
worker and across two, and the request client's ceiling), and sends from an
emitter process (``bench/emitter.py``: one emitter to 1,000 clients through
Redis, beside the same broadcasts from a handler), and permessage-deflate
(``bench/compression.py``: 1 KB chat messages, bytes on the wire, fan-out,
chat and idle memory with compression on and off, ours and Node ws). Cluster
scale (``bench/scale.py``: minutes at full size) runs on its own;
``--smoke`` includes it. Needs ``npm install --prefix bench`` (Node ``ws``)
and ``pip install -e '.[bench]'`` (socketify, python-socketio, uvicorn).

``--smoke`` runs every scenario tiny, only ours and the naive loop (nothing to
install but Node), with both load clients when there is a compiler, and exits
non-zero if any run of ours (or of the ceiling) lost a message, or the
sender in a loop closed a reader or not the stalled client: CI runs it to
keep the suite working, not to measure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import chat
import fanout
import flood
import memory
from peers import BENCH, PEERS, PY, SCALED

SMOKE_SERVERS = ["naive", "ours", "ours-4w", "ours-2x2-redis", "client-ceiling"]
#: The load clients side by side on the same servers: the Node client must
#: agree with the native one where neither is the limit.
COMPARED = ["ours", "socketify", "node-ws", "client-ceiling"]


def machine() -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = []
    for dist in ["sanic", "websockets", "uvloop", "python-socketio", "socketify",
                 "uvicorn", "redis"]:  # fmt: skip
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    now = time.gmtime()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True)
    return [
        f"Machine: {os.cpu_count()} cores ({cpu}),"
        f" Python {platform.python_version()}, Node {node.stdout.strip()};"
        f" {', '.join(versions)}. {time.strftime('%Y-%m-%d %H:%M UTC', now)}.",
    ]


def script(name: str, *args: str) -> list[str]:
    """Run one of the scripts that measure in their own processes."""
    out = subprocess.run([PY, str(BENCH / name), *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{name} {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return [line for line in out.stdout.splitlines() if not line.startswith("round ")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    report = ["# Benchmark report", "", *machine()]

    def section(title: str, lines: list[str]) -> None:
        report.extend(["", f"## {title}", "", *lines])
        print(f"{title}: done", file=sys.stderr, flush=True)

    if args.smoke:
        results: dict[str, list[dict[str, Any]]] = {}
        for server in SMOKE_SERVERS:
            results[server] = [fanout.run_one(server, 20, 10)]
        rows = list(SMOKE_SERVERS)
        if fanout.DEFAULT_CLIENT != "node":  # keep the Node client working too
            results["ours [node]"] = [fanout.run_one("ours", 20, 10, client="node")]
            rows.append("ours [node]")
        section("Fan-out (smoke)", fanout.table(results, rows))
        checked = [r for server in rows if server != "naive" for r in results[server]]
        section("Stalled client (smoke)", fanout.stall(20, 10, 1, into=checked))
        # Exits non-zero below if a reader was closed or the stalled one not.
        flooded, flood_failed = flood.run(3, 2500, 4000, 1)
        section("A sender in a loop, one stalled client (smoke)", flooded)
        passed: list[dict[str, Any]] = []
        section("Chat (smoke)", chat.run(10, [5], 0, 0.5, 1, ["ours"], into=passed))
        section("Typed chat (smoke)", chat.typed(10, [5], 0, 0.5, 1, into=passed))
        per = memory.run(200, 1, ["ours"])
        section("Idle memory (smoke)", per)
        tiny = ["--rounds", "1", "--burst", "2000", "--rate", "1000",
                "--paced-seconds", "0.2"]  # fmt: skip
        section("Relay (smoke)", script("relay.py", "--workers", "2", *tiny))
        section("Backplane (smoke)", script("backplane.py", *tiny))
        # Two nodes of two workers, a worker killed, a storm: exits non-zero
        # if a member was lost or a view never came right.
        section("Cluster scale (smoke)", script("scale.py", "--smoke"))
        # Three nodes per design, before and after, one Redis and a cluster:
        # exits non-zero if a room message was lost or came twice.
        section("Many nodes (smoke)", script("nodes.py", "--smoke"))
        section("What a wake-up costs (smoke)", script("wakecost.py", "--smoke"))
        # Exits non-zero if a recovering client missed or repeated a message.
        tiny_history = ["--workers", "2", "--tasks", "4", "--seconds", "0.3",
                        "--rounds", "1", "--recovery", "20", "--missed", "10",
                        "--memory", "1000"]  # fmt: skip
        section("History rooms (smoke)", script("history.py", *tiny_history))
        # Exits non-zero if a reply carried a wrong sum.
        tiny_requests = ["--servers", "ours", "ours-2w-across", "client-ceiling",
                         "--rounds", "1", "--duration", "0.5",
                         "--clients", "5"]  # fmt: skip
        section("Request and reply (smoke)", script("requests.py", *tiny_requests))
        # Exits non-zero if a message from the emitter was lost.
        tiny_emitter = ["--clients", "20", "--k", "10", "--rounds", "1"]
        section("From an emitter (smoke)", script("emitter.py", *tiny_emitter))
        # Exits non-zero if a message was lost, or a 1 KB message went
        # uncompressed with the extension on, or did not get smaller.
        section("Compression (smoke)", script("compression.py", "--smoke"))
        lost: list[Any] = [r for r in checked if r["received"] != r["expected"]]
        lost += flood_failed
        if not passed:  # a chat run that lost a message (or was late) fails
            lost.append({"chat": "ours failed 5 msg/s per client"})
        text = "\n".join(report)
        print(text)
        if lost:
            sys.exit(f"lost messages: {lost}")
        return

    section(
        "Fan-out",
        fanout.run(
            [100, 1000], [200, 1000], rounds, [*PEERS, *SCALED, "client-ceiling"]
        ),
    )
    if fanout.DEFAULT_CLIENT != "node":
        section(
            "Load clients compared",
            fanout.run([1000], [200], rounds, COMPARED, ("native", "node")),
        )
    # K = 1000: a run long enough to be steady (with K = 200 a run lasts ~90 ms
    # and a one-off ~5 ms delay on the stalled socket shows as ~10%).
    section("One stalled client among 1000", fanout.stall(1000, 1000, rounds))
    flooded, flood_failed = flood.run(10, 5500, 4000, rounds)
    if flood_failed:
        flooded += ["", "Failed:", *(f"- {line}" for line in flood_failed)]
    section("A sender in a loop, one stalled client among 10", flooded)
    section(
        "Chat",
        chat.run(100, chat.RATES, 3, 2.0, rounds, [*PEERS, "client-ceiling"]),
    )
    section("Typed chat", chat.typed(100, chat.RATES, 3, 2.0, rounds))
    section("Idle memory", memory.run(5000, rounds, PEERS))
    relay = []
    for workers in ("4", "2"):
        relay += script("relay.py", "--workers", workers, "--rounds", str(rounds))
    section("Relay between workers", relay)
    section("Redis backplane", script("backplane.py", "--rounds", str(rounds)))
    section(
        "Many nodes: interest routing against one channel",
        script("nodes.py", "--rounds", str(rounds)),
    )
    # What the node CPU figures above hold of this machine's wake-up cost.
    section(
        "What a wake-up costs: CPU per message against rate",
        script("wakecost.py", "--rounds", str(rounds)),
    )
    section("History rooms", script("history.py", "--rounds", str(rounds)))
    section("Request and reply", script("requests.py", "--rounds", str(rounds)))
    section(
        "From an emitter process to 1000 clients",
        script("emitter.py", "--rounds", str(rounds)),
    )
    section("Compression", script("compression.py", "--rounds", str(rounds)))
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
