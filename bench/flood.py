"""A sender in a loop, with one stalled client (issue 18, point 5).

    python bench/flood.py [--clients 10] [--n 5500] [--size 4000] [--rounds 3]

``ours`` (one process, pinned to core 0, its default configuration:
``WS_MAX_BACKPRESSURE`` 1 MiB, ``WS_DRAIN_TIMEOUT`` 1 s) gets one trigger
from the client (``bench/floodclient.mjs``, Node's ``ws``, core 1): its
handler broadcasts N messages of ~B bytes in a loop with nothing awaited but
the broadcasts (5500 x 4 KB: ~22 MB to each receiver, the case that closed
every healthy reader with 1008 before the sender went at its readers' pace),
to C reading clients and one that reads nothing after its handshake (and,
for comparison, without that one; rounds alternate which goes first). Then
it broadcasts what it closed meanwhile. Per round: healthy readers closed
(the target is 0), whether the stalled one was closed with 1008, MB
delivered to each reader, the time from the trigger to the last reader's
end, and the server's CPU over that time (``bench/measure.py``). Medians
(range) of ``--rounds``; exits non-zero if a healthy reader was closed or
missed a message, or the stalled one was not closed with 1008.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from measure import quiet, run_load
from peers import BENCH, fmt, serving


def once(clients: int, n: int, size: int, stalled: int) -> dict[str, Any]:
    timeout = 60 + n * size * clients // 10_000_000  # ~10 MB/s at the worst
    with serving("ours") as served:
        quiet(served.pids)
        command = [
            "taskset", "-c", "1", "node", str(BENCH / "floodclient.mjs"),
            "--url", served.urls[0], "--clients", str(clients),
            "--stalled", str(stalled),
            "--n", str(n), "--size", str(size), "--timeout", str(timeout),
        ]  # fmt: skip
        result = run_load("ours", command, served.pids, limit=timeout + 30)
    closed = result["server_closed"] or {}
    result["stalled"] = stalled
    result["stalled_1008"] = (
        result["slow_closed"] == stalled and closed.get("1008", 0) == stalled
    )
    print(
        f"  flood, {stalled} stalled: {result['healthy_closed']} healthy closed,"
        f" closed with 1008: {closed.get('1008', 0)},"
        f" {result['mb_per_reader_min']:.1f} MB per reader"
        f" in {result['seconds']:.2f} s, server CPU {result['server_cpu_s']:.2f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


def failures(runs: list[dict[str, Any]]) -> list[str]:
    """What went wrong in ``runs``: the scenario's correctness side."""
    out = []
    for i, run in enumerate(runs, 1):
        if run["healthy_closed"]:
            codes = run["healthy_close_codes"]
            out.append(f"round {i}: healthy readers closed: {codes}")
        if run["received"] != run["expected"]:
            out.append(f"round {i}: {run['received']}/{run['expected']} received")
        if not run["stalled_1008"]:
            out.append(f"round {i}: closed with 1008: {run['server_closed']}")
    return out


def run(clients: int, n: int, size: int, rounds: int) -> tuple[list[str], list[str]]:
    """The report's lines, and what failed: with the stalled client and
    without it, interleaved, in turn first."""
    runs: dict[int, list[dict[str, Any]]] = {1: [], 0: []}
    for r in range(rounds):
        for stalled in (1, 0) if r % 2 == 0 else (0, 1):
            runs[stalled].append(once(clients, n, size, stalled))
    lines = [
        f"ours, {clients} reading clients and 1 stalled, or none; the handler"
        f" broadcasts {n:,} messages of ~{size:,} bytes in a loop"
        f" (~{n * size / 1e6:.0f} MB to each receiver); medians (range) of"
        f" {rounds} rounds.",
        "",
        "| stalled | healthy readers closed | stalled closed 1008 | MB per reader"
        " | elapsed s | MB/s per reader | server CPU s | server CPU ms/MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stalled, done in runs.items():
        mb = [r["mb_per_reader_min"] for r in done]
        cpu = [r["server_cpu_s"] for r in done]
        seconds = [r["seconds"] for r in done]
        per_mb = [c * 1e3 / (m * clients) for c, m in zip(cpu, mb, strict=True)]
        lines.append(
            f"| {stalled} | {fmt([r['healthy_closed'] for r in done])}"
            f" | {sum(r['stalled_1008'] for r in done) if stalled else '-'}"
            f"{f'/{len(done)}' if stalled else ''}"
            f" | {fmt(mb, 1)} | {fmt(seconds, 2)}"
            f" | {fmt([m / t for m, t in zip(mb, seconds, strict=True)], 1)}"
            f" | {fmt(cpu, 2)}"
            f" | {fmt(per_mb, 2)} |"
        )
    return lines, failures(runs[1]) + failures(runs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--n", type=int, default=5500)
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lines, failed = run(args.clients, args.n, args.size, args.rounds)
    print("\n".join(lines))
    if failed:
        sys.exit("\n".join(failed))


if __name__ == "__main__":
    main()
