"""The every-feature app (tests/apps/typed.py) as a module-level app, for
``python -m sanic_ws_ext types tests.apps.typed_instance:app``."""

from __future__ import annotations

from sanic import Sanic

from .typed import build

app = build(Sanic("typed_features"))
