"""What this machine charges a process per wake-up: CPU per message against rate.

    python bench/wakecost.py [--rounds 3] [--seconds 3]
    python bench/wakecost.py --smoke          # seconds: checks it runs

One client sends messages one at a time, each answered before the next, at a
fixed rate, to two servers in turn:

- ``echo``: a five-line uvloop TCP echo server (``--serve-echo``), the least a
  Python process can do per message;
- ``ours``: ``bench/servers/nodes_app.py`` on one process with no backplane,
  the client a member of a room, publishing to it: one inbound message, its
  handler, one delivery back.

The server's CPU time per message is read from ``/proc/<pid>/schedstat``
(nanoseconds) over each rate's run. Where a process sleeps between messages,
each message pays a wake-up: a context switch, and on a virtual machine a
virtual CPU woken from idle, with caches cold. The same work then costs
several times more CPU at 100 messages a second than at 6,400. bench/nodes.py
compares 8 nodes with one at the same total rate, so each of the 8 wakes for a
quarter of the messages one node does: this is what that costs here, apart
from anything the code does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from peers import PY, ROOT, free_port, wait_listening

RATES = [100, 400, 1600, 6400]


def serve_echo(port: int) -> None:
    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports implement asyncio.Transport without deriving it
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


#: Rates the client did not keep (it answers one message at a time): the
#: column then holds a lower rate than its heading, and the report says so.
SHORTFALLS: list[str] = []


def paced(rate: float, count: int, one: Callable[[], None]) -> float:
    """Call ``one()`` ``count`` times at ``rate`` a second (no catching up);
    the rate achieved."""
    start = time.monotonic()
    for k in range(count):
        one()
        delay = start + (k + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the client, not synchronising
    return count / (time.monotonic() - start)


def per_rate(
    pid: int, rates: list[int], seconds: float, one: Callable[[], None]
) -> dict[int, float]:
    """The server's CPU µs per ``one()``, at each rate in turn."""
    found = {}
    for rate in rates:
        count = max(10, int(rate * seconds))
        before = cpu_ns(pid)
        achieved = paced(rate, count, one)
        found[rate] = (cpu_ns(pid) - before) / 1e3 / count
        if achieved < 0.95 * rate:
            SHORTFALLS.append(f"{rate}/s ran at {achieved:.0f}/s")
    return found


def measure_echo(rates: list[int], seconds: float) -> dict[int, float]:
    port = free_port()
    proc = subprocess.Popen([PY, __file__, "--serve-echo", str(port)])
    try:
        wait_listening(port, proc)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = b"x" * 100

        def one() -> None:
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                got += len(sock.recv(4096))

        found = per_rate(proc.pid, rates, seconds, one)
        sock.close()
        return found
    finally:
        proc.terminate()
        proc.wait(10)


def measure_ours(rates: list[int], seconds: float) -> dict[int, float]:
    from websockets.sync.client import connect

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANIC_WS_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [PY, "-m", "sanic", "bench.servers.nodes_app:app", "--single-process",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port, proc)
        with connect(f"ws://127.0.0.1:{port}/ws?room=r0", compression=None) as ws:
            assert json.loads(ws.recv(10))["type"] == "welcome"
            text = json.dumps({"type": "pub", "data": {"room": "r0", "pad": "x" * 50}})

            def one() -> None:
                ws.send(text)
                assert json.loads(ws.recv(10))["type"] == "msg"

            return per_rate(proc.pid, rates, seconds, one)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return
    rates, seconds, rounds = RATES, args.seconds, args.rounds
    if args.smoke:
        rates, seconds, rounds = [100, 1600], 0.2, 1
    runs: dict[str, list[dict[int, float]]] = {"echo": [], "ours": []}
    for _ in range(rounds):  # interleaved: both see the same machine
        runs["echo"].append(measure_echo(rates, seconds))
        runs["ours"].append(measure_ours(rates, seconds))
    print("| server CPU µs per message | " + " | ".join(f"{r}/s" for r in rates) + " |")
    print("| --- |" + " --- |" * len(rates))
    for name, found in runs.items():
        cells = []
        for rate in rates:
            values = [f[rate] for f in found]
            low, mid, high = min(values), statistics.median(values), max(values)
            cells.append(f"{mid:.1f} ({low:.1f} - {high:.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nMedians (range) over {rounds} round(s), {seconds:g} s per rate.")
    if SHORTFALLS:
        print(f"The client fell behind: {'; '.join(SHORTFALLS)}.")
    else:
        print("The client kept every rate (within 5%).")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
