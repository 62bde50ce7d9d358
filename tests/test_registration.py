"""Every way of turning the extension on gives a live route and app.ctx.ws."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import ConnectionManager, WSExtension, WSHandlers
from sanic_ws_ext.extension import _Register
from sanic_ws_ext.testing import WSTestClient, serve

AppFactory = Callable[..., Sanic[Any, Any]]


def _welcome(app: Sanic[Any, Any]) -> None:
    handlers = WSHandlers(app)

    @handlers.on_connect
    async def hello(conn: Any) -> None:
        await conn.send("welcome", {"id": conn.id})


async def _assert_live(app: Sanic[Any, Any], path: str = "/ws") -> None:
    async with serve(app) as server:
        assert isinstance(app.ctx.ws, ConnectionManager)
        async with await WSTestClient.connect(server.ws_url(path)) as client:
            welcome = await client.expect("welcome")
            assert welcome.data["id"] in app.ctx.ws.connections


def _register_one_liner(app: Sanic[Any, Any]) -> None:
    Extend(app).register(WSExtension)


def _register_app_extend(app: Sanic[Any, Any]) -> None:
    app.extend(extensions=[WSExtension])


def _register_constructor(app: Sanic[Any, Any]) -> None:
    Extend(app, extensions=[WSExtension])


def _register_pre_registry(app: Sanic[Any, Any]) -> None:
    Extend.register(WSExtension)
    Extend(app)


def _register_twice(app: Sanic[Any, Any]) -> None:
    ext = Extend(app)
    ext.register(WSExtension)
    ext.register(WSExtension)


def _register_both_ways(app: Sanic[Any, Any]) -> None:
    app.extend(extensions=[WSExtension])
    app.ext.register(WSExtension)


def _register_app_extend_twice(app: Sanic[Any, Any]) -> None:
    # Two modules each with app.extend(...): Sanic alone refuses the second
    # ("Cannot extend Sanic after Sanic Extensions has been setup").
    app.extend(extensions=[WSExtension])
    assert app.extend(extensions=[WSExtension]) is app.ext


def _register_one_liner_then_app_extend(app: Sanic[Any, Any]) -> None:
    Extend(app).register(WSExtension)
    app.extend(extensions=[WSExtension])


def _register_app_extend_after_a_plain_extend(app: Sanic[Any, Any]) -> None:
    Extend(app)  # sanic-ext for something else, before the extension
    app.extend(extensions=[WSExtension])


def _register_two_one_liners(app: Sanic[Any, Any]) -> None:
    # Two modules with the README's one-liner: sanic-ext alone stops at the
    # second Extend(app) (its openapi blueprint, registered twice).
    Extend(app).register(WSExtension)
    Extend(app).register(WSExtension)


def _register_constructor_then_one_liner(app: Sanic[Any, Any]) -> None:
    Extend(app, extensions=[WSExtension])
    Extend(app, extensions=[WSExtension]).register(WSExtension)


@pytest.mark.parametrize(
    "register",
    [
        _register_one_liner,
        _register_app_extend,
        _register_constructor,
        _register_pre_registry,
        _register_twice,
        _register_both_ways,
        _register_two_one_liners,
        _register_constructor_then_one_liner,
        _register_app_extend_twice,
        _register_one_liner_then_app_extend,
        _register_app_extend_after_a_plain_extend,
    ],
)
async def test_each_registration_serves(
    make_app: AppFactory, register: Callable[[Sanic[Any, Any]], None]
) -> None:
    app = make_app()
    register(app)
    _welcome(app)
    await _assert_live(app)
    routes = [r for r in app.router.routes if r.name.endswith("sanic_ws_ext.endpoint")]
    assert len(routes) == 1, "registering twice must not add a second route"


def test_a_second_extend_shares_the_first(make_app: AppFactory) -> None:
    app = make_app()
    first = Extend(app)
    second = Extend(app)
    second.register(WSExtension)
    assert app.ext is first
    assert sum(isinstance(e, WSExtension) for e in first.extensions) == 1
    # Each built-in extension once: nothing was started twice.
    names = [e.name for e in first.extensions]
    assert len(names) == len(set(names))


def test_a_second_extend_with_other_settings_says_to_use_app_ext(
    make_app: AppFactory,
) -> None:
    app = make_app()
    Extend(app)
    with pytest.raises(RuntimeError, match=r"app\.ext"):
        Extend(app, built_in_extensions=False)


def test_a_second_app_extend_with_other_settings_says_to_use_app_ext(
    make_app: AppFactory,
) -> None:
    app = make_app()
    app.extend(extensions=[WSExtension])
    with pytest.raises(RuntimeError, match=r"app\.ext\.register\(WSExtension\)"):
        app.extend(extensions=[WSExtension], built_in_extensions=False)


async def test_configured_path(make_app: AppFactory) -> None:
    app = make_app(WS_PATH="/live/socket")
    Extend(app).register(WSExtension)
    _welcome(app)
    await _assert_live(app, "/live/socket")


def test_register_wrapper_leaves_other_extensions_alone(make_app: AppFactory) -> None:
    from sanic_ext.extensions.base import Extension

    class Other(Extension):  # type: ignore[no-untyped-call]
        name = "otherforregistrationtest"

        def startup(self, bootstrap: Extend) -> None:
            pass

    assert isinstance(Extend.__dict__["register"], _Register)
    ext = Extend(make_app())
    ext.register(Other)
    # sanic-ext's own behaviour for other extensions: queued for the next Extend.
    assert Other in Extend._pre_registry
    assert not any(isinstance(e, Other) for e in ext.extensions)


async def test_plain_get_gets_426(make_app: AppFactory) -> None:
    app = make_app()
    Extend(app).register(WSExtension)
    async with serve(app) as server, httpx.AsyncClient() as http:
        response = await http.get(server.url("/ws"))
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"


async def test_malformed_handshake_gets_400(make_app: AppFactory) -> None:
    app = make_app()
    Extend(app).register(WSExtension)
    async with serve(app) as server, httpx.AsyncClient() as http:
        response = await http.get(
            server.url("/ws"),
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    assert response.status_code == 400
    assert "Sec-WebSocket-Key" in response.text


async def test_manager_ready_for_app_listeners(make_app: AppFactory) -> None:
    app = make_app()
    Extend(app).register(WSExtension)
    seen: list[object] = []

    @app.before_server_start
    async def use_it(app: Sanic[Any, Any]) -> None:
        seen.append(app.ctx.ws)

    async with serve(app):
        assert seen and isinstance(seen[0], ConnectionManager)


async def test_asgi_mode_refuses_clearly(make_app: AppFactory) -> None:
    """Under ASGI there is no socket to take: a clear 501, not a hang."""
    app = make_app()
    Extend(app).register(WSExtension)
    _, response = await app.asgi_client.get("/ws", headers={"Upgrade": "websocket"})
    assert response.status_code == 501
    assert "ASGI" in response.text


def test_sanic_testing_websocket_client(make_app: AppFactory) -> None:
    """sanic-testing's real-server client works: one process, local delivery."""
    app = make_app()
    Extend(app).register(WSExtension)
    _welcome(app)
    received: list[Any] = []

    async def mimic(ws: Any) -> None:
        received.append(await ws.recv())

    _, response = app.test_client.websocket("/ws", mimic=mimic)
    assert response.opened and '"welcome"' in received[0]
