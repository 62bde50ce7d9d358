"""What a history publication costs Redis when Redis is the sequencer.

    python bench/redis_history.py [--n 20000] [--size 1000] [--body 100]
        [--subscribers 1]

Starts a private ``redis-server`` on a free port (never the shared one),
runs the publication script (sanic_ws_ext/delivery/redis_history.py) ``n``
times into one room as the server does (EVALSHA, pipelined), with
``subscribers`` connections subscribed to the room channel, and reports
Redis's own figures: ``INFO commandstats`` usec_per_call of ``evalsha`` (CPU
inside Redis per publication) and ``MEMORY USAGE`` of the room's stream
divided by its entries (bytes per kept publication).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from sanic_ws_ext.delivery.redis_history import (
    PUBLISH_LUA,
    history_keys,
)
from sanic_ws_ext.envelope import encode_envelope
from sanic_ws_ext.testing import free_port


async def measure(n: int, size: int, body_len: int, subscribers: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            redis = aioredis.Redis(port=port)
            for _ in range(200):
                try:
                    await redis.ping()
                    break
                except (aioredis.ConnectionError, OSError):
                    await asyncio.sleep(0.02)
            channel = "bench:room:chat:1"
            subs = []
            for _ in range(subscribers):
                pubsub = aioredis.Redis(port=port).pubsub()
                await pubsub.subscribe(channel)
                subs.append(pubsub)
            run_id = (await redis.info("server"))["run_id"]
            sha = await redis.script_load(PUBLISH_LUA)
            body = encode_envelope("said", {"text": "x" * body_len})
            target = b"chat:1"
            origin = b"node/Sanic-Server-0-0"
            args = [
                size, 0, run_id, channel, '"chat:1"', body,
                struct.pack("!BBHH", 3, 0, 0, len(target)),
                struct.pack("!HH", len(origin), 0), target, origin, "PUBLISH",
            ]  # fmt: skip
            keys = history_keys(channel)
            await redis.config_resetstat()
            done = 0
            while done < n:
                pipe = redis.pipeline(transaction=False)
                for _ in range(min(256, n - done)):
                    pipe.evalsha(sha, 2, *keys, *args)
                await pipe.execute()
                done += min(256, n - done)
                for pubsub in subs:  # keep the subscribers' buffers drained
                    while await pubsub.get_message(timeout=0):
                        pass
            stats = await redis.info("commandstats")
            evalsha = stats["cmdstat_evalsha"]
            entries = await redis.xlen(keys[1])
            stream = int(await redis.memory_usage(keys[1], samples=0) or 0)
            stamped = len(body) + len(b'"room":"chat:1","offset":20000,"epoch":""')
            print(f"publications: {n}, size {size}, envelope {len(body)} bytes")
            print(f"subscribers of the room channel: {subscribers}")
            print(f"evalsha usec_per_call: {evalsha['usec_per_call']}")
            print(f"stream entries kept: {entries} (MAXLEN ~ {size})")
            print(f"stream MEMORY USAGE: {stream} bytes")
            print(f"bytes per kept entry: {stream / entries:.0f}")
            print(f"  (stamped envelope about {stamped + 16} bytes)")
            # For scale, on the same Redis and machine: a plain room's PUBLISH
            # of the same envelope, and an empty script.
            await redis.config_resetstat()
            empty = await redis.script_load("return 1")
            for _ in range(max(1, n // 256)):
                pipe = redis.pipeline(transaction=False)
                for _ in range(256):
                    pipe.publish(channel, body)
                    pipe.evalsha(empty, 0)
                await pipe.execute()
                for pubsub in subs:
                    while await pubsub.get_message(timeout=0):
                        pass
            stats = await redis.info("commandstats")
            plain = stats["cmdstat_publish"]["usec_per_call"]
            print(f"for scale: PUBLISH usec_per_call {plain}, empty EVALSHA "
                  f"{stats['cmdstat_evalsha']['usec_per_call']}")  # fmt: skip
            for pubsub in subs:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await redis.aclose()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--body", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(measure(args.n, args.size, args.body, args.subscribers))


if __name__ == "__main__":
    main()
