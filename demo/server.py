"""The chat demo: `sanic demo.server:app --workers 4`, then open http://127.0.0.1:8000/.

Rooms, a live cluster-wide presence list per room (users, with a count of
their tabs), the message stream and the connection state, on the embedded
relay (no Redis needed). Set ``SANIC_WS_BACKPLANE=redis://...`` to run it on
several machines.

Names: type one in the "Your name" box at the top of the page, or open the
page as ``/?name=alice``. A chosen name is kept for the browser's other tabs
(they are then one user, listed once with their number of tabs); without
one, each tab is a guest of its own (``guest-1a2b``). There are no accounts:
the verify hook takes the name the page sends (``?name=`` on the websocket
URL) if it is 1 to 24 letters, digits, spaces, dots, dashes or underscores,
else gives a guest name.

Each room keeps its last 200 messages for an hour (``history=``): a page
entering a room is shown the latest 50, and a page that comes back to a room,
or reconnects after a network drop or a server restart, is sent what it
missed, each message once; when the server no longer has them (after a
restart the history starts again), the page says so. It shows a message typed
while offline greyed until it is sent, and works down to phone widths.

Its messages are typed (docs/howto/typed.md): ``chat.send`` is validated
against :class:`ChatSend` before the handler runs, and what the server sends
is declared with ``sends``, for the AsyncAPI document (served at
``/ws/asyncapi``) and the TypeScript types
(``python -m sanic_ws_ext types demo.server:app``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field
from sanic import Request, Sanic
from sanic.response import HTTPResponse, html, raw
from sanic_ext import Extend
from typing_extensions import TypedDict

from sanic_ws_ext import (
    Accept,
    Connection,
    Envelope,
    History,
    MessageError,
    WSExtension,
    WSHandlers,
)

app = Sanic("demo")
app.config.WS_ASYNCAPI = True  # /ws/asyncapi.json and the page at /ws/asyncapi
Extend(app).register(WSExtension)
chat = WSHandlers(app)

ROOMS = ("lobby", "random", "dev")
MAX_TEXT = 500
_NAME = re.compile(r"[\w .-]{1,24}")


@dataclass
class ChatSend:
    """A message to a room the page joined."""

    room: str
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


@dataclass
class Welcome:
    """Who the server says you are, once connected."""

    id: str
    name: str
    rooms: list[str]
    worker: str


# "from" is a Python keyword: a TypedDict (functional form) can have it.
ChatMessage = TypedDict("ChatMessage", {"room": str, "from": str, "text": str})

chat.sends("chat.welcome", Welcome, "Who you are, once connected")
chat.sends("chat.message", ChatMessage, "A message in a room you joined")


@chat.verify
async def identify(request: Request) -> Accept:
    """The name the page sends in ``?name=`` (no accounts in a demo); else a
    guest name."""
    name = request.args.get("name", "").strip()
    if not _NAME.fullmatch(name):
        name = f"guest-{secrets.token_hex(2)}"
    return Accept(user=name, presence={"name": name})


# Every room of the demo: full presence, any client may join, and a history
# that brings a page back up to date (kept by the workers: lost on a restart).
for _room in ROOMS:
    chat.room(
        _room,
        presence="full",
        client_join=True,
        history=History(size=200, ttl=3600, on_join=50),
    )


@chat.on_connect
async def welcome(conn: Connection) -> None:
    welcome = Welcome(conn.id, conn.user or "", list(ROOMS), conn.worker)
    await conn.send("chat.welcome", welcome)


@chat.on("chat.send")
async def say(conn: Connection, msg: Envelope[ChatSend]) -> None:
    """Say something in a room you joined: its members get chat.message."""
    room, text = msg.data.room, msg.data.text
    if room not in conn.rooms:
        raise MessageError("not_in_room", "join the room first")
    if not text.strip():
        raise MessageError("bad_text", "say something")
    message: ChatMessage = {"room": room, "from": conn.user or "", "text": text}
    await conn.manager.publish(room, "chat.message", message)


PAGE = Path(__file__).with_name("index.html").read_text()
# The page's icon is inline; this is for pages that do not say (the
# operations dashboard) and for tools that ask anyway.
ICON = (
    b"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
    b"<rect width='16' height='16' rx='3' fill='#1f2937'/>"
    b"<path d='M4 5.5h8M4 8.5h5' stroke='#fff' stroke-width='1.6'"
    b" stroke-linecap='round'/></svg>"
)


@app.get("/")
async def index(request: Request) -> HTTPResponse:
    return html(PAGE)


@app.get("/favicon.ico")
async def favicon(request: Request) -> HTTPResponse:
    return raw(
        ICON,
        content_type="image/svg+xml",
        headers={"cache-control": "public, max-age=86400"},
    )
