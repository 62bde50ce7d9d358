"""Middleware before every envelope's handlers, and the one rule of failures
(issue 18, point 2), against a real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sanic import Blueprint, Sanic
from sanic_ext import Extend

from sanic_ws_ext import (
    Connection,
    Envelope,
    MessageError,
    RequestFailed,
    WSExtension,
    WSHandlers,
)
from sanic_ws_ext.testing import WSTestClient, serve

AppFactory = Callable[..., Sanic[Any, Any]]


def build(make_app: AppFactory) -> tuple[Sanic[Any, Any], list[str]]:
    """An app whose middleware refuses, rewrites and records; ``ran`` says
    which middleware and handlers ran, in order."""
    app = make_app()
    Extend(app).register(WSExtension)
    ran: list[str] = []
    bp = Blueprint("feature")
    later = WSHandlers(bp)  # a blueprint's group: after the app's own
    app.blueprint(bp)
    chat = WSHandlers(app)
    chat.room("room:{n}", client_join=True)

    @later.middleware
    async def refuse_admin(conn: Connection, msg: Envelope) -> None:
        ran.append(f"refuse_admin:{msg.type}")
        if msg.type.startswith("admin.") or msg.data == {"room": "room:banned"}:
            raise MessageError("forbidden", f"{msg.type} is not for you")

    @chat.middleware
    async def stamp(conn: Connection, msg: Envelope) -> Envelope | None:
        ran.append(f"stamp:{msg.type}")
        if msg.type == "say" and isinstance(msg.data, dict):
            return Envelope(msg.type, {**msg.data, "by": "server"}, msg.timestamp)
        if msg.type == "broken":
            return "not an envelope"  # type: ignore[return-value]
        return None

    @chat.on_message
    async def every(conn: Connection, msg: Envelope | bytes) -> None:
        ran.append("every")
        if isinstance(msg, Envelope) and msg.type == "fail.early":
            raise MessageError("early", "on_message refused it")

    @chat.on("say")
    async def say(conn: Connection, msg: Envelope) -> dict[str, Any]:
        ran.append("say")
        await conn.send("said", msg.data)
        return dict(msg.data)

    @chat.on("admin.reset")
    async def reset(conn: Connection, msg: Envelope) -> None:
        ran.append("reset")

    @chat.on("fail.early")
    async def after_failure(conn: Connection, msg: Envelope) -> None:
        ran.append("after_failure")

    @chat.on("broken")
    async def broken(conn: Connection, msg: Envelope) -> None:
        ran.append("broken")

    @chat.on_binary
    async def binary(conn: Connection, data: bytes) -> None:
        ran.append("binary")
        await conn.send("got.binary", len(data))

    return app, ran


async def test_middleware_runs_first_in_group_order_and_may_rewrite(
    make_app: AppFactory,
) -> None:
    app, ran = build(make_app)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        await client.send("say", {"text": "hi"})
        assert (await client.expect("said")).data == {"text": "hi", "by": "server"}
        assert ran == ["stamp:say", "refuse_admin:say", "every", "say"]
        # A request: the rewritten envelope keeps its ref.
        reply = await client.request("say", {"text": "again"})
        assert reply == {"text": "again", "by": "server"}


async def test_a_refused_message_reaches_no_handler(make_app: AppFactory) -> None:
    app, ran = build(make_app)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        await client.send("admin.reset")
        error = (await client.expect("error")).data
        assert error == {"code": "forbidden", "reason": "admin.reset is not for you"}
        assert ran == ["stamp:admin.reset", "refuse_admin:admin.reset"]
        with pytest.raises(RequestFailed) as refused:
            await client.request("admin.reset")
        assert refused.value.code == "forbidden"
        assert "reset" not in ran
        # room.join goes through middleware too.
        await client.send("room.join", {"room": "room:banned"})
        assert (await client.expect("error")).data["code"] == "forbidden"
        assert (
            "room:banned"
            not in app.ctx.ws.get(next(iter(app.ctx.ws.connections))).rooms
        )
        assert (await client.join("room:1"))["room"] == "room:1"
        # The connection goes on.
        await client.send("say", {"text": "still here"})
        assert (await client.expect("said")).data["text"] == "still here"


async def test_the_first_failure_stops_the_rest(make_app: AppFactory) -> None:
    app, ran = build(make_app)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        await client.send("fail.early")
        assert (await client.expect("error")).data["code"] == "early"
        assert ran[-1] == "every" and "after_failure" not in ran
        # A middleware that returns something else is a handler error.
        await client.send("broken")
        assert (await client.expect("error")).data["code"] == "handler_error"
        assert "broken" not in ran


async def test_binary_frames_do_not_go_through_middleware(
    make_app: AppFactory,
) -> None:
    app, ran = build(make_app)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        await client.send_raw(b"\x00\x01")
        assert (await client.expect("got.binary")).data == 2
        assert ran == ["every", "binary"]


def test_middleware_must_be_async(make_app: AppFactory) -> None:
    chat = WSHandlers(make_app())
    with pytest.raises(TypeError, match="middleware"):
        chat.middleware(lambda conn, msg: None)  # type: ignore[type-var]
