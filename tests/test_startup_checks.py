"""Mistakes are named where they are made, in our words (issue 23).

A handler that is not ``async`` is refused when decorated; a group bound to a
blueprint that no app registered stops ``sanic app:app`` from starting. Both
used to fail later, far from the cause: on every message ("object NoneType
can't be used in 'await' expression"), or never (handlers silently unused).
A client's invalid JSON is answered with where and what, not with the JSON
library's words.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import pytest
from sanic import Blueprint, Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, WSExtension, WSHandlers
from sanic_ws_ext.testing import WSTestClient, serve

from .procs import SanicProcess

AppFactory = Callable[..., Sanic[Any, Any]]


def plain(*args: Any) -> None:
    """A handler written without ``async``."""


def _decorators(group: WSHandlers) -> dict[str, Callable[[Any], Any]]:
    return {
        "verify hook": group.verify,
        "on_connect handler": group.on_connect,
        "on_message handler": group.on_message,
        "on('chat.send') handler": group.on("chat.send"),
        "on_binary handler": group.on_binary,
        "on_disconnect handler": group.on_disconnect,
        "on_error handler": group.on_error,
        "on_join guard": group.on_join,
        "on_backplane hook": group.on_backplane,
        "room('doc:{doc_id}') guard": group.room("doc:{doc_id}"),
    }


@pytest.mark.parametrize("role", list(_decorators(WSHandlers())))
def test_a_plain_function_is_refused_when_decorated(
    make_app: AppFactory, role: str
) -> None:
    group = WSHandlers(make_app())
    decorate = _decorators(group)[role]
    with pytest.raises(TypeError) as refused:
        decorate(plain)
    message = str(refused.value)
    assert role in message and "plain" in message and "async def" in message


def test_a_plain_client_join_guard_is_refused(make_app: AppFactory) -> None:
    group = WSHandlers(make_app())
    with pytest.raises(TypeError, match=r"client_join guard .*async def"):
        group.room("lobby", client_join=plain)  # type: ignore[arg-type]
    group.room("lobby", client_join=True)  # a bool is no guard: fine


def test_async_callables_of_every_shape_are_accepted(make_app: AppFactory) -> None:
    async def handler(conn: Connection, msg: Envelope, extra: int = 0) -> None:
        pass

    class Handler:
        async def __call__(self, conn: Connection, msg: Envelope) -> None:
            pass

    @functools.wraps(handler)
    def wrapped(conn: Connection, msg: Envelope) -> Any:  # returns the coroutine
        return handler(conn, msg)

    group = WSHandlers(make_app())
    for shape in (handler, Handler(), functools.partial(handler, extra=1), wrapped):
        group.on("chat.send")(shape)
    assert len(group.typed["chat.send"]) == 4


async def test_a_forgotten_blueprint_stops_the_server_naming_it() -> None:
    with pytest.raises(RuntimeError) as failed:
        async with SanicProcess(
            "tests.apps.forgotten_blueprint:app", "--single-process"
        ):
            pass
    log = str(failed.value)
    assert "ConfigError" in log and "'forgotten_chat'" in log, log
    assert "forgotten_blueprint.py:18" in log  # where the group was bound
    assert "app.blueprint(bp)" in log


async def test_in_test_mode_a_forgotten_blueprint_is_a_warning(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Several apps share a test process: the blueprint may be another's.
    app = make_app()
    Extend(app).register(WSExtension)
    bp = Blueprint("never_registered_here")
    WSHandlers(bp)
    with caplog.at_level(logging.WARNING, logger="sanic.root.sanic_ws_ext"):
        async with serve(app):
            pass
    assert "'never_registered_here'" in caplog.text
    # Registered, it is collected and no longer reported.
    caplog.clear()
    other = make_app()
    Extend(other).register(WSExtension)
    other.blueprint(bp)
    with caplog.at_level(logging.WARNING, logger="sanic.root.sanic_ws_ext"):
        async with serve(other):
            pass
    assert "never_registered_here" not in caplog.text


async def test_a_registered_blueprints_handlers_run(make_app: AppFactory) -> None:
    app = make_app()
    Extend(app).register(WSExtension)
    bp = Blueprint("registered_chat")
    chat = WSHandlers(bp)

    @chat.on("ping")
    async def pong(conn: Connection, msg: Envelope) -> None:
        await conn.send("pong", msg.data)

    app.blueprint(bp)
    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        await client.send("ping", 1)
        assert (await client.expect("pong")).data == 1


async def test_invalid_json_is_answered_in_our_words(make_app: AppFactory) -> None:
    """The error frame says what was wrong with the input, and where; not
    the JSON library's "Unexpected character found when decoding 'null'"."""
    app = make_app()
    Extend(app).register(WSExtension)
    chat = WSHandlers(app)

    @chat.on("chat.send")
    async def relay(conn: Connection, msg: Envelope) -> None:
        await conn.send("chat.message", msg.data)

    async with (
        serve(app) as server,
        await WSTestClient.connect(server.ws_url()) as client,
    ):
        for text, reason in [
            ("nul", "at character 1: expected a value"),
            ("{'type': 'chat.send'}", "at character 2: expected a key in double"),
            ('{"type": "chat.send",}', "at character 22: expected a key in"),
        ]:
            await client.send_raw(text)
            error = (await client.expect("error")).data
            assert error["code"] == "invalid_json"
            assert reason in error["reason"], error
            assert "decoding" not in error["reason"]
        # The connection stays open.
        await client.send("chat.send", "still here")
        assert (await client.expect("chat.message")).data == "still here"
