"""The bare frame-once loop: the least Python a fan-out can cost in Sanic.

Each message is encoded and framed once, and each client's frames of one
event-loop pass go out in one ``transport.write``; nothing else (no
envelope parsing beyond the command, no backpressure, no rooms, no stats).
It is the yardstick our CPU per delivered message is stated against in
docs/performance.md: what the features cost is ours minus this.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import ujson
from sanic import Request, Sanic

from sanic_ws_ext.frames import OP_TEXT, encode_frame

# bench/ on the path, as for the scripts there: the chat-like text of ticks.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from chattext import bodies, env_size

app = Sanic("bench_bare")
app.config.MOTD = False
PAD = "x" * 40
BODIES = bodies(env_size())  # BENCH_BODY=N: N bytes of chat-like text per tick
#: Ticks of a burst between two passes of the loop (which flush them).
PER_PASS = 64

transports: set[Any] = set()
queued: dict[Any, list[bytes]] = {}


def flush() -> None:
    for transport, frames in queued.items():
        if not transport.is_closing():
            transport.write(b"".join(frames))
    queued.clear()


def fan_out(frame: bytes) -> None:
    if not queued:
        asyncio.get_running_loop().call_soon(flush)
    for transport in transports:
        frames = queued.get(transport)
        if frames is None:
            queued[transport] = [frame]
        else:
            frames.append(frame)


@app.websocket("/ws")  # type: ignore[untyped-decorator]
async def endpoint(request: Request, ws: Any) -> None:
    transport = ws.io_proto.transport
    transports.add(transport)
    try:
        async for raw in ws:
            message = ujson.loads(raw)
            if message["type"] == "chat":
                fan_out(encode_frame(OP_TEXT, raw.encode()))
                continue
            for i in range(message["data"]["k"]):
                data: dict[str, Any] = {"t": time.time() * 1000, "i": i, "pad": PAD}
                if BODIES:
                    del data["pad"]
                    data["body"] = BODIES[i % len(BODIES)]
                text = ujson.dumps({"type": "tick", "data": data})
                fan_out(encode_frame(OP_TEXT, text.encode()))
                if i % PER_PASS == PER_PASS - 1:
                    await asyncio.sleep(0)  # let the pass's frames go out
    finally:
        transports.discard(transport)
        queued.pop(transport, None)
