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

Mistakes are refused where they are made: a handler that is not an ``async``
function raises :class:`TypeError` when it is decorated (it would fail on
every message otherwise), and a group bound to a blueprint that no app
registered is reported when the server starts (its handlers would never run;
see :func:`unregistered_blueprints`).
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from .history import History
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
    "RefreshHook",
    "RoomGuard",
    "SubprotocolHook",
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

    ``expires_at`` (Unix seconds) is when the connection's credentials run
    out: ``WS_AUTH_REFRESH_AHEAD`` seconds before it the server asks the
    client for a fresh token (``auth.refresh``, checked by the
    :meth:`WSHandlers.on_refresh` hooks), and a connection not refreshed by
    then is closed with 4401 "token expired". ``None``: no expiry. Returned
    by an ``on_refresh`` hook, it is the new expiry (``None`` there leaves
    the current one).
    """

    user: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    presence: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


def checked_expiry(value: object, hook: object) -> float:
    """An ``expires_at`` a hook gave, checked: finite Unix seconds (``TypeError``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        raise TypeError(
            f"hook {getattr(hook, '__qualname__', hook)} gave expires_at="
            f"{value!r}: give Unix seconds (a finite number) or None"
        )
    return float(value)


VerifyHook = Callable[["Request"], Awaitable["Accept | None"]]
ConnectHandler = Callable[["Connection"], Awaitable[None]]
MessageHandler = Callable[["Connection", "Envelope | bytes"], Awaitable[Any]]
TypeHandler = Callable[["Connection", "Envelope"], Awaitable[Any]]
Middleware = Callable[["Connection", "Envelope"], Awaitable["Envelope | None"]]
BinaryHandler = Callable[["Connection", bytes], Awaitable[None]]
ErrorHandler = Callable[["Connection", Exception], Awaitable[None]]
BackplaneHook = Callable[["ConnectionManager", str], Awaitable[None]]
RoomGuard = Callable[["Connection", str], Awaitable[bool]]
RefreshHook = Callable[["Connection", str], Awaitable["Accept | float | None"]]
SubprotocolHook = Callable[["Request", list[str]], Awaitable["str | None"]]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_CTX_KEY = "_sanic_ws_ext_handlers"

# Blueprints groups were bound to, while no app has registered them: id ->
# (blueprint, where the group was bound). Pruned at each server start of any
# app; strong references (blueprints cannot be weakly referenced), but only to
# blueprints never registered, which are module-level objects in practice.
_UNREGISTERED: dict[int, tuple[Blueprint, str]] = {}


def _is_async(handler: object) -> bool:
    """An ``async def`` function (also behind ``functools.wraps`` or
    ``partial``), or an object whose ``__call__`` is one."""
    if not callable(handler):
        return False
    return any(
        inspect.iscoroutinefunction(f)
        for f in (handler, inspect.unwrap(handler), type(handler).__call__)
    )


def require_async(handler: Any, role: str) -> None:
    """Refuse ``handler`` unless it is async: name it and say what to do."""
    if _is_async(handler):
        return
    name = getattr(handler, "__qualname__", None) or repr(handler)
    if not callable(handler):
        problem = f"{role} must be an async function, got {handler!r}"
    else:
        problem = (
            f"{role} {name} is not an async function: declare it with"
            " 'async def' (a plain function would fail on every call, since"
            " the extension awaits what it returns)"
        )
    raise TypeError(problem)


def _caller() -> str:
    """``file:line`` of the first frame outside this module (the declaration)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


#: Envelope types the extension answers itself (unless the app handles them).
ROOM_TYPES = frozenset({"room.join", "room.leave"})
#: The client's fresh token (answered by the extension with the on_refresh hooks).
REFRESH_TYPE = "auth.refresh"


class WSHandlers:
    """A group of websocket handlers, like a blueprint for websocket events.

    Pass the app or blueprint it belongs to, or call :meth:`bind` later. Every
    handler is an ``async`` function; handlers of one connection run one at a
    time, in the order its messages arrived.
    """

    def __init__(self, target: Sanic[Any, Any] | Blueprint | None = None) -> None:
        self.verify_hooks: list[VerifyHook] = []
        self.refresh_hooks: list[RefreshHook] = []
        self.subprotocol_hooks: list[SubprotocolHook] = []
        self.connect: list[ConnectHandler] = []
        self.middlewares: list[Middleware] = []
        self.message: list[MessageHandler] = []
        self.typed: dict[str, list[TypeHandler]] = {}
        self.binary: list[BinaryHandler] = []
        self.disconnect: list[ConnectHandler] = []
        self.error: list[ErrorHandler] = []
        self.backplane: list[BackplaneHook] = []
        self.room_guards: list[RoomGuard] = []
        self.room_specs: list[RoomSpec] = []
        #: Declared message types: what clients send (type -> schema class,
        #: ``None`` when untyped), what the server sends, what replies carry.
        self.incoming: dict[str, MessageDecl] = {}
        self.outgoing: dict[str, MessageDecl] = {}
        self.replies: dict[str, MessageDecl] = {}
        if target is not None:
            self.bind(target)

    def bind(self, target: Sanic[Any, Any] | Blueprint) -> WSHandlers:
        """Attach this group to an app or blueprint (idempotent).

        A blueprint must be registered on the app (``app.blueprint(bp)``)
        before the server starts: its groups are collected then, and a
        blueprint with groups that no app registered stops the server with
        a :class:`~sanic_ws_ext.errors.ConfigError` naming it.
        """
        groups: list[WSHandlers] = target.ctx.__dict__.setdefault(_CTX_KEY, [])
        if self not in groups:
            groups.append(self)
        from sanic import Blueprint

        if isinstance(target, Blueprint) and not target.registered:
            _UNREGISTERED.setdefault(id(target), (target, _caller()))
        return self

    def verify(self, hook: F) -> F:
        """Run ``hook(request)`` before the upgrade.

        Return :class:`Accept` (or ``None``) to accept; raise
        :class:`~sanic_ws_ext.errors.Reject` or any ``SanicException`` to
        answer with its HTTP status instead. With several hooks, all run in
        order; the last ``user`` given wins and ``meta`` dicts are merged.
        """
        require_async(hook, "verify hook")
        self.verify_hooks.append(hook)
        return hook

    def on_refresh(self, hook: F) -> F:
        """Run ``hook(conn, token)`` when the client sends a fresh token.

        The client sends ``auth.refresh`` with ``data.token`` (after the
        server asked, ahead of the expiry a verify hook gave with
        ``Accept(expires_at=...)``). Return :class:`Accept` (its
        ``expires_at``, ``meta`` merged into ``conn.meta``) or the new expiry
        as Unix seconds; ``None`` has no say. Raise
        :class:`~sanic_ws_ext.errors.Reject` to refuse the token: the
        connection keeps its current expiry. An ``Accept`` naming another
        user than ``conn.user`` is refused and the connection closed with
        4403: a connection never changes user. With several hooks all run
        in order; the earliest expiry given wins.
        """
        require_async(hook, "on_refresh hook")
        self.refresh_hooks.append(hook)
        return hook

    def subprotocol(self, hook: F) -> F:
        """Run ``hook(request, offered)`` to choose the subprotocol.

        ``offered`` is the client's ``Sec-WebSocket-Protocol`` list in its
        order, without ``bearer.`` entries. Return one of them to select it
        (echoed to the client, read as ``conn.subprotocol``), or ``None`` to
        leave the choice to ``WS_SUBPROTOCOLS`` (the first offered entry it
        lists). The first hook that returns a name decides. Runs after the
        verify hooks, only for upgrades they accepted (and for refusals sent
        in-band, ``WS_AUTH_IN_BAND``).
        """
        require_async(hook, "subprotocol hook")
        self.subprotocol_hooks.append(hook)
        return hook

    def on_connect(self, handler: F) -> F:
        """Run ``handler(conn)`` once the connection is open."""
        require_async(handler, "on_connect handler")
        self.connect.append(handler)
        return handler

    def middleware(self, handler: F) -> F:
        """Run ``handler(conn, envelope)`` before the handlers of every envelope.

        App-wide, whichever group declares it: every envelope a client sends
        (``room.join`` and ``room.leave`` included, not binary frames nor the
        client's replies) goes through every middleware before any handler,
        in the order of their groups (the app's own groups, then its
        blueprints' in the order they were registered) and, in a group, of
        their declarations. A middleware may return a new
        :class:`~sanic_ws_ext.envelope.Envelope`, which the next middleware
        and the handlers get instead (its ``ref`` is kept), or ``None`` to
        leave it as it is; raising :class:`~sanic_ws_ext.errors.MessageError`
        refuses the message: no handler runs, and the client gets the error
        frame (or, for a request, the ``ok: false`` reply).

        One rule for the whole chain, middleware, ``on_message`` handlers,
        then typed ones: the first that raises stops the rest.
        """
        require_async(handler, "middleware")
        self.middlewares.append(handler)
        return handler

    def on_message(self, handler: F) -> F:
        """Run ``handler(conn, message)`` for every message.

        ``message`` is an :class:`~sanic_ws_ext.envelope.Envelope` for text
        frames and ``bytes`` for binary frames.
        """
        require_async(handler, "on_message handler")
        self.message.append(handler)
        return handler

    def on(self, type: str, *, schema: type[Any] | None = None) -> Callable[[F], F]:
        """Run ``handler(conn, envelope)`` for envelopes of this ``type``.

        When the client's envelope carries a ``ref`` (a request), what the
        handler returns is the ``data`` of the ``reply`` (JSON; ``None`` is
        ``null``), and a :class:`~sanic_ws_ext.errors.MessageError` it raises
        is the reply's ``ok: false``. With several handlers for a type, they
        run in order until one raises; the reply holds the last value other
        than ``None`` they returned, or that failure. Without a ``ref``, the
        value is ignored.

        Typed messages: annotate the envelope ``Envelope[ChatSend]`` (or pass
        ``schema=ChatSend``), where ``ChatSend`` is a dataclass, a pydantic
        model, a ``TypedDict`` or a ``msgspec.Struct``. The handler then gets
        an envelope whose ``data`` is a validated ``ChatSend``; data that
        does not validate never reaches it: the client gets an
        ``invalid_data`` error frame (or ``ok: false`` reply) naming the
        field and the problem. A return annotation that is a schema class
        declares what the reply's ``data`` holds.
        """
        if not isinstance(type, str) or not type:
            raise TypeError(f"message type must be a non-empty str, got {type!r}")
        if type == "reply":
            raise ValueError(
                "on('reply'): 'reply' envelopes answer the server's requests and"
                " are taken by the extension (await conn.request(...) returns"
                " their data); no handler ever sees one"
            )
        if type == REFRESH_TYPE:
            raise ValueError(
                f"on({REFRESH_TYPE!r}): the extension answers the client's fresh"
                " tokens itself; check them with @on_refresh"
            )

        def register(handler: F) -> F:
            require_async(handler, f"on({type!r}) handler")
            # The declaring scope's names too: a schema class defined in a
            # function, as in tests, resolves like a module-level one.
            scope = sys._getframe(1).f_locals
            declared, reply = _schemas_of(handler, type, schema, scope)
            run: Any = (
                handler if declared is None else _validating(handler, type, declared)
            )
            self.typed.setdefault(type, []).append(run)
            doc = inspect.getdoc(handler) or ""
            if type not in self.incoming or declared is not None:
                self.incoming[type] = MessageDecl(declared, doc.split("\n\n")[0])
            if reply is not None:
                self.replies[type] = MessageDecl(reply)
            return handler

        return register

    def sends(self, type: str, schema: type[Any], description: str = "") -> None:
        """Declare that the server sends messages of ``type`` with ``schema``.

        For the AsyncAPI document and the TypeScript types; and with
        ``WS_VALIDATE_OUTGOING`` on (tests and debug mode by default), every
        send of ``type`` (``conn.send``, the manager's sends) checks its data
        against ``schema`` and raises
        :class:`~sanic_ws_ext.schemas.InvalidOutgoing` in the sender's code.
        """
        if not isinstance(type, str) or not type:
            raise TypeError(f"message type must be a non-empty str, got {type!r}")
        from .schemas import schema_of

        schema_of(schema)  # refuses what is not a schema class, here
        self.outgoing[type] = MessageDecl(schema, description)

    def on_binary(self, handler: F) -> F:
        """Run ``handler(conn, data)`` for every binary frame."""
        require_async(handler, "on_binary handler")
        self.binary.append(handler)
        return handler

    def on_disconnect(self, handler: F) -> F:
        """Run ``handler(conn)`` after the connection closed, for any reason.

        ``conn.close_code`` and ``conn.close_reason`` say why.
        """
        require_async(handler, "on_disconnect handler")
        self.disconnect.append(handler)
        return handler

    def on_error(self, handler: F) -> F:
        """Run ``handler(conn, exc)`` when a handler raised or a message was refused."""
        require_async(handler, "on_error handler")
        self.error.append(handler)
        return handler

    def room(
        self,
        pattern: str,
        *,
        presence: str = "off",
        client_join: bool | Callable[..., Awaitable[bool]] = False,
        expose_ids: bool = False,
        history: int | str | History | None = None,
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

        ``history`` keeps the room's publications and numbers them, so that
        a client that reconnects gets what it missed: a size, ``"latest"``
        (the last one, given to each member on joining) or a
        :class:`~sanic_ws_ext.History` with a size, a time to live and how
        many a member gets on joining (docs/howto/history.md).
        """
        if not isinstance(client_join, bool):
            require_async(client_join, f"room({pattern!r}) client_join guard")
        spec = RoomSpec.declare(
            pattern,
            presence=presence,
            client_join=client_join,
            expose_ids=expose_ids,
            history=history,
        )
        self.room_specs.append(spec)
        index = len(self.room_specs) - 1

        def guard(handler: F) -> F:
            require_async(handler, f"room({pattern!r}) guard")
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
        require_async(guard, "on_join guard")
        self.room_guards.append(guard)
        return guard

    def on_backplane(self, hook: F) -> F:
        """Run ``hook(manager, state)`` when the Redis link changes state.

        ``state`` is ``"connected"``, ``"reconnecting"`` (ops are buffered)
        or ``"down"`` (the buffer overflowed; ops are being dropped). Runs in
        every worker, for that worker's own link.
        """
        require_async(hook, "on_backplane hook")
        self.backplane.append(hook)
        return hook


@dataclass(frozen=True, slots=True)
class MessageDecl:
    """A declared message type: its schema class (``None``: any data) and a
    one-line description (the handler's docstring's first paragraph)."""

    schema: type[Any] | None
    description: str = ""


def _schemas_of(
    handler: Callable[..., Any],
    msg_type: str,
    explicit: type[Any] | None,
    scope: dict[str, Any] | None = None,
) -> tuple[type[Any] | None, type[Any] | None]:
    """The schema of a handler's messages and of its replies.

    ``explicit`` (``schema=``) or the annotation of its second parameter,
    ``Envelope[Schema]``; the reply's from its return annotation.
    """
    from .envelope import Envelope
    from .schemas import is_schema_type, schema_of

    target: Any = inspect.unwrap(handler)
    if not inspect.isroutine(target):  # an object with an async __call__
        target = target.__call__
    try:
        hints = typing.get_type_hints(target, localns=scope)
    except Exception as exc:  # names only imported under TYPE_CHECKING, ...
        raw = str(getattr(target, "__annotations__", {}))
        if explicit is None and "Envelope[" in raw:
            raise TypeError(
                f"on({msg_type!r}) handler {getattr(handler, '__qualname__', handler)}:"
                f" its annotations cannot be resolved ({exc}); import the schema"
                " class at run time (not under TYPE_CHECKING), or pass schema="
            ) from None
        hints = {}
    declared: type[Any] | None = None
    params = [
        p
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) >= 2 and params[1].name in hints:
        hint = hints[params[1].name]
        if typing.get_origin(hint) is Envelope:
            (arg,) = typing.get_args(hint)
            if arg is not Any:
                declared = arg
    if explicit is not None:
        if declared is not None and declared is not explicit:
            raise TypeError(
                f"on({msg_type!r}): schema={explicit.__name__} but the handler's"
                f" envelope is annotated Envelope[{declared.__name__}]"
            )
        declared = explicit
    if declared is not None:
        schema_of(declared)  # refuses what is not a schema class, here
    reply = hints.get("return")
    return declared, reply if is_schema_type(reply) else None


def _validating(
    handler: Callable[..., Awaitable[Any]], msg_type: str, schema: type[Any]
) -> Callable[..., Awaitable[Any]]:
    """``handler``, called with the envelope's data validated against ``schema``."""
    from .envelope import Envelope
    from .schemas import schema_of

    validate = schema_of(schema).validate

    @functools.wraps(handler)
    async def typed(conn: Connection, envelope: Envelope) -> Any:
        data = validate(msg_type, envelope.data)
        return await handler(
            conn, Envelope(envelope.type, data, envelope.timestamp, envelope.ref)
        )

    return typed


def groups_of(target: Sanic[Any, Any] | Blueprint) -> list[WSHandlers]:
    """The groups bound to an app or blueprint."""
    groups: list[WSHandlers] = target.ctx.__dict__.get(_CTX_KEY, [])
    return groups


def unregistered_blueprints() -> list[tuple[Blueprint, str]]:
    """Blueprints with groups bound that no app registered, with where bound.

    Their handlers would never run. Blueprints registered since are
    forgotten here (a registration is never undone).
    """
    for key, (bp, _) in list(_UNREGISTERED.items()):
        if bp.registered or not groups_of(bp):
            del _UNREGISTERED[key]
    return list(_UNREGISTERED.values())


class HandlerRegistry:
    """Every handler of one app, merged from its groups, ready to dispatch."""

    __slots__ = (
        "backplane",
        "binary",
        "connect",
        "disconnect",
        "error",
        "incoming",
        "message",
        "middleware",
        "outgoing",
        "refresh",
        "replies",
        "room_guards",
        "rooms",
        "subprotocol",
        "typed",
        "verify",
    )

    def __init__(self, groups: Iterable[WSHandlers] = ()) -> None:
        self.verify: list[VerifyHook] = []
        self.refresh: list[RefreshHook] = []
        self.subprotocol: list[SubprotocolHook] = []
        self.connect: list[ConnectHandler] = []
        self.middleware: list[Middleware] = []
        self.message: list[MessageHandler] = []
        self.typed: dict[str, list[TypeHandler]] = {}
        self.binary: list[BinaryHandler] = []
        self.disconnect: list[ConnectHandler] = []
        self.error: list[ErrorHandler] = []
        self.backplane: list[BackplaneHook] = []
        self.room_guards: list[RoomGuard] = []
        self.rooms = RoomPolicies()
        self.incoming: dict[str, MessageDecl] = {}
        self.outgoing: dict[str, MessageDecl] = {}
        self.replies: dict[str, MessageDecl] = {}
        seen: set[int] = set()
        for group in groups:
            if id(group) in seen:
                continue
            seen.add(id(group))
            self.verify += group.verify_hooks
            self.refresh += group.refresh_hooks
            self.subprotocol += group.subprotocol_hooks
            self.connect += group.connect
            self.middleware += group.middlewares
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
            for mine, theirs in (
                (self.incoming, group.incoming),
                (self.outgoing, group.outgoing),
                (self.replies, group.replies),
            ):
                for type_, decl in theirs.items():
                    if type_ not in mine or mine[type_].schema is None:
                        mine[type_] = decl

    def handles_text(self, type_: str) -> bool:
        """Whether an envelope of ``type_`` reaches any handler."""
        return (
            bool(self.message)
            or type_ in self.typed
            or type_ in ROOM_TYPES
            or type_ == REFRESH_TYPE
        )

    def handles_binary(self) -> bool:
        """Whether a binary frame reaches any handler."""
        return bool(self.message) or bool(self.binary)
