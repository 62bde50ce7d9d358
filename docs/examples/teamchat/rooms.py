"""Rooms: who may enter which, what is said in them, who is there."""

from __future__ import annotations

from sanic import Blueprint, Request

from sanic_ws_ext import Accept, Connection, Envelope, MessageError, Reject, WSHandlers

bp = Blueprint("rooms")
ws = WSHandlers(bp)

PUBLIC = ("general", "random")


# --8<-- [start:identify]
@ws.verify
async def identify(request: Request) -> Accept:
    # A name in the URL stands in for real authentication here: see
    # docs/howto/auth.md for a signed token checked in this same hook.
    name = request.args.get("name", "")
    if not name.isalnum():
        raise Reject(400, "?name= must be letters and digits")  # before the upgrade
    return Accept(user=name)


# --8<-- [end:identify]


# --8<-- [start:rooms]
# The public rooms: anyone may join, members see who is there (and, in this
# example, on which worker each connection landed).
for name in PUBLIC:
    ws.room(name, presence="full", client_join=True, expose_ids=True)


# Inboxes: one per user, joined only by that user.
@ws.room("inbox.{owner}")
async def own_inbox(conn: Connection, room: str, owner: str) -> bool:
    return owner == conn.user


@ws.on_connect
async def enter_general(conn: Connection) -> None:
    # The server may put a connection in any room; the client may not leave
    # a room the server put it in (room.leave only undoes its own joins).
    await conn.join("general")


# --8<-- [end:rooms]


# --8<-- [start:say]
@ws.on("room.say")
async def say(conn: Connection, msg: Envelope) -> None:
    room, text = _room_and_text(conn, msg)
    await conn.manager.publish(
        room, "room.message", {"room": room, "from": conn.user, "text": text}
    )


@ws.on("room.who")
async def who(conn: Connection, msg: Envelope) -> None:
    room, _ = _room_and_text(conn, msg, need_text=False)
    members = await conn.manager.members(room)  # cluster-wide
    await conn.send(
        "room.who", {"room": room, "users": sorted({m.user or "" for m in members})}
    )


# --8<-- [end:say]


def _room_and_text(
    conn: Connection, msg: Envelope, *, need_text: bool = True
) -> tuple[str, str]:
    data = msg.data if isinstance(msg.data, dict) else {}
    room, text = data.get("room"), data.get("text", "")
    if not isinstance(room, str) or room not in conn.rooms:
        raise MessageError("not_in_room", "join the room first")
    if need_text and not (isinstance(text, str) and text.strip()):
        raise MessageError("bad_text", "text must be a non-empty string")
    return room, text
