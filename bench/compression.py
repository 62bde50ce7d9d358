"""permessage-deflate on 1 KB chat messages (issue 22): what it saves, what it costs.

    python bench/compression.py [--body 960] [--clients 100 1000]
                                [--messages 100000] [--chat-clients 100]
                                [--memory 5000] [--rounds 3] [--servers ...]
    python bench/compression.py --smoke     # seconds; exits non-zero on a fault

Every server sends messages carrying ``--body`` bytes of chat-like text
(``BENCH_BODY``, ``bench/chattext.py``: words and names, about 2x with zlib;
the envelope brings a message to ~1 KB). The peers: ``ours`` and
``ours-deflate`` (``SANIC_WS_COMPRESSION=true``), ``node-ws`` and
``node-ws-deflate`` (``ws`` with perMessageDeflate, no context takeover either
way, threshold 256, as ours); against a ``-deflate`` peer the load client
offers the extension and inflates (``--deflate 1``; each distinct compressed
frame once, the receivers standing for as many machines). Reported, medians
(range) over ``--rounds`` interleaved rounds, each server alone on core 0:

- bytes on the wire per message (what the client read over messages, frame
  headers included), from the fan-out runs;
- fan-out (``bench/fanout.py``, ``--messages`` per run: K = messages / C):
  delivered msg/s, the server's CPU per delivered message
  (``bench/measure.py``), both also as on / off of the same server;
- chat (``bench/chat.py``, ``--chat-clients``): the highest rate per client
  with every delivery in and p99 <= 100 ms, with chat messages of the same
  size (the client sends the body, uncompressed);
- idle memory per connection (``bench/memory.py``), extension negotiated or
  not.

``--smoke`` (CI, through ``bench/suite.py --smoke``): ours and ours-deflate
only, tiny; fails if a message was lost, if a 1 KB message went uncompressed
with the extension on (or compressed without it), or if compression did not
make them smaller.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import chat
import fanout
import memory
from peers import fmt

Result = dict[str, Any]
SERVERS = ["ours", "ours-deflate", "node-ws", "node-ws-deflate"]
#: Each compressing peer and the same server without compression.
OFF = {
    "ours-deflate": "ours",
    "node-ws-deflate": "node-ws",
    "ours-deflate-before": "ours-before",  # with BENCH_BEFORE
}


@contextmanager
def body(size: int) -> Iterator[None]:
    """``BENCH_BODY`` for the servers and load clients started in the block."""
    before = os.environ.get("BENCH_BODY")
    os.environ["BENCH_BODY"] = str(size)
    try:
        yield
    finally:
        if before is None:
            del os.environ["BENCH_BODY"]
        else:
            os.environ["BENCH_BODY"] = before


def per_message(run: Result) -> float:
    return float(run["wire_bytes"]) / run["received"] if run["received"] else 0.0


def versus(
    values: dict[str, list[float]], server: str, digits: int = 2, invert: bool = False
) -> str:
    """``server``'s figures over those of the same server without compression,
    round by round (``invert``: off over on, for costs)."""
    off = OFF.get(server)
    if off not in values or not values[off] or not values[server]:
        return "-"
    pairs = zip(values[server], values[off], strict=True)
    ratios = [b / a if invert else a / b for a, b in pairs if a and b]
    return fmt(ratios, digits) if ratios else "-"  # CPU reads 0 on a tiny run


def fanout_runs(
    clients: list[int], messages: int, rounds: int, servers: list[str]
) -> dict[int, dict[str, list[Result]]]:
    runs: dict[int, dict[str, list[Result]]] = {
        c: {s: [] for s in servers} for c in clients
    }
    for r in range(rounds):
        for c in clients:
            for server in servers:
                runs[c][server].append(fanout.run_one(server, c, max(1, messages // c)))
        print(
            f"compression fan-out: round {r + 1}/{rounds}", file=sys.stderr, flush=True
        )
    return runs


def wire_table(runs: dict[str, list[Result]]) -> list[str]:
    lines = [
        "| server | bytes on the wire per message | x off | compressed frames |",
        "| --- | --- | --- | --- |",
    ]
    sizes = {s: [per_message(x) for x in v] for s, v in runs.items()}
    for server, values in sizes.items():
        shares = [
            100 * x.get("compressed", 0) / max(1, x["received"]) for x in runs[server]
        ]
        lines.append(
            f"| {server} | {fmt(values)} | {versus(sizes, server)} | {fmt(shares)}% |"
        )
    return lines


def fanout_table(runs: dict[str, list[Result]]) -> list[str]:
    lines = [
        "| server | delivered msg/s | x off | server CPU us/msg | off/on CPU"
        " | p99 ms | client CPU | complete |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rates = {s: [x["rate"] for x in v] for s, v in runs.items()}
    cpu = {s: [x["cpu_us"] for x in v] for s, v in runs.items()}
    for server, values in runs.items():
        complete = sum(x["received"] == x["expected"] for x in values)
        lines.append(
            f"| {server} | {fmt(rates[server])} | {versus(rates, server)} |"
            f" {fmt(cpu[server], 2)} | {versus(cpu, server, invert=True)} |"
            f" {fmt([x['p99_ms'] or 0 for x in values], 1)} |"
            f" {fmt([fanout.busy(x) for x in values])}% | {complete}/{len(values)} |"
        )
    return lines


def chat_table(
    clients: int,
    rates: list[int],
    refine: int,
    duration: float,
    rounds: int,
    servers: list[str],
    into: list[Result] | None = None,
) -> list[str]:
    best: dict[str, list[float]] = {s: [] for s in servers}
    cpu: dict[str, list[float]] = {s: [] for s in servers}
    for r in range(rounds):
        for server in servers:
            rate, res = chat.highest_rate(server, clients, rates, duration, refine)
            best[server].append(rate)
            if res is not None:
                cpu[server].append(res["cpu_us"])
                if into is not None:
                    into.append({"server": server, **res})
        print(f"compression chat: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    lines = [
        "| server | highest rate per client (msg/s) | x off | deliveries/s"
        " | server CPU us/msg at it |",
        "| --- | --- | --- | --- | --- |",
    ]
    for server, values in best.items():
        lines.append(
            f"| {server} | {fmt(values)} |"
            f" {versus(best, server) if all(best[OFF.get(server, server)]) else '-'} |"
            f" {statistics.median(values) * clients * clients:,.0f} |"
            f" {fmt(cpu[server], 2) if cpu[server] else '-'} |"
        )
    return lines


def memory_table(clients: int, rounds: int, servers: list[str]) -> list[str]:
    per: dict[str, list[float]] = {s: [] for s in servers}
    for r in range(rounds):
        for server in servers:
            per[server].append(memory.run_one(server, clients))
        print(
            f"compression memory: round {r + 1}/{rounds}", file=sys.stderr, flush=True
        )
    lines = ["| server | KB per idle connection | x off |", "| --- | --- | --- |"]
    for server, values in per.items():
        lines.append(f"| {server} | {fmt(values, 1)} | {versus(per, server)} |")
    return lines


def run(
    size: int,
    clients: list[int],
    messages: int,
    chat_clients: int,
    memory_clients: int,
    rounds: int,
    servers: list[str],
    rates: list[int] = chat.RATES,
    refine: int = 3,
    duration: float = 2.0,
    into: list[Result] | None = None,
) -> list[str]:
    """Every table; each fan-out run and each passing chat run go to ``into``."""
    with body(size):
        runs = fanout_runs(clients, messages, rounds, servers)
        chats = (
            chat_table(chat_clients, rates, refine, duration, rounds, servers, into)
            if chat_clients
            else []
        )
        ours = [s for s in servers if "ours" in s]
        idle = memory_table(memory_clients, rounds, ours) if memory_clients else []
    if into is not None:
        into += [
            {"server": s, **x} for c in runs.values() for s, v in c.items() for x in v
        ]
    out = [
        f"Messages carrying {size} bytes of chat-like text; {rounds} rounds,"
        f" medians (range); x off: over the same server without compression,"
        " round by round.",
        "",
        f"Bytes on the wire per message (fan-out, C = {min(clients)}):",
        "",
        *wire_table(runs[min(clients)]),
    ]
    for c in clients:
        k = max(1, messages // c)
        out += ["", f"Fan-out, C = {c} clients, K = {k}:", "", *fanout_table(runs[c])]
    if chat_clients:  # 0: skipped
        out += [
            "",
            f"Chat, {chat_clients} clients, {duration:g} s per rate, p99 <= 100 ms:",
            "",
            *chats,
        ]
    if memory_clients:  # 0: skipped
        out += ["", f"Idle memory, {memory_clients:,} connections:", "", *idle]
    return out


def faults(runs: list[Result]) -> list[str]:
    """What is wrong in ``runs`` (of 1 KB messages): lost, or wrongly compressed."""
    out = []
    for x in runs:
        name, deflate = x["server"], x["server"] in OFF
        if x["received"] != x["expected"]:
            out.append(f"{name}: {x['received']}/{x['expected']} received")
        if x.get("compressed", 0) != (x["received"] if deflate else 0):
            out.append(f"{name}: {x.get('compressed')}/{x['received']} compressed")
    size = {x["server"]: per_message(x) for x in runs if "rate" in x and "k" in x}
    for on, off in OFF.items():
        if on in size and off in size and not size[on] < size[off]:
            out.append(
                f"{on}: {size[on]:.0f} bytes per message, not under {size[off]:.0f}"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--body", type=int, default=960)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chat-clients", type=int, default=100)
    parser.add_argument("--memory", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=SERVERS)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    checked: list[Result] = []
    if args.smoke:
        lines = run(
            args.body, [20], 200, 10, 200, 1, ["ours", "ours-deflate"],
            rates=[5], refine=0, duration=0.5, into=checked,
        )  # fmt: skip
    else:
        lines = run(
            args.body, args.clients, args.messages, args.chat_clients, args.memory,
            args.rounds, args.servers, into=checked,
        )  # fmt: skip
    print("\n".join(lines))
    wrong = faults(checked)
    if args.smoke and len([x for x in checked if "k" not in x]) < 2:
        wrong.append("chat: ours or ours-deflate failed 5 msg/s per client")
    if wrong:
        sys.exit("compression: " + "; ".join(wrong))


if __name__ == "__main__":
    main()
