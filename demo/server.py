"""A minimal chat on sanic-ws-ext: `sanic demo.server:app`, then open http://127.0.0.1:8000/.

Every browser tab that opens the page joins one chat; messages go to all.
"""

from __future__ import annotations

from pathlib import Path

from sanic import Request, Sanic
from sanic.response import HTTPResponse, html
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, MessageError, WSExtension, WSHandlers

app = Sanic("demo")
Extend(app).register(WSExtension)
chat = WSHandlers(app)

MAX_TEXT = 500


@chat.on_connect
async def joined(conn: Connection) -> None:
    await conn.send(
        "chat.welcome", {"id": conn.id, "online": await conn.manager.count()}
    )
    await conn.manager.broadcast("chat.joined", {"id": conn.id}, exclude=[conn.id])


@chat.on("chat.send")
async def relay(conn: Connection, msg: Envelope) -> None:
    text = msg.data.get("text") if isinstance(msg.data, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        raise MessageError("bad_text", f"text must be 1 to {MAX_TEXT} characters")
    await conn.manager.broadcast("chat.message", {"from": conn.id[:8], "text": text})


@chat.on_disconnect
async def left(conn: Connection) -> None:
    await conn.manager.broadcast("chat.left", {"id": conn.id})


PAGE = Path(__file__).with_name("index.html").read_text()


@app.get("/")
async def index(request: Request) -> HTTPResponse:
    return html(PAGE)
