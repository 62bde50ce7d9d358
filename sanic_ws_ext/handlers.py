"""Declaring handlers, and the registry that dispatches to them.

Handlers are declared at import time on a :class:`WSHandlers` group, bound to
a Sanic app or blueprint, in any number of modules::

    bp = Blueprint("chat")
    chat = WSHandlers(bp)

    @chat.on("chat.message")
    async def relay(conn: Connection, msg: Envelope) -> None:
        await conn.manager.broadcast("chat.message", msg.data)

When the server starts, the extension collects the groups of the app and of
every blueprint registered on it (the app's first, then blueprints in
registration order) into one :class:`HandlerRegistry`. The registry is pure:
it maps events to handler lists; it does no I/O and runs nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from .rooms import RoomPolicies, RoomSpec

if TYPE_CHECKING:
    from sanic import Blueprint, Request, Sanic

    from .connection import Connection
    from .envelope import Envelope
    from .manager import ConnectionManager

__all__ = [
    "Accept",
    "BackplaneHook",
    "BinaryHandler",
    "ConnectHandler",
    "ErrorHandler",
    "HandlerRegistry",
    "MessageHandler",
    "RoomGuard",
    "TypeHandler",
    "VerifyHook",
    "WSHandlers",
]


@dataclass(frozen=True, slots=True)
class Accept:
    """What a verify hook returns to accept a connection.

    ``user`` becomes :attr:`Connection.user` (the identity sends to users are
    addressed by); ``meta`` seeds :attr:`Connection.meta`. ``presence`` is
    what members of rooms with full presence see of this connection (a
    JSON-able dict of at most ``WS_PRESENCE_META_MAX`` bytes as JSON; never
    put secrets there); ``Connection.update_presence`` changes it later.
    """

    user: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    presence: dict[str, Any] = field(default_factory=dict)


VerifyHook = Callable[["Request"], Awaitable["Accept | None"]]
ConnectHandler = Callable[["Connection"], Awaitable[None]]
MessageHandler = Callable[["Connection", "Envelope | bytes"], Awaitable[None]]
TypeHandler = Callable[["Connection", "Envelope"], Awaitable[None]]
BinaryHandler = Callable[["Connection", bytes], Awaitable[None]]
ErrorHandler = Callable[["Connection", Exception], Awaitable[None]]
BackplaneHook = Callable[["ConnectionManager", str], Awaitable[None]]
RoomGuard = Callable[["Connection", str], Awaitable[bool]]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_CTX_KEY = "_sanic_ws_ext_handlers"

#: Envelope types the extension answers itself (unless the app handles them).
ROOM_TYPES = frozenset({"room.join", "room.leave"})


class WSHandlers:
    """A group of websocket handlers, like a blueprint for websocket events.

    Pass the app or blueprint it belongs to, or call :meth:`bind` later. Every
    handler is an ``async`` function; handlers of one connection run one at a
    time, in the order its messages arrived.
    """

    def __init__(self, target: Sanic[Any, Any] | Blueprint | None = None) -> None:
        self.verify_hooks: list[VerifyHook] = []
        self.connect: list[ConnectHandler] = []
        self.message: list[MessageHandler] = []
        self.typed: dict[str, list[TypeHandler]] = {}
        self.binary: list[BinaryHandler] = []
        self.disconnect: list[ConnectHandler] = []
        self.error: list[ErrorHandler] = []
        self.backplane: list[BackplaneHook] = []
        self.room_guards: list[RoomGuard] = []
        self.room_specs: list[RoomSpec] = []
        if target is not None:
            self.bind(target)

    def bind(self, target: Sanic[Any, Any] | Blueprint) -> WSHandlers:
        """Attach this group to an app or blueprint (idempotent)."""
        groups: list[WSHandlers] = target.ctx.__dict__.setdefault(_CTX_KEY, [])
        if self not in groups:
            groups.append(self)
        return self

    def verify(self, hook: F) -> F:
        """Run ``hook(request)`` before the upgrade.

        Return :class:`Accept` (or ``None``) to accept; raise
        :class:`~sanic_ws_ext.errors.Reject` or any ``SanicException`` to
        answer with its HTTP status instead. With several hooks, all run in
        order; the last ``user`` given wins and ``meta`` dicts are merged.
        """
        self.verify_hooks.append(hook)
        return hook

    def on_connect(self, handler: F) -> F:
        """Run ``handler(conn)`` once the connection is open."""
        self.connect.append(handler)
        return handler

    def on_message(self, handler: F) -> F:
        """Run ``handler(conn, message)`` for every message.

        ``message`` is an :class:`~sanic_ws_ext.envelope.Envelope` for text
        frames and ``bytes`` for binary frames.
        """
        self.message.append(handler)
        return handler

    def on(self, type: str) -> Callable[[F], F]:
        """Run ``handler(conn, envelope)`` for envelopes of this ``type``."""
        if not isinstance(type, str) or not type:
            raise TypeError(f"message type must be a non-empty str, got {type!r}")

        def register(handler: F) -> F:
            self.typed.setdefault(type, []).append(handler)
            return handler

        return register

    def on_binary(self, handler: F) -> F:
        """Run ``handler(conn, data)`` for every binary frame."""
        self.binary.append(handler)
        return handler

    def on_disconnect(self, handler: F) -> F:
        """Run ``handler(conn)`` after the connection closed, for any reason.

        ``conn.close_code`` and ``conn.close_reason`` say why.
        """
        self.disconnect.append(handler)
        return handler

    def on_error(self, handler: F) -> F:
        """Run ``handler(conn, exc)`` when a handler raised or a message was refused."""
        self.error.append(handler)
        return handler

    def room(
        self,
        pattern: str,
        *,
        presence: str = "off",
        client_join: bool | Callable[..., Awaitable[bool]] = False,
        expose_ids: bool = False,
    ) -> Callable[[F], F]:
        """Declare the rooms matching ``pattern`` and their policy.

        ``pattern`` is a room name, or one with ``{parameters}`` (each matches
        one or more characters other than ``:``), e.g. ``"doc:{doc_id}"``.
        ``presence`` is ``"full"`` (members get ``presence.state`` then
        ``presence.diff`` frames), ``"counts"`` (``presence.count`` frames)
        or ``"off"``. ``client_join`` lets clients join by themselves with
        ``room.join``: ``True`` for anyone, or an async guard called as
        ``guard(conn, room, **parameters)``. Used as a decorator, the
        decorated function is that guard::

            @chat.room("doc:{doc_id}", presence="full")
            async def may_open(conn: Connection, room: str, doc_id: str) -> bool:
                return await can_read(conn.user, doc_id)

        ``expose_ids`` adds each member's connection id and worker to its
        presence metadata. Rooms no declaration matches have no presence.
        """
        spec = RoomSpec.declare(
            pattern, presence=presence, client_join=client_join, expose_ids=expose_ids
        )
        self.room_specs.append(spec)
        index = len(self.room_specs) - 1

        def guard(handler: F) -> F:
            self.room_specs[index] = replace(spec, client_join=handler)
            return handler

        return guard

    def on_join(self, guard: F) -> F:
        """Let clients join undeclared rooms: ``guard(conn, room)`` decides.

        A client (``client.join(room)`` in the browser client) sends
        ``{"type": "room.join", "data": {"room": ...}}``; it is put in the
        room and answered with ``room.joined`` when every guard returns True,
        else refused with an error frame (code ``room_refused``). Without any
        guard, clients cannot join rooms by themselves (the server decides,
        with ``conn.join``). ``room.leave`` takes a client out of rooms it
        joined itself, never out of one the server put it in.
        """
        self.room_guards.append(guard)
        return guard

    def on_backplane(self, hook: F) -> F:
        """Run ``hook(manager, state)`` when the Redis link changes state.

        ``state`` is ``"connected"``, ``"reconnecting"`` (ops are buffered)
        or ``"down"`` (the buffer overflowed; ops are being dropped). Runs in
        every worker, for that worker's own link.
        """
        self.backplane.append(hook)
        return hook


def groups_of(target: Sanic[Any, Any] | Blueprint) -> list[WSHandlers]:
    """The groups bound to an app or blueprint."""
    groups: list[WSHandlers] = target.ctx.__dict__.get(_CTX_KEY, [])
    return groups


class HandlerRegistry:
    """Every handler of one app, merged from its groups, ready to dispatch."""

    __slots__ = (
        "backplane",
        "binary",
        "connect",
        "disconnect",
        "error",
        "message",
        "room_guards",
        "rooms",
        "typed",
        "verify",
    )

    def __init__(self, groups: Iterable[WSHandlers] = ()) -> None:
        self.verify: list[VerifyHook] = []
        self.connect: list[ConnectHandler] = []
        self.message: list[MessageHandler] = []
        self.typed: dict[str, list[TypeHandler]] = {}
        self.binary: list[BinaryHandler] = []
        self.disconnect: list[ConnectHandler] = []
        self.error: list[ErrorHandler] = []
        self.backplane: list[BackplaneHook] = []
        self.room_guards: list[RoomGuard] = []
        self.rooms = RoomPolicies()
        seen: set[int] = set()
        for group in groups:
            if id(group) in seen:
                continue
            seen.add(id(group))
            self.verify += group.verify_hooks
            self.connect += group.connect
            self.message += group.message
            for type_, handlers in group.typed.items():
                self.typed.setdefault(type_, []).extend(handlers)
            self.binary += group.binary
            self.disconnect += group.disconnect
            self.error += group.error
            self.backplane += group.backplane
            self.room_guards += group.room_guards
            for spec in group.room_specs:
                self.rooms.add(spec)

    def handles_text(self, type_: str) -> bool:
        """Whether an envelope of ``type_`` reaches any handler."""
        return bool(self.message) or type_ in self.typed or type_ in ROOM_TYPES

    def handles_binary(self) -> bool:
        """Whether a binary frame reaches any handler."""
        return bool(self.message) or bool(self.binary)
