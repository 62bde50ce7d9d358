"""Typed messages: a schema per type, validated before the handler runs.

Every schema kind (dataclass, pydantic model, msgspec struct, TypedDict),
valid and invalid payloads, nested errors, very large and deeply nested
payloads, typed replies and declared sends checked in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from sanic import Sanic

from sanic_ws_ext import Connection, Envelope, RequestFailed, WSHandlers
from sanic_ws_ext.envelope import encode_envelope
from sanic_ws_ext.schemas import MAX_ERRORS, MAX_TEXT, InvalidData, schema_of
from sanic_ws_ext.testing import WSTestClient, serve

from .apps import typed as app_module
from .apps.typed import Draw, Move, Node, Point, Rename

AppFactory = Callable[..., Sanic[Any, Any]]


async def failed(client: WSTestClient, type: str, data: Any) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        await client.request(type, data)
    return info.value


async def test_each_schema_kind_valid(make_app: AppFactory) -> None:
    app = app_module.build(make_app())
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        stroke = {"color": "red", "points": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}
        assert await c.request("board.draw", stroke) == {"ok": True, "count": 2}
        drawn = await c.expect("board.drawn")
        assert drawn.data["stroke"] == {**stroke, "width": 1.0}
        renamed = await c.request("profile.rename", {"profile": {"name": "ann"}})
        assert renamed == {"name": "ann", "kind": "Rename"}
        await c.send("game.move", {"piece": "knight", "to": [2, 3]})
        moved = await c.expect("game.moved")
        assert moved.data == {"piece": "knight", "to": [2, 3]}
        assert await c.request("ping", {"n": 41}) == {"n": 42}
        assert await c.request("untyped", [1, "x"]) == [1, "x"]


@pytest.mark.parametrize(
    ("type", "data", "field", "problem"),
    [
        # dataclass: a nested field, a literal, a missing field, not an object
        ("board.draw", {"color": "red", "points": [{"x": 1, "y": "z"}]},
         "points[0].y", "valid integer"),
        ("board.draw", {"color": "pink", "points": []}, "color", "'red'"),
        ("board.draw", {"color": "red"}, "points", "Field required"),
        ("board.draw", [1, 2], "", "dictionary"),
        # pydantic: a nested model's constraint
        ("profile.rename", {"profile": {"name": ""}}, "profile.name", "at least 1"),
        ("profile.rename", {"profile": {"name": "a", "tags": [1]}},
         "profile.tags[0]", "valid string"),
        # msgspec: a nested type, a missing field
        ("game.move", {"piece": "k", "to": [1, "x"]}, "to[1]", "Expected `int`"),
        ("game.move", {"to": [1, 2]}, "piece", "Field required"),
        # TypedDict
        ("ping", {"n": "many"}, "n", "valid integer"),
        ("ping", None, "", "dictionary"),
    ],
)  # fmt: skip
async def test_invalid_payloads(
    make_app: AppFactory, type: str, data: Any, field: str, problem: str
) -> None:
    app = app_module.build(make_app())
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        # A request: the ok:false reply names the field and the problem.
        error = await failed(c, type, data)
        assert error.code == "invalid_data"
        assert error.details["field"] == field
        assert problem in error.details["problem"]
        assert error.details["count"] >= 1
        assert error.details["errors"][0] == {
            "field": field,
            "problem": error.details["problem"],
        }
        # Without a ref: an error frame, with the same fields.
        await c.send(type, data)
        frame = await c.expect("error")
        assert frame.data["code"] == "invalid_data"
        assert frame.data["field"] == field
        assert field in frame.data["reason"] and problem in frame.data["reason"]
        # The connection goes on.
        assert await c.request("ping", {"n": 1}) == {"n": 2}


async def test_invalid_data_never_reaches_the_handler(make_app: AppFactory) -> None:
    app = make_app()
    app_module.build(app)
    seen: list[Any] = []
    errors: list[Exception] = []
    h = WSHandlers(app)

    @dataclass
    class Vote:
        choice: int

    @h.on("vote")
    async def vote(conn: Connection, msg: Envelope[Vote]) -> None:
        seen.append(msg.data)
        await conn.send("voted", msg.data)

    @h.on_error
    async def on_error(conn: Connection, exc: Exception) -> None:
        errors.append(exc)

    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        await c.send("vote", {"choice": "left"})
        assert (await c.expect("error")).data["code"] == "invalid_data"
        await c.send("vote", {"choice": 3})
        assert (await c.expect("voted")).data == {"choice": 3}
    assert seen == [Vote(3)]
    assert len(errors) == 1 and isinstance(errors[0], InvalidData)


async def test_many_errors_are_cut(make_app: AppFactory) -> None:
    app = app_module.build(make_app())
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        points = [{"x": "a", "y": "b"}] * 500
        error = await failed(c, "board.draw", {"color": "red", "points": points})
        assert error.details["count"] == 1000
        assert len(error.details["errors"]) == MAX_ERRORS
        assert error.details["field"] == "points[0].x"


async def test_very_large_payload_bounded(make_app: AppFactory) -> None:
    """Near WS_MAX_MESSAGE_SIZE (1 MiB): answered, in bounded time, with a
    frame whose size does not grow with the payload's."""
    app = app_module.build(make_app())
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        points = [{"x": 1, "y": 2}] * 40_000
        assert len(encode_envelope("board.draw", points)) < 1 << 20
        ok = await c.request("board.draw", {"color": "red", "points": points})
        assert ok == {"ok": True, "count": 40_000}
        await c.expect("board.drawn")
        bad = [{"x": "no", "y": 2}] * 40_000
        started = time.perf_counter()
        error = await failed(c, "board.draw", {"color": "red", "points": bad})
        assert error.details["count"] == 40_000
        assert len(str(error.details)) < 4 * MAX_ERRORS * MAX_TEXT
        print(
            f"40,000 invalid points answered in {time.perf_counter() - started:.3f} s"
        )
        # Too big for WS_MAX_MESSAGE_SIZE: closed with 1009 before any schema.
        huge = {"color": "red", "points": [{"x": 1, "y": 2}] * 80_000}
        await c.send("board.draw", huge)
        code, _ = await c.wait_closed()
        assert code == 1009


