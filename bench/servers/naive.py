"""The naive Sanic loop: `await ws.send` per client, per message."""

from __future__ import annotations

import time
from typing import Any

import ujson
from sanic import Request, Sanic

app = Sanic("bench_naive")
app.config.MOTD = False
clients: set[Any] = set()
PAD = "x" * 40


@app.websocket("/ws")  # type: ignore[untyped-decorator]
async def endpoint(request: Request, ws: Any) -> None:
    clients.add(ws)
    try:
        async for raw in ws:
            message = ujson.loads(raw)
            if message["type"] == "chat":
                for client in list(clients):
                    await client.send(raw)
                continue
            k = message["data"]["k"]
            for i in range(k):
                data = {"t": time.time() * 1000, "i": i, "pad": PAD}
                text = ujson.dumps({"type": "tick", "data": data})
                for client in list(clients):
                    await client.send(text)
    finally:
        clients.discard(ws)
