"""python-socketio on uvicorn (ASGI, uvloop, httptools): the same events.

    uvicorn bench.servers.socketio_server:app --port P [--workers 4]

With ``BENCH_REDIS`` set (a redis:// URL) the server uses python-socketio's
``AsyncRedisManager``, so an emit reaches the clients of every worker and
machine: its documented way to scale out. Websocket transport only, so no
sticky sessions are needed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import socketio

PAD = "x" * 40
redis_url = os.environ.get("BENCH_REDIS")
manager = (
    socketio.AsyncRedisManager(
        redis_url, channel=os.environ.get("BENCH_CHANNEL", "socketio")
    )
    if redis_url
    else None
)
sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=manager,
    transports=["websocket"],
    cors_allowed_origins="*",
    max_http_buffer_size=1 << 20,
)
app = socketio.ASGIApp(sio)


@sio.on("go")  # type: ignore[untyped-decorator]
async def go(sid: str, data: dict[str, Any]) -> None:
    for i in range(data["k"]):
        await sio.emit("tick", {"t": time.time() * 1000, "i": i, "pad": PAD})


@sio.on("chat")  # type: ignore[untyped-decorator]
async def chat(sid: str, data: Any) -> None:
    await sio.emit("chat", data)


@sio.on("add")  # type: ignore[untyped-decorator]
async def add(sid: str, data: dict[str, Any]) -> int:
    """An event with an ack (bench/requests.py): the return value is the ack."""
    return int(data["a"] + data["b"])


@sio.on("whoami")  # type: ignore[untyped-decorator]
async def whoami(sid: str, data: Any) -> dict[str, Any]:
    """An event with an ack (bench/requests.py): this client's sid, its worker."""
    return {"id": sid, "worker": os.getpid()}


@sio.on("ask_peer")  # type: ignore[untyped-decorator]
async def ask_peer(sid: str, data: dict[str, Any]) -> Any:
    """An event with an ack (bench/requests.py): ``call()`` the client ``to``,
    on whichever worker (through the Redis manager), to ``add``."""
    return await sio.call("add", {"a": data["a"], "b": 1}, to=data["to"], timeout=10)
