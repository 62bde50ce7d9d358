"""The Sanic glue: :class:`WSExtension`, its route and its listeners.

Three ways to turn it on, all equivalent and safe to repeat::

    Extend(app).register(WSExtension)        # the one-liner
    app.extend(extensions=[WSExtension])
    Extend(app, extensions=[WSExtension])

In sanic-ext 25.12, ``Extend.register`` is a classmethod that only appends to
a class-level list read by the *next* ``Extend(...)``; called on an instance
whose app is already extended, it silently does nothing. Importing this
package therefore wraps ``Extend.register`` once: called on an instance with
a :class:`WSExtension`, it starts the extension for that instance's app right
away. Every other use (class calls, other extensions) goes to sanic-ext's own
method unchanged. That wrapper is the whole footprint on sanic-ext.

``startup()`` runs in every process that builds ``Extend`` (main process,
each worker, the reloader); it only registers the route and listeners.
Connections and the manager are made in ``before_server_start``, in the
processes that serve.
"""

from __future__ import annotations

import os
from typing import Any

from sanic import Blueprint, Sanic
from sanic_ext import Extend
from sanic_ext.extensions.base import Extension

from .config import DEFAULTS, WSConfig
from .delivery.local import LocalDelivery
from .endpoint import websocket_endpoint
from .errors import ConfigError
from .handlers import HandlerRegistry, WSHandlers, groups_of
from .manager import ConnectionManager

__all__ = ["WSExtension", "install"]

_INSTALLED = "_sanic_ws_ext_config"
# Run our listeners before the app's own: the manager exists before any
# listener of the app needs it, and clients are closed before the app tears
# down what handlers use.
_PRIORITY = 1000


class WSExtension(Extension):  # type: ignore[no-untyped-call]
    """The sanic-ext extension that serves websockets at ``WS_PATH``."""

    name = "ws"

    def startup(self, bootstrap: Extend) -> None:
        install(self.app)

    def label(self) -> str:
        config: WSConfig | None = getattr(self.app.ctx, _INSTALLED, None)
        return config.path if config else ""


def install(app: Sanic[Any, Any]) -> None:
    """Register the route and listeners on ``app`` (idempotent)."""
    if getattr(app.ctx, _INSTALLED, None) is not None:
        return
    for key, default in DEFAULTS.items():
        if key not in app.config:
            app.config[key] = default
    config = WSConfig.from_mapping(app.config)
    setattr(app.ctx, _INSTALLED, config)

    bp = Blueprint("sanic_ws_ext")
    bp.add_route(websocket_endpoint, config.path, methods=["GET"], name="endpoint")
    app.blueprint(bp)
    app.register_listener(_start, "before_server_start", priority=_PRIORITY)
    app.register_listener(_stop, "before_server_stop", priority=_PRIORITY)


async def _start(app: Sanic[Any, Any]) -> None:
    registered: WSConfig = getattr(app.ctx, _INSTALLED)
    config = WSConfig.from_mapping(app.config)
    if config.path != registered.path:
        raise ConfigError(
            "WS_PATH",
            f"changed to {config.path!r} after the extension was registered at "
            f"{registered.path!r}; set it before registering",
        )
    groups: list[WSHandlers] = list(groups_of(app))
    for bp in app.blueprints.values():
        groups.extend(groups_of(bp))
    manager = ConnectionManager(
        config,
        HandlerRegistry(groups),
        LocalDelivery(),
        worker=os.environ.get("SANIC_WORKER_NAME", "main"),
    )
    app.ctx.ws = manager
    await manager.start()


async def _stop(app: Sanic[Any, Any]) -> None:
    manager: ConnectionManager | None = getattr(app.ctx, "ws", None)
    if manager is not None:
        await manager.stop()


class _Register:
    """``Extend.register`` that also works when called on an instance."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __get__(self, instance: Extend | None, owner: type[Extend]) -> Any:
        register = self.original.__get__(None, owner)
        if instance is None:
            return register

        def register_now(extension: Any) -> None:
            is_ws = isinstance(extension, WSExtension) or (
                isinstance(extension, type) and issubclass(extension, WSExtension)
            )
            if not is_ws:
                register(extension)
                return
            if any(isinstance(e, WSExtension) for e in instance.extensions):
                return
            started = Extension.create(extension, instance.app, instance.config)
            started._startup(instance)  # type: ignore[no-untyped-call]
            instance.extensions.append(started)

        return register_now


def _patch_extend_register() -> None:
    current = Extend.__dict__["register"]
    if not isinstance(current, _Register):
        setattr(Extend, "register", _Register(current))  # noqa: B010


_patch_extend_register()
