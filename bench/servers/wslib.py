"""The websockets library with its broadcast(): `python bench/servers/wslib.py PORT`."""

from __future__ import annotations

import asyncio
import sys
import time

import ujson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

PAD = "x" * 40
clients: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    clients.add(ws)
    try:
        async for raw in ws:
            message = ujson.loads(raw)
            if message["type"] == "chat":
                broadcast(clients, raw)
                continue
            k = message["data"]["k"]
            for i in range(k):
                data = {"t": time.time() * 1000, "i": i, "pad": PAD}
                text = ujson.dumps({"type": "tick", "data": data})
                broadcast(clients, text)
                if i % 10 == 9:
                    await asyncio.sleep(0)  # let writes go out
    finally:
        clients.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
