"""An app using every typed-message feature: each schema kind, nested
models, replies, declared sends, rooms, on_message. Used by the typed
message tests, the AsyncAPI document's and the TypeScript types' tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, Field
from sanic import Sanic
from sanic_ext import Extend
from typing_extensions import TypedDict

from sanic_ws_ext import Connection, Envelope, MessageError, WSExtension, WSHandlers


@dataclass
class Point:
    x: int
    y: int


@dataclass
class Draw:
    """A stroke on the board (a dataclass)."""

    color: Literal["red", "green", "blue"]
    points: list[Point]
    width: float = 1.0


class Profile(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    tags: list[str] = []


class Rename(BaseModel):
    """Change one's profile (a pydantic model)."""

    profile: Profile
    reason: str | None = None


class Move(msgspec.Struct):
    """A move in a game (a msgspec struct)."""

    piece: str
    to: tuple[int, int]


class Ping(TypedDict):
    """A ping with a counter (a TypedDict)."""

    n: int


@dataclass
class Node:
    name: str
    kids: list[Node] = field(default_factory=list)


@dataclass
class Ack:
    ok: bool
    count: int


@dataclass
class Drawn:
    by: str
    stroke: Draw


def build(app: Sanic[Any, Any]) -> Sanic[Any, Any]:
    Extend(app).register(WSExtension)
    h = WSHandlers(app)
    h.sends("board.drawn", Drawn, "A stroke someone drew, to everyone")
    h.sends("game.moved", Move)

    @h.on("board.draw")
    async def draw(conn: Connection, msg: Envelope[Draw]) -> Ack:
        """Draw a stroke: everyone gets board.drawn."""
        await conn.manager.broadcast("board.drawn", Drawn(by=conn.id, stroke=msg.data))
        return Ack(ok=True, count=len(msg.data.points))

    @h.on("profile.rename", schema=Rename)
    async def rename(conn: Connection, msg: Envelope) -> dict[str, Any]:
        data: Rename = msg.data
        return {"name": data.profile.name, "kind": type(data).__name__}

    @h.on("game.move")
    async def move(conn: Connection, msg: Envelope[Move]) -> None:
        await conn.send("game.moved", msg.data)

    @h.on("ping")
    async def ping(conn: Connection, msg: Envelope[Ping]) -> dict[str, int]:
        return {"n": msg.data["n"] + 1}

    @h.on("tree")
    async def tree(conn: Connection, msg: Envelope[Node]) -> int:
        def depth(node: Node) -> int:
            return 1 + max((depth(k) for k in node.kids), default=0)

        return depth(msg.data)

    @h.on("untyped")
    async def untyped(conn: Connection, msg: Envelope) -> Any:
        return msg.data

    @h.on("bad.send")
    async def bad_send(conn: Connection, msg: Envelope) -> None:
        """Sends board.drawn with data that does not match its schema."""
        await conn.send("board.drawn", {"by": 1})

    @h.on("bad.reply")
    async def bad_reply(conn: Connection, msg: Envelope[Ping]) -> Ack:
        return Ack(ok="maybe", count=1)  # type: ignore[arg-type]

    @h.on("refuse")
    async def refuse(conn: Connection, msg: Envelope[Ping]) -> None:
        raise MessageError("not_allowed", "never")

    @h.room("board:{board_id}", presence="full", client_join=True)
    async def may_join(conn: Connection, room: str, board_id: str) -> bool:
        return board_id != "secret"

    return app
