"""The public surface is small and pinned: changing it is a decision."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import sanic_ws_ext
from sanic_ws_ext import Connection, ConnectionManager, WSConfig
from sanic_ws_ext.delivery import Delivery
from sanic_ws_ext.delivery.local import LocalDelivery
from sanic_ws_ext.handlers import HandlerRegistry


def test_all_is_pinned() -> None:
    assert sorted(sanic_ws_ext.__all__) == sorted(
        [
            "DEFAULTS",
            "Accept",
            "ClientGone",
            "CloseCode",
            "ConfigError",
            "Connection",
            "ConnectionManager",
            "ConnectionState",
            "EmitFailed",
            "Emitter",
            "Envelope",
            "ErrorCode",
            "History",
            "InvalidData",
            "InvalidOutgoing",
            "MessageError",
            "Page",
            "Position",
            "PublishTooLarge",
            "Reject",
            "RequestError",
            "RequestFailed",
            "RequestTimeout",
            "SequencerUnavailable",
            "SyncEmitter",
            "WSConfig",
            "WSError",
            "WSExtension",
            "WSHandlers",
            "bearer_token",
        ]
    )
    for name in sanic_ws_ext.__all__:
        assert getattr(sanic_ws_ext, name) is not None


def test_exceptions_share_one_root() -> None:
    for exc in (
        sanic_ws_ext.ConfigError,
        sanic_ws_ext.Reject,
        sanic_ws_ext.MessageError,
        sanic_ws_ext.PublishTooLarge,
        sanic_ws_ext.EmitFailed,
        sanic_ws_ext.SequencerUnavailable,
        sanic_ws_ext.RequestFailed,
        sanic_ws_ext.RequestTimeout,
        sanic_ws_ext.ClientGone,
    ):
        assert issubclass(exc, sanic_ws_ext.WSError)


@pytest.mark.parametrize("emitter", [sanic_ws_ext.Emitter, sanic_ws_ext.SyncEmitter])
def test_emitters_take_the_managers_arguments(emitter: type) -> None:
    calls = ("send", "broadcast", "publish", "send_user", "disconnect", "join")
    for name in (*calls, "leave", "disconnect_user"):
        ours = inspect.signature(getattr(emitter, name)).parameters
        theirs = inspect.signature(getattr(ConnectionManager, name)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name


# -- what apps get handed: app.ctx.ws and each Connection ---------------------------

API_MD = Path(__file__).parent.parent / "docs" / "reference" / "api.md"

#: Kept for one release, each warning with the call that replaces it.
DEPRECATED_MANAGER = {
    "broadcast_raw",
    "health",
    "publish_raw",
    "send_raw",
    "send_user_raw",
    "stats",
}
DEPRECATED_CONNECTION = {"send_raw"}


def _documented_members(target: str) -> set[str]:
    """The ``members:`` list under ``::: <target>`` in docs/reference/api.md."""
    lines = API_MD.read_text().splitlines()
    start = lines.index(f"::: {target}")
    members: set[str] = set()
    for line in lines[start + 1 :]:
        if line.startswith(":::") or line.startswith("#"):
            break
        found = re.fullmatch(r"\s+- \"?(\w+)\"?", line)
        if found:
            members.add(found.group(1))
    assert members, f"no members listed for {target} in {API_MD}"
    return members


def _docstring_attributes(cls: type) -> set[str]:
    """The names in the ``Attributes:`` section of ``cls``'s docstring."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        found = re.match(r"    (\w[\w, ]*):", line)
        if found:
            names.update(n.strip() for n in found.group(1).split(","))
    return names


def _public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def _manager() -> ConnectionManager:
    return ConnectionManager(
        WSConfig.from_mapping({}), HandlerRegistry(), LocalDelivery(), worker="w0"
    )


def test_the_manager_shows_apps_only_what_the_reference_documents() -> None:
    """Plumbing (accept, apply, gap, the parts, start and stop, ...) stays
    private: a new public name on app.ctx.ws must be documented first."""
    documented = _documented_members("sanic_ws_ext.ConnectionManager")
    assert _public(_manager()) == documented | DEPRECATED_MANAGER


def test_a_connection_shows_apps_only_what_the_reference_documents() -> None:
    documented = _documented_members("sanic_ws_ext.Connection")
    attributes = _docstring_attributes(Connection)
    assert _public(Connection) == documented | attributes | DEPRECATED_CONNECTION


async def test_health_and_stats_warn_and_answer_as_the_routes_do() -> None:
    manager = _manager()
    await manager._start()
    try:
        with pytest.warns(DeprecationWarning, match="<WS_PATH>/health"):
            health = manager.health()
        assert health == manager._health_check()
        with pytest.warns(DeprecationWarning, match="<WS_PATH>/stats"):
            stats = manager.stats()
        assert stats.keys() == manager._cluster_stats().keys()
    finally:
        await manager._stop()


def test_backends_deliver_ops_and_none_publishes() -> None:
    """``publish`` is the app's send to a room; the delivery layer's hand-off
    of an op is ``deliver``, on every backend."""
    from sanic_ws_ext.delivery.backplane import RedisBackplane
    from sanic_ws_ext.delivery.relay import WorkerRelay

    for backend in (Delivery, LocalDelivery, WorkerRelay, RedisBackplane):
        assert callable(getattr(backend, "deliver", None)), backend
        assert not hasattr(backend, "publish"), backend
