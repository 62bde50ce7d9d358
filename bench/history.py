"""Publications per second into a history room, next to a plain room.

    python bench/history.py [--workers 4] [--tasks 1,16] [--seconds 3] [--rounds 3]

A real `sanic --workers N` (bench/servers/history_app.py). One client per
worker asks its worker to publish into one room for a few seconds from
``tasks`` concurrent tasks, each awaiting every ``publish``: with one task,
a history room's publish waits for the sequencer's answer (a relay round
trip from the other workers), so this is its worst case; more tasks
pipeline. One member of the room reads everything and must get every
publication. Rounds alternate plain and history rooms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sanic_ws_ext.testing import SanicProcess, WSTestClient


async def workers_covered(server: SanicProcess, n: int) -> list[WSTestClient]:
    by_worker: dict[str, WSTestClient] = {}
    spare = []
    while len(by_worker) < n:
        client = await WSTestClient.connect(server.ws_url())
        worker = (await client.expect("welcome")).data["worker"]
        if worker in by_worker:
            spare.append(client)
        else:
            by_worker[worker] = client
    for client in spare:
        await client.close()
    return list(by_worker.values())


async def one_round(
    server: SanicProcess,
    publishers: list[WSTestClient],
    room: str,
    tasks: int,
    seconds: float,
) -> float:
    async with await WSTestClient.connect(server.ws_url()) as member:
        await member.expect("welcome")
        await member.join(room, resume=False)
        got = 0
        target: int | None = None
        complete = asyncio.Event()

        async def read() -> None:  # the member keeps up, or it is dropped (1008)
            nonlocal got
            while True:
                await member.expect("m", 60)
                got += 1
                if target is not None and got >= target:
                    complete.set()

        reader = asyncio.ensure_future(read())
        for client in publishers:
            await client.send(
                "bench.run", {"room": room, "tasks": tasks, "seconds": seconds}
            )
        made = 0
        for client in publishers:
            made += (await client.expect("bench.done", seconds + 60)).data
        target = made
        if got >= made:
            complete.set()
        await asyncio.wait_for(complete.wait(), 60)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        assert got == made, f"the member got {got} of {made}"
        return made / seconds


async def main(args: argparse.Namespace) -> None:
    server = SanicProcess(
        "bench.servers.history_app:app", "--workers", str(args.workers), strict=False
    )
    async with server:
        publishers = await workers_covered(server, args.workers)
        for tasks in args.tasks:
            rates: dict[str, list[float]] = {"plain": [], "history": []}
            for n in range(args.rounds):
                for kind in ("plain", "history"):
                    room = f"{kind}:{tasks}-{n}"
                    rates[kind].append(
                        await one_round(server, publishers, room, tasks, args.seconds)
                    )
            plain = statistics.median(rates["plain"])
            history = statistics.median(rates["history"])
            print(
                f"{args.workers} workers, {tasks} task(s) each: plain {plain:,.0f}/s, "
                f"history {history:,.0f}/s ({history / plain:.2f}x); "
                f"rounds {[round(r) for r in rates['plain']]} / "
                f"{[round(r) for r in rates['history']]}",
                flush=True,
            )
        for client in publishers:
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--tasks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16]
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
