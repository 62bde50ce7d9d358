"""The AsyncAPI 3.0 document: generated from the declarations, served when
WS_ASYNCAPI is on, and valid for the official parser (@asyncapi/parser)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sanic import Sanic

from sanic_ws_ext.asyncapi import asyncapi_document
from sanic_ws_ext.testing import serve

from .apps import typed as typed_app
from .nodetools import run_node

AppFactory = Callable[..., Sanic[Any, Any]]


def parse(document: dict[str, Any], tmp_path: Path) -> str:
    """The parser's verdict; fails the test with its diagnostics if invalid."""
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(document))
    result = run_node("asyncapi-validate.mjs", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_feature_app_document_is_valid(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = typed_app.build(make_app())
    document = asyncapi_document(app, host="localhost:8000")
    verdict = parse(document, tmp_path)
    assert "VALID" in verdict
    messages = document["components"]["messages"]
    # Each schema kind became a component the messages refer to.
    schemas = document["components"]["schemas"]
    assert {"Draw", "Point", "Rename", "Profile", "Move", "Ping", "Ack"} <= set(schemas)
    draw = messages["board.draw"]["payload"]["properties"]
    assert draw["type"] == {"type": "string", "const": "board.draw"}
    assert draw["data"] == {"$ref": "#/components/schemas/Draw"}
    assert messages["board.draw"]["summary"].startswith("Draw a stroke")
    reply = messages["board.draw.reply"]["payload"]["properties"]["data"]
    assert reply == {"$ref": "#/components/schemas/Ack"}
    assert messages["untyped"]["payload"]["properties"]["data"] == {}
    # Sent by the server, declared with sends().
    assert document["operations"]["send.board.drawn"]["action"] == "send"
    assert "send.game.moved" in document["operations"]
    # Error codes, close codes, the room and its parameter.
    error = messages["error"]["payload"]["properties"]["data"]
    assert "invalid_data" in error["x-error-codes"]
    assert document["channels"]["socket"]["x-close-codes"]["1009"]
    room = document["channels"]["room0"]
    assert room["address"] == "board:{board_id}"
    assert set(room["parameters"]) == {"board_id"}
    assert room["x-presence"] == "full" and room["x-client-join"] == "guarded"
    assert "send.presence.state" in document["operations"]


def test_demo_document_is_valid(tmp_path: Path) -> None:
    from demo.server import app

    document = asyncapi_document(app)
    parse(document, tmp_path)
    assert "receive.chat.send" in document["operations"]


def test_the_parser_refuses_a_broken_document(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The harness itself: a document the parser must refuse is refused."""
    document = asyncapi_document(typed_app.build(make_app()))
    document["operations"]["receive.ping"]["channel"] = {"$ref": "#/channels/nope"}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(document))
    result = run_node("asyncapi-validate.mjs", str(path))
    assert result.returncode == 1 and "INVALID" in result.stdout


async def test_served_when_switched_on(make_app: AppFactory, tmp_path: Path) -> None:
    app = typed_app.build(make_app(WS_ASYNCAPI=True))
    async with serve(app) as server, httpx.AsyncClient() as http:
        response = await http.get(server.url("/ws/asyncapi.json"))
        assert response.status_code == 200
        document = response.json()
        page = await http.get(server.url("/ws/asyncapi"))
    parse(document, tmp_path)
    host = server.url("/").split("//")[1].rstrip("/")
    assert document["servers"]["this"] == {
        "host": host,
        "protocol": "ws",
        "pathname": "/ws",
    }
    assert page.status_code == 200
    assert "AsyncApiStandalone.render" in page.text
    assert '"asyncapi.json"' in page.text


async def test_off_by_default(make_app: AppFactory) -> None:
    app = typed_app.build(make_app())
    async with serve(app) as server, httpx.AsyncClient() as http:
        assert (await http.get(server.url("/ws/asyncapi.json"))).status_code == 404
        assert (await http.get(server.url("/ws/asyncapi"))).status_code == 404
