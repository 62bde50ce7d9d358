"""The app: one extension, three blueprints, handlers found by themselves."""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend

from sanic_ws_ext import WSExtension

from . import admin, direct, rooms


def create_app(name: str = "teamchat") -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic(name)
    Extend(app).register(WSExtension)
    # WSHandlers groups bound to these blueprints are collected at start-up.
    app.blueprint(rooms.bp)
    app.blueprint(direct.bp)
    app.blueprint(admin.bp)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        return json({"ok": True})

    return app


app = create_app()