async def test_deeply_nested_payload(make_app: AppFactory) -> None:
    app = app_module.build(make_app())
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        node: dict[str, Any] = {"name": "leaf"}
        for _ in range(50):
            node = {"name": "n", "kids": [node]}
        assert await c.request("tree", node) == 51
        # Deeper than the schema validator goes (pydantic stops at 200 levels):
        # a clear error, its field path cut.
        for _ in range(250):
            node = {"name": "n", "kids": [node]}
        error = await failed(c, "tree", node)
        assert error.code == "invalid_data"
        assert "depth" in error.details["problem"]
        assert len(error.details["field"]) <= MAX_TEXT
        assert len(error.reason) <= 2 * MAX_TEXT + 10
        # Nested past the JSON decoder's limit: refused before any schema.
        deep = '{"type":"tree","ref":"r1","data":' + "[" * 100_000 + "]" * 100_000 + "}"
        await c.send_raw(deep)
        reply = await c.recv()
        assert isinstance(reply, Envelope) and reply.type == "error"
        assert reply.data["code"] == "invalid_json"
        assert await c.request("ping", {"n": 1}) == {"n": 2}


async def test_declared_sends_checked_in_tests(make_app: AppFactory) -> None:
    app = app_module.build(make_app())
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        error = await failed(c, "bad.send", None)
        assert error.code == "handler_error"  # InvalidOutgoing in the sender
        error = await failed(c, "bad.reply", {"n": 1})
        assert error.code == "handler_error"


async def test_outgoing_checks_off(make_app: AppFactory) -> None:
    app = app_module.build(make_app(WS_VALIDATE_OUTGOING=False))
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        await c.request("bad.send", None)
        assert (await c.expect("board.drawn")).data == {"by": 1}
        assert await c.request("bad.reply", {"n": 1}) == {"ok": "maybe", "count": 1}
        assert server.app.ctx.ws._check_out is None


async def test_message_error_of_a_typed_handler(make_app: AppFactory) -> None:
    app = app_module.build(make_app())
    async with serve(app) as server, await WSTestClient.connect(server.ws_url()) as c:
        error = await failed(c, "refuse", {"n": 1})
        assert (error.code, error.details) == ("not_allowed", {})


def test_instances_are_sent_as_json() -> None:
    drawn = encode_envelope("x", Draw("red", [Point(1, 2)]))
    assert b'"data":{"color":"red","points":[{"x":1,"y":2}],"width":1.0}' in drawn
    renamed = encode_envelope("x", Rename.model_validate({"profile": {"name": "a"}}))
    assert b'"profile":{"name":"a","tags":[]}' in renamed
    assert b'"data":{"piece":"k","to":[1,2]}' in encode_envelope("x", Move("k", (1, 2)))
    with pytest.raises(TypeError):
        encode_envelope("x", object())


def test_declarations_refused_where_made(make_app: AppFactory) -> None:
    h = WSHandlers(make_app())
    with pytest.raises(TypeError, match="not a message schema"):
        h.sends("x", int)
    with pytest.raises(TypeError, match="not a message schema"):

        @h.on("x", schema=dict)
        async def handler(conn: Connection, msg: Envelope) -> None: ...

    with pytest.raises(TypeError, match="schema=Draw but"):

        @h.on("y", schema=Draw)
        async def other(conn: Connection, msg: Envelope[Node]) -> None: ...

    if TYPE_CHECKING:
        from .apps.typed import Ping
    with pytest.raises(TypeError, match="cannot be resolved"):

        @h.on("z")
        async def hidden(conn: Connection, msg: Envelope[Ping]) -> None: ...


def test_schema_errors_name_fields() -> None:
    with pytest.raises(InvalidData) as info:
        schema_of(Node).validate("tree", {"name": "a", "kids": [{"kids": []}]})
    assert (info.value.field, info.value.problem) == ("kids[0].name", "Field required")
    assert info.value.reason == "data.kids[0].name: Field required"
