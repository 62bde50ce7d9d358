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
method unchanged.

A second ``Extend(app)`` for one app (two modules each with the one-liner)
stops sanic-ext with an assertion about its openapi blueprint. So the same
import wraps ``Extend.__init__``: for an app that already has its ``Extend``,
the new object shares that one's state and starts only the extensions given
that are not running yet, instead of starting every built-in one again (which
is what failed). A second call with other settings (``config=``,
``built_in_extensions=`` or keywords) raises an error saying to use
``app.ext``. The first ``Extend(app)`` of an app runs sanic-ext's own code
unchanged. Those two wrappers are the whole footprint on sanic-ext.

Sanic's own ``app.extend(extensions=[...])`` refuses any call after the app
has its ``Extend`` ("Cannot extend Sanic after Sanic Extensions has been
setup"), so ``app.extend(extensions=[WSExtension])`` in a second module
stopped the app. The import also wraps ``Sanic.extend``: for an app that has
its ``Extend``, the call goes through the same sharing ``Extend(app)`` and
returns ``app.ext``; the first call runs Sanic's code unchanged.

``startup()`` runs in every process that builds ``Extend`` (main process,
each worker, the reloader); it only registers the route and listeners.
Connections and the manager are made in ``before_server_start``, in the
processes that serve.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from typing import Any

from sanic import Blueprint, Sanic
from sanic_ext import Extend
from sanic_ext.extensions.base import Extension

from . import sanic_compat
from .collector import Collector
from .config import DEFAULTS, WSConfig
from .delivery import Delivery
from .delivery.backplane import RedisBackplane
from .delivery.local import LocalDelivery
from .delivery.relay import WorkerRelay, choose_transport, make_inboxes, slot_of
from .endpoint import websocket_endpoint
from .errors import ConfigError
from .handlers import HandlerRegistry, WSHandlers, groups_of, unregistered_blueprints
from .manager import ConnectionManager
from .monitoring import add_routes, add_static_route, redact_query_strings
from .publish_route import add_publish_route

__all__ = ["WSExtension", "install"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

_INSTALLED = "_sanic_ws_ext_config"
# Run our listeners before the app's own: the manager exists before any
# listener of the app needs it, and clients are closed before the app tears
# down what handlers use. Sanic runs startup listeners by priority, highest
# first, and shutdown listeners in the reverse order: so +N, then -N.
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
    sanic_compat.check()  # the Sanic internals the upgrade needs are there
    for key, default in DEFAULTS.items():
        if key not in app.config:
            app.config[key] = default
    config = WSConfig.from_mapping(app.config)
    setattr(app.ctx, _INSTALLED, config)

    bp = Blueprint("sanic_ws_ext")
    bp.add_route(websocket_endpoint, config.path, methods=["GET"], name="endpoint")
    # The browser client, next to the endpoint: <WS_PATH>/client.js (.d.ts).
    base = config.path.rstrip("/")
    add_static_route(bp, base, "client.js", "text/javascript; charset=utf-8")
    add_static_route(bp, base, "client.d.ts", "application/typescript; charset=utf-8")
    # Health, stats, metrics and the dashboard: <WS_PATH>/health, ...
    add_routes(bp, base, config)
    if config.publish_token is not None:  # POST <WS_PATH>/publish
        add_publish_route(bp, base)
    app.blueprint(bp)
    # Browser clients send their token in the query string: keep it out of
    # Sanic's access and error logs.
    redact_query_strings([config.path])
    app.register_listener(_make_relay, "main_process_start")
    app.register_listener(_start, "before_server_start", priority=_PRIORITY)
    # Last of the startup listeners: what the app's own ones build is frozen too.
    app.register_listener(_freeze, "after_server_start", priority=-_PRIORITY)
    app.register_listener(_stop, "before_server_stop", priority=-_PRIORITY)
    app.register_listener(_unfreeze, "after_server_stop")


async def _freeze(app: Sanic[Any, Any]) -> None:
    """``WS_GC_FREEZE``: keep long-lived objects out of full collections
    (startup's, then what each full collection leaves: collector.py)."""
    # Not in a test process (sanic-testing, testing.serve): what it builds
    # test after test must stay collectable.
    config = WSConfig.from_mapping(app.config)
    if config.gc_freeze and not Sanic.test_mode:
        collector = Collector(config.gc_thaw)
        collector.start()
        setattr(app.ctx, _COLLECTOR, collector)


async def _unfreeze(app: Sanic[Any, Any]) -> None:
    """The server stopped: the collector's callback and timer go, and
    nothing stays frozen."""
    collector: Collector | None = getattr(app.ctx, _COLLECTOR, None)
    if collector is not None:
        collector.stop()


_COLLECTOR = "sanic_ws_ext_collector"
_RELAY_KEY = "sanic_ws_ext_relay"
_NODE_KEY = "sanic_ws_ext_node"


def _new_node_id() -> str:
    """A name for this machine in a Redis cluster: readable, never reused."""
    return f"{socket.gethostname().replace('/', '_')}-{os.urandom(3).hex()}"


async def _make_relay(app: Sanic[Any, Any]) -> None:
    """In the main process, before workers spawn: the relay's sockets.

    Not run by ``--single-process`` or test clients: they deliver locally.
    With Redis, also the node id every worker of this machine shares.

    Workers that cannot reach each other would each serve only their own
    connections while looking like one server: with more than one worker and
    no working transport, this refuses to start instead.
    """
    workers = app.state.workers
    config: WSConfig = getattr(app.ctx, _INSTALLED)
    if config.redis_url is not None:
        from multiprocessing.sharedctypes import RawArray

        # ctypes: what Sanic's shared_ctx takes without a warning.
        setattr(app.shared_ctx, _NODE_KEY, RawArray("c", _new_node_id().encode()))
    if config.backplane == "local" or workers < 1:
        return
    wanted = config.relay_transport
    try:
        transport = choose_transport(wanted)
    except OSError as exc:
        if workers == 1 and wanted == "auto":
            return  # one worker: nobody to reach
        auto = "" if wanted == "auto" else 'set WS_RELAY_TRANSPORT = "auto", '
        raise ConfigError(
            "WS_RELAY_TRANSPORT",
            f"{exc}. Without a relay, the {workers} workers cannot reach each"
            " other and would each serve only their own connections. Run one"
            f" worker (--single-process), {auto}or set WS_BACKPLANE = 'local'"
            " to run separate workers on purpose",
        ) from exc
    if wanted == "auto" and transport != "seqpacket":
        log.info("relay: SOCK_SEQPACKET pairs are unavailable; using %s", transport)
    # Flat tuples of multiprocessing objects: what Sanic's shared_ctx accepts.
    reads, writes, current = make_inboxes(workers, transport)
    setattr(app.shared_ctx, _RELAY_KEY + "_reads", reads)
    setattr(app.shared_ctx, _RELAY_KEY + "_writes", writes)
    setattr(app.shared_ctx, _RELAY_KEY + "_current", current)


def _delivery(app: Sanic[Any, Any], config: WSConfig, worker: str) -> Delivery:
    reads = getattr(app.shared_ctx, _RELAY_KEY + "_reads", None)
    if reads is None or config.backplane == "local":
        return LocalDelivery()
    inboxes = (
        reads,
        getattr(app.shared_ctx, _RELAY_KEY + "_writes"),
        getattr(app.shared_ctx, _RELAY_KEY + "_current"),
    )
    slot = slot_of(worker)
    if slot is None or slot >= len(reads) // 2:
        log.error(
            "worker %s has no relay slot (workers scaled after start?): "
            "it delivers to its own connections only",
            worker,
        )
        return LocalDelivery()
    return WorkerRelay(inboxes, worker)


async def _start(app: Sanic[Any, Any]) -> None:
    registered: WSConfig = getattr(app.ctx, _INSTALLED)
    config = WSConfig.from_mapping(app.config)
    # Fixed at registration: the routes (the endpoint's path, health, stats),
    # and the delivery the main process prepared (relay, node id), which a
    # later change would split from this machine's other workers.
    for key, now, then in (
        ("WS_PATH", config.path, registered.path),
        ("WS_HEALTH", config.health, registered.health),
        ("WS_STATS", config.stats, registered.stats),
        (
            "WS_PUBLISH_TOKEN (on or off)",
            config.publish_token is not None,
            registered.publish_token is not None,
        ),
        ("WS_ASYNCAPI", config.asyncapi, registered.asyncapi),
        ("WS_BACKPLANE", config.backplane, registered.backplane),
        ("WS_RELAY_TRANSPORT", config.relay_transport, registered.relay_transport),
    ):
        if now != then:
            raise ConfigError(
                key,
                f"changed to {now!r} after the extension was registered"
                f" with {then!r}; set it before registering",
            )
    _check_blueprints()
    groups: list[WSHandlers] = list(groups_of(app))
    for bp in app.blueprints.values():
        groups.extend(groups_of(bp))
    worker = os.environ.get("SANIC_WORKER_NAME", "main")
    delivery = _delivery(app, config, worker)
    if config.redis_url is not None:
        shared = getattr(app.shared_ctx, _NODE_KEY, None)
        node = shared.raw.decode() if shared is not None else _new_node_id()
        worker = f"{node}/{worker}"  # unique in the whole cluster
        delivery = RedisBackplane(
            _require_redis(config.redis_url),
            delivery,
            node=node,
            process=worker,
            channel=config.redis_channel,
            max_publish=config.max_publish,
            buffer=config.backplane_buffer,
            beat=config.relay_beat,
        )
    registry = HandlerRegistry(groups)
    manager = ConnectionManager(config, registry, delivery, worker=worker)
    check = config.validate_outgoing
    if check is None:  # auto: in debug mode and under test clients
        check = app.debug or Sanic.test_mode
    if check:
        from .schemas import checker

        manager._check_out = checker(registry.outgoing)
        manager._dispatcher.check_reply = checker(registry.replies)
    app.ctx.ws = manager
    await manager._start()


def _check_blueprints() -> None:
    """Refuse to start with handlers bound to a blueprint no app registered.

    Their handlers would never run, silently. A process serving one app (as
    ``sanic app:app`` does) refuses to start. In test mode (several apps in
    one process, as in a test suite) the blueprint may be meant for another
    app, registered by a later test: a warning instead.
    """
    forgotten = unregistered_blueprints()
    if not forgotten:
        return
    bound = "; ".join(f"{bp.name!r} (WSHandlers at {where})" for bp, where in forgotten)
    problem = (
        f"handlers are bound to blueprint {bound}, which no app registered, so"
        " they would never run: register it with app.blueprint(bp) before the"
        " server starts, or bind the group to the app itself (WSHandlers(app))"
    )
    if Sanic.test_mode:
        log.warning("WSHandlers: %s", problem)
        return
    raise ConfigError("WSHandlers", problem)


def _require_redis(url: str) -> str:
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "WS_BACKPLANE",
            "a Redis URL needs redis-py, which is not installed here:"
            f" {redis_install_hint()} (or pip install 'redis>=5')",
        ) from None
    return url


def redis_install_hint() -> str:
    """The command that adds the ``[redis]`` extra to this installation.

    Run from a clone (``pip install -e .``), the extra comes from that clone;
    installed from a URL (which pip records in the distribution's
    ``direct_url.json``, PEP 610: a ``file://`` directory or archive, an
    ``https://`` archive, or a repository, ``git+https://...``), from the
    same URL, a repository at the commit installed; otherwise from the
    package index. The package is not on an index yet, so only a copy
    installed from an index is told to use it.
    """
    from importlib.metadata import PackageNotFoundError, distribution
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():  # imported from a source tree
        return f"pip install -e '{root}[redis]'"
    try:  # the first on sys.path: the one imported
        raw = distribution("sanic-ws-ext").read_text("direct_url.json")
        info = json.loads(raw or "{}")
    except (PackageNotFoundError, ValueError):
        info = {}
    url = _direct_url(info) if isinstance(info, dict) else ""
    if url:
        return f"pip install 'sanic-ws-ext[redis] @ {url}'"
    return "pip install 'sanic-ws-ext[redis]'"


def _direct_url(info: dict[str, Any]) -> str:
    """The URL a PEP 508 requirement takes for what ``direct_url.json`` says
    was installed, or "" (none recorded, or not one pip can use)."""
    url = info.get("url")
    if not isinstance(url, str) or not url:
        return ""
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict):  # recorded without its "git+" and revision
        kind, commit = vcs.get("vcs"), vcs.get("commit_id")
        if not isinstance(kind, str) or not kind:
            return ""
        url = f"{kind}+{url}"
        if isinstance(commit, str) and commit:
            url += f"@{commit}"
    elif "://" not in url:
        return ""
    subdirectory = info.get("subdirectory")
    if isinstance(subdirectory, str) and subdirectory:
        url += f"#subdirectory={subdirectory}"
    return url


