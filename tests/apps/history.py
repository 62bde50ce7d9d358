"""An app for history tests: `sanic tests.apps.history:app --workers 4`.

Clients start and stop publishers on the worker that holds them; every
publication says who made it and its number, so a receiver can check that it
got each exactly once, in order.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import (
    Connection,
    Envelope,
    History,
    SequencerUnavailable,
    WSExtension,
    WSHandlers,
)

app = Sanic("history")
app.config.WS_RELAY_BEAT = float(os.environ.get("TEST_RELAY_BEAT", "0.5"))
Extend(app).register(WSExtension)
handlers = WSHandlers(app)
handlers.room("chat:{id}", client_join=True, history=History(size=2000))

# Per connection: its publisher task and what it did (sent, failed, stop?).
publishers: dict[str, tuple[asyncio.Task[None], list[int]]] = {}


@handlers.on_connect
async def welcome(conn: Connection) -> None:
    await conn.send(
        "welcome", {"id": conn.id, "worker": conn.worker, "pid": os.getpid()}
    )


async def publish_forever(
    conn: Connection, args: dict[str, Any], did: list[int]
) -> None:
    ws = conn.manager
    while not did[2]:  # stopped between publications: each one is counted
        try:
            await ws.publish(args["room"], "msg", {"tag": args["tag"], "i": did[0]})
            did[0] += 1
        except SequencerUnavailable:
            did[1] += 1  # its sequencer restarts: try again
        # Paced, so that a few publishers do not flood a 2-core machine.
        await asyncio.sleep(args.get("pause", 0.002))


@handlers.on("publish.start")
async def start(conn: Connection, msg: Envelope) -> None:
    did = [0, 0, 0]
    task = asyncio.get_running_loop().create_task(publish_forever(conn, msg.data, did))
    publishers[conn.id] = (task, did)
    await conn.send("publish.started")


@handlers.on("publish.stop")
async def stop(conn: Connection, msg: Envelope) -> None:
    task, did = publishers.pop(conn.id)
    did[2] = 1
    await task
    await conn.send("publish.stopped", {"sent": did[0], "failed": did[1]})


@handlers.on("publish.one")
async def one(conn: Connection, msg: Envelope) -> None:
    try:
        position = await conn.manager.publish(msg.data["room"], "msg", msg.data)
    except SequencerUnavailable:
        await conn.send("published", None)
        return
    assert position is not None
    await conn.send("published", position.as_dict())


@handlers.on_disconnect
async def gone(conn: Connection) -> None:
    found = publishers.pop(conn.id, None)
    if found is not None:
        found[0].cancel()


@app.post("/restart")
async def restart(request: Request) -> JSONResponse:
    request.app.m.restart(request.json["worker"])
    return json({"ok": True})
