"""Rooms that keep their history: `sanic history_chat:app --workers 2`.

docs/howto/history.md explains it; tests/test_docs_examples.py runs it.
"""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, History, WSExtension, WSHandlers

app = Sanic("history_chat")
Extend(app).register(WSExtension)
chat = WSHandlers(app)

# --8<-- [start:rooms]
# The last 500 messages of each chat room, kept 10 minutes; a member who
# joins without a position gets the latest 20 before "room.joined".
chat.room("chat:{id}", client_join=True, history=History(size=500, ttl=600, on_join=20))
# A ticker keeps its latest price and gives it to each member on joining.
chat.room("ticker:{symbol}", client_join=True, history="latest")
# --8<-- [end:rooms]


# --8<-- [start:publish]
@chat.on("chat.send")
async def send(conn: Connection, msg: Envelope) -> None:
    room = f"chat:{msg.data['id']}"
    if room not in conn.rooms:
        return
    position = await conn.manager.publish(
        room, "chat.message", {"from": conn.id, "text": msg.data["text"]}
    )
    # Numbered by the room's sequencer: {"offset": 43, "epoch": "..."}.
    await conn.send("chat.sent", position.as_dict() if position else None)


# --8<-- [end:publish]


# --8<-- [start:catchup]
@app.get("/rooms/<room>/history")
async def catch_up(request: Request, room: str) -> JSONResponse:
    """What a page rendered on the server, or one that could not recover, loads."""
    since: dict[str, Any] | None = None
    if "offset" in request.args and "epoch" in request.args:
        since = {
            "offset": int(request.args["offset"][0]),
            "epoch": request.args["epoch"][0],
        }
    try:
        page = await request.app.ctx.ws.history(room, since=since, limit=100)
    except ValueError as exc:  # not a history room, or a bad position
        return json({"error": str(exc)}, status=400)
    return json(
        {
            "recovered": page.recovered,
            "position": page.position.as_dict(),
            "publications": page.publications,
        }
    )


# --8<-- [end:catchup]