async def _stop(app: Sanic[Any, Any]) -> None:
    manager: ConnectionManager | None = getattr(app.ctx, "ws", None)
    if manager is not None:
        await manager._stop()


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


def _extend_again(
    self: Extend,
    existing: Extend,
    extensions: list[Any] | None = None,
    **settings: Any,
) -> None:
    """``Extend(app)`` for an app that has one: share it, start what is new."""
    if settings.get("built_in_extensions") is True:
        del settings["built_in_extensions"]  # the default: nothing asked
    if settings:
        raise RuntimeError(
            "Sanic Extensions is already set up for this app (by an earlier"
            f" Extend(app) or app.extend()); {', '.join(sorted(settings))} can"
            " only be given"
            " the first time. Use app.ext (the existing one) instead, e.g."
            " app.ext.register(WSExtension)"
        )
    # One state for both objects: registering on either is registering once.
    self.__dict__ = existing.__dict__
    for ext in [*(extensions or []), *Extend._pre_registry]:
        kind = ext if isinstance(ext, type) else type(ext)
        if any(isinstance(e, kind) for e in existing.extensions):
            continue
        started = Extension.create(ext, existing.app, existing.config)
        started._startup(existing)  # type: ignore[no-untyped-call]
        existing.extensions.append(started)


def _patch_extend_init() -> None:
    original = Extend.__init__
    if getattr(original, "_sanic_ws_ext", False):
        return

    @functools.wraps(original)
    def init(self: Extend, app: Any, *args: Any, **kwargs: Any) -> None:
        existing = getattr(app, "_ext", None)
        if isinstance(existing, Extend) and existing is not self and not args:
            _extend_again(self, existing, **kwargs)
        else:
            original(self, app, *args, **kwargs)

    init._sanic_ws_ext = True  # type: ignore[attr-defined]
    setattr(Extend, "__init__", init)  # noqa: B010


def _patch_sanic_extend() -> None:
    original = Sanic.extend
    if getattr(original, "_sanic_ws_ext", False):
        return

    @functools.wraps(original)
    def extend(
        self: Sanic[Any, Any],
        *,
        extensions: list[Any] | None = None,
        built_in_extensions: bool = True,
        config: Any = None,
        **kwargs: Any,
    ) -> Extend:
        existing = getattr(self, "_ext", None)
        if not isinstance(existing, Extend):
            return original(
                self,
                extensions=extensions,
                built_in_extensions=built_in_extensions,
                config=config,
                **kwargs,
            )
        # Already extended: what Extend(app) does then (share, start what is
        # new, or say to use app.ext when other settings are given).
        settings = dict(kwargs)
        if config is not None:
            settings["config"] = config
        if built_in_extensions is not True:
            settings["built_in_extensions"] = built_in_extensions
        Extend(self, extensions=extensions, **settings)
        return existing

    extend._sanic_ws_ext = True  # type: ignore[attr-defined]
    setattr(Sanic, "extend", extend)  # noqa: B010


_patch_extend_register()
_patch_extend_init()
_patch_sanic_extend()
