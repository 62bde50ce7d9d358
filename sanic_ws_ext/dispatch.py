"""Running the app's handlers for what arrives on each connection.

Rules this module keeps:

- Handlers of one connection run one at a time, in arrival order (connect
  marker, messages, disconnect marker), in a task that exists only while that
  connection has work queued: an idle connection has no task and no mailbox.
- A connection's mailbox is bounded by ``WS_MAX_QUEUE`` messages and
  ``WS_MAX_QUEUE_BYTES`` bytes: past either, reading from its socket pauses
  until both are down to half.
- Each handler call is bounded by ``WS_HANDLER_TIMEOUT``: :meth:`watch`,
  called once per beat, cancels a call that ran past it and closes its
  connection with 1011. No timer exists per call.
- A handler's exception is logged, answered with an error frame and passed to
  the error hooks; the connection's queue goes on.
- A message with a ``ref`` is answered by exactly one ``reply``, after every
  handler it reaches has run (so after the frames they sent): ``ok: true``
  with the last value other than ``None`` a handler returned, or ``ok:
  false`` with the first failure (a ``MessageError``'s code and reason,
  ``handler_error`` for any other exception), instead of error frames.
- A ``reply`` from the client (to a request of the server's) is taken as it
  arrives, never queued: a handler awaiting a request to its own connection
  would otherwise wait behind itself.
- A ``ping`` with a ``ref`` (the browser client's heartbeat) is answered
  ``ok: true`` as it arrives, unless the app registered ``on("ping")``: it
  tells the client the connection is alive, not that its handlers are idle.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sanic.exceptions import SanicException

from .envelope import (
    Envelope,
    RefusedRequest,
    Reply,
    decode_message,
    encode_reply,
    error_envelope,
)
from .errors import CloseCode, ErrorCode, MessageError, Reject
from .frames import OP_TEXT, encode_frame
from .handlers import (
    REFRESH_TYPE,
    ROOM_TYPES,
    Accept,
    HandlerRegistry,
    checked_expiry,
)
from .history import History, Position, parse_since
from .rooms import UNDECLARED
from .wire import ConnectionState

if TYPE_CHECKING:
    from .config import WSConfig
    from .connection import Connection

__all__ = ["CLOSED", "OPENED", "Dispatcher", "Mailbox"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Markers queued in a connection's mailbox around its messages.
OPENED = object()
CLOSED = object()

#: What one queued message costs beyond its length, for WS_MAX_QUEUE_BYTES:
#: without it a flood of empty messages would count as nothing.
_ITEM_OVERHEAD = 64

#: Longest room name a client may ask for.
MAX_ROOM = 200

#: Longest text frame looked at as a ``ping``: ``{"type":"ping","ref":...}``
#: with a ref of up to 64 characters, and room to spare.
_PING_MAX = 160

#: What :meth:`Dispatcher._run` gives for a call the watchdog cancelled.
_OVERRAN = RuntimeError("handler ran over WS_HANDLER_TIMEOUT")


class UserMismatch(MessageError):
    """A fresh token of another user: answered, then the connection closes 4403."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.AUTH_USER_MISMATCH, "the token is for another user")

    def close(self, conn: Connection) -> None:
        conn._wire.start_close(CloseCode.FORBIDDEN, "token is for another user")


def queued_size(item: object) -> int:
    """A mailbox item's weight against ``WS_MAX_QUEUE_BYTES``."""
    if isinstance(item, str | bytes):
        return len(item) + _ITEM_OVERHEAD
    return 0  # the connect and disconnect markers


class Mailbox:
    """What waits for one connection's handlers, and the handler running."""

    __slots__ = ("handler", "items", "overran", "since", "size", "task")

    def __init__(self) -> None:
        self.items: deque[object] = deque()
        #: Bytes queued, as ``WS_MAX_QUEUE_BYTES`` counts them.
        self.size = 0
        self.task: asyncio.Task[None] | None = None
        #: The handler now running and since when (loop time; 0.0: none).
        self.handler: object = None
        self.since = 0.0
        #: Set by the watchdog when that handler ran past the timeout.
        self.overran = False


class Dispatcher:
    """Queues what arrives per connection and runs the handlers for it."""

    def __init__(
        self,
        config: WSConfig,
        registry: HandlerRegistry,
        *,
        replied: Callable[[Connection, Reply], None],
        join: Callable[[Connection, str], None],
        leave: Callable[[Connection, str], None],
        ready: Callable[[str], Awaitable[None]],
        settled: Callable[[], None],
        recover: Callable[[Connection, str, History, Position | None], Awaitable[None]],
    ) -> None:
        self.config = config
        self.registry = registry
        # The client answered a request of the server's (requests.py).
        self._replied = replied
        self._join = join
        self._leave = leave
        # Returns once the room's publications reach this process.
        self._ready = ready
        # Called when the last running task ends (shutdown waits on it).
        self._settled = settled
        # Joins a history room: replay, then ``room.joined`` (sequencer.py).
        self._recover = recover
        #: Checks a reply's data against its type's declared reply schema
        #: (WS_VALIDATE_OUTGOING), or None.
        self.check_reply: Callable[[str | None, Any], None] | None = None
        self.clock: Callable[[], float] = lambda: 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Each busy connection's task.
        self.tasks: dict[asyncio.Task[None], Connection] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.clock = loop.time

    # -- queueing --------------------------------------------------------------

    def queue(self, conn: Connection, item: object) -> None:
        """Queue a message (or a marker) for ``conn``'s handlers."""
        if type(item) is str:
            if '"reply"' in item and self._take_reply(conn, item):
                return
            if len(item) <= _PING_MAX and '"ping"' in item and self._ping(conn, item):
                return
        box = conn._mailbox
        if box is None:
            box = conn._mailbox = Mailbox()
        box.items.append(item)
        box.size += queued_size(item)
        if box.task is None:
            assert self._loop is not None
            task = self._loop.create_task(self._drain(conn, box))
            box.task = task
            self.tasks[task] = conn
        if (
            len(box.items) >= self.config.max_queue
            or box.size >= self.config.max_queue_bytes
        ):
            conn._wire.pause_reading()

    async def _drain(self, conn: Connection, box: Mailbox) -> None:
        items = box.items
        low_water = self.config.max_queue // 2
        low_bytes = self.config.max_queue_bytes // 2
        try:
            while items:
                item = items.popleft()
                box.size -= queued_size(item)
                if item is OPENED:
                    for handler in self.registry.connect:
                        await self._call(conn, box, handler)
                elif item is CLOSED:
                    for handler in self.registry.disconnect:
                        await self._call(conn, box, handler)
                elif isinstance(item, str):
                    await self._on_text(conn, box, item)
                elif isinstance(item, bytes):
                    await self._on_binary(conn, box, item)
                if len(items) <= low_water and box.size <= low_bytes:
                    conn._wire.resume_reading()
        finally:
            task = box.task
            box.task = None
            if conn._mailbox is box and not items:
                conn._mailbox = None  # idle again: nothing kept per connection
            if task is not None:
                self.tasks.pop(task, None)
            if not self.tasks:
                self._settled()

    def _take_reply(self, conn: Connection, text: str) -> bool:
        """A client's ``reply``, handled now; False for anything else (queued:
        a reply refused as invalid is answered in its place in the queue)."""
        try:
            message = decode_message(text)
        except MessageError:
            return False
        if not isinstance(message, Reply):
            return False
        self._replied(conn, message)
        return True

    def _ping(self, conn: Connection, text: str) -> bool:
        """A client's heartbeat ``ping`` with a ``ref``, answered now; False
        for anything else (queued as any message)."""
        if "ping" in self.registry.typed:
            return False  # the app's own "ping": its handlers answer
        try:
            message = decode_message(text)
        except MessageError:
            return False
        if not isinstance(message, Envelope) or message.type != "ping":
            return False
        if message.ref is None:
            return False
        conn._wire.send_frame(encode_frame(OP_TEXT, encode_reply(message.ref)))
        return True

    # -- what arrives ----------------------------------------------------------

    async def _on_text(self, conn: Connection, box: Mailbox, text: str) -> None:
        registry = self.registry
        try:
            envelope = decode_message(text)
        except MessageError as exc:
            if isinstance(exc, RefusedRequest):
                self._refused(conn, exc.ref, exc)
                await self._run_error_hooks(conn, exc)
            else:
                await self.refuse(conn, exc)
            return
        if isinstance(envelope, Reply):
            self._replied(conn, envelope)  # one _take_reply did not see
            return
        if not registry.handles_text(envelope.type):
            unknown = MessageError(
                ErrorCode.UNKNOWN_TYPE, f"no handler for type {envelope.type!r}"
            )
            if envelope.ref is None:
                await self.refuse(conn, unknown)
            else:
                self._refused(conn, envelope.ref, unknown)
                await self._run_error_hooks(conn, unknown)
            return
        ref = envelope.ref
        quiet = ref is not None  # a request: failures go into its reply
        failure: Exception | None = None
        for middleware in registry.middleware:
            result, failure = await self._run(
                conn, box, middleware, envelope, quiet=quiet
            )
            if failure is _OVERRAN:
                return  # the connection is closing: nobody to answer
            if failure is not None:
                break  # refused: no handler runs
            if isinstance(result, Envelope):
                envelope = replace(result, ref=ref)
            elif result is not None:
                failure = TypeError(
                    f"middleware {getattr(middleware, '__qualname__', middleware)}"
                    f" returned {type(result).__name__}, not an Envelope or None"
                )
                await self._handler_failed(conn, middleware, failure, quiet=quiet)
                break
        # One rule: handlers run in order (on_message ones, then typed ones),
        # and the first that raises stops the rest.
        value: Any = None
        if failure is None:
            if envelope.type in ROOM_TYPES and envelope.type not in registry.typed:
                handlers: list[Callable[..., Awaitable[Any]]] = [self._client_room]
            elif envelope.type == REFRESH_TYPE:
                handlers = [self._refresh]
            else:
                handlers = [*registry.message, *registry.typed.get(envelope.type, ())]
            for handler in handlers:
                result, failure = await self._run(
                    conn, box, handler, envelope, quiet=quiet
                )
                if failure is _OVERRAN:
                    return
                if failure is not None:
                    break
                if result is not None:
                    value = result
        if ref is None:
            # Without a ref, a failure was answered with an error frame.
            if isinstance(failure, UserMismatch):
                failure.close(conn)
            return
        if failure is None:
            try:
                if self.check_reply is not None:
                    self.check_reply(envelope.type, value)
                body = encode_reply(ref, value)
            except (TypeError, ValueError, OverflowError) as exc:
                log.error(
                    "websocket reply to %r on connection %s: the value handlers"
                    " returned is not JSON-able, or not of its declared type",
                    ref,
                    conn.id,
                    exc_info=exc,
                )
                await self._run_error_hooks(conn, exc)
                failure = exc
            else:
                conn._wire.send_frame(encode_frame(OP_TEXT, body))
                return
        self._refused(conn, ref, failure)
        if isinstance(failure, UserMismatch):
            failure.close(conn)  # after the reply, which says why

    def _refused(self, conn: Connection, ref: str, failure: Exception) -> None:
        """Answer the request ``ref`` of ``conn`` with ``ok: false``."""
        details = None
        if isinstance(failure, MessageError):
            error = (failure.code, failure.reason)
            details = failure.details
        else:
            error = (ErrorCode.HANDLER_ERROR, "internal error")
        body = encode_reply(ref, error=error, details=details)
        conn._wire.send_frame(encode_frame(OP_TEXT, body))

    async def _client_room(
        self, conn: Connection, envelope: Envelope
    ) -> dict[str, str] | None:
        """``room.join`` / ``room.leave`` from the client itself."""
        data = envelope.data
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str) or not room or len(room) > MAX_ROOM:
            raise MessageError(
                ErrorCode.INVALID_ENVELOPE,
                f"data.room must be a string of 1 to {MAX_ROOM} characters",
            )
        joined = conn._client_rooms
        if envelope.type == "room.leave":
            # Only rooms the client joined itself: a room the server put it
            # in (a tenant, a permission scope) is the server's to take away.
            if joined is not None and room in joined:
                joined.discard(room)
                self._leave(conn, room)
            await conn.send("room.left", {"room": room})
            return {"room": room}
        spec, params = self.registry.rooms.lookup(room)
        # A history room the server put this connection in: a join with
        # `since` is its client resuming (after a reconnect), not a request
        # to enter; the guards already had their say when the server joined.
        resuming = (
            spec.history is not None
            and room in conn.rooms
            and (conn._client_rooms is None or room not in conn._client_rooms)
        )
        since = None
        if spec.history is not None:
            try:
                since = parse_since(data.get("since"))
            except ValueError as exc:
                raise MessageError(ErrorCode.INVALID_ENVELOPE, str(exc)) from None
        if resuming:
            pass
        elif spec is UNDECLARED:
            # Rooms nobody declared: the on_join guards decide, if any.
            guards = self.registry.room_guards
            if not guards:
                raise MessageError(
                    ErrorCode.ROOM_REFUSED,
                    "this server does not let clients join rooms",
                )
            for guard in guards:
                if not await guard(conn, room):
                    raise MessageError(ErrorCode.ROOM_REFUSED, f"may not join {room!r}")
        elif not await spec.may_join(conn, room, params):
            raise MessageError(ErrorCode.ROOM_REFUSED, f"may not join {room!r}")
        if conn.state is ConnectionState.CLOSED:
            return None  # gone while a guard awaited: nothing to join
        if room not in conn.rooms:
            if conn._client_rooms is None:
                conn._client_rooms = set()
            conn._client_rooms.add(room)
        if spec.history is not None:
            await self._recover(conn, room, spec.history, since)
            return {"room": room}
        self._join(conn, room)
        # Answered once publications to the room reach it: a message the
        # client's app sends on "room.joined" is not published into a void.
        await self._ready(room)
        await conn.send("room.joined", {"room": room})
        return {"room": room}

    async def _refresh(
        self, conn: Connection, envelope: Envelope
    ) -> dict[str, float | None] | None:
        """``auth.refresh`` from the client: a fresh token for the on_refresh hooks."""
        data = envelope.data
        token = data.get("token") if isinstance(data, dict) else None
        limit = self.config.auth_token_max
        if not isinstance(token, str) or not token or len(token) > limit:
            raise MessageError(
                ErrorCode.INVALID_ENVELOPE,
                f"data.token must be a string of 1 to {limit} characters",
            )
        hooks = self.registry.refresh
        if not hooks:
            raise MessageError(
                ErrorCode.AUTH_UNSUPPORTED, "this server does not take fresh tokens"
            )
        expires: float | None = None
        meta: dict[str, Any] = {}
        for hook in hooks:
            try:
                result = await hook(conn, token)
            except SanicException as exc:
                reason = exc.reason if isinstance(exc, Reject) else str(exc)
                raise MessageError(
                    ErrorCode.AUTH_REFUSED, reason or "token refused"
                ) from None
            given: float | None = None
            if result is None:
                continue
            if isinstance(result, Accept):
                if result.user is not None and result.user != conn.user:
                    raise UserMismatch()
                meta.update(result.meta)
                if result.expires_at is not None:
                    given = checked_expiry(result.expires_at, hook)
            elif isinstance(result, int | float) and not isinstance(result, bool):
                given = checked_expiry(result, hook)
            else:
                raise TypeError(
                    f"on_refresh hook {getattr(hook, '__qualname__', hook)} returned"
                    f" {result!r}: return Accept(...), the new expiry (Unix"
                    " seconds) or None, or raise Reject"
                )
            if given is not None:
                expires = given if expires is None else min(expires, given)
        if conn.state is not ConnectionState.OPEN:
            return None  # closed (expired, say) while a hook awaited
        conn.meta.update(meta)
        if expires is not None and expires != conn.expires_at:
            conn.expires_at = expires
            # Asked again ahead of the new expiry (not for the same one: a
            # client handing back the token it had would be asked each tick).
            conn._refresh_asked = False
        return {"expires_at": conn.expires_at}

    async def _on_binary(self, conn: Connection, box: Mailbox, data: bytes) -> None:
        registry = self.registry
        if not registry.handles_binary():
            await self.refuse(
                conn,
                MessageError(ErrorCode.UNKNOWN_TYPE, "no handler for binary frames"),
            )
            return
        # The one rule of envelopes: in order, the first that raises stops.
        for handler in [*registry.message, *registry.binary]:
            _, failure = await self._run(conn, box, handler, data)
            if failure is not None:
                return

    # -- calling handlers --------------------------------------------------------

    async def _call(
        self,
        conn: Connection,
        box: Mailbox,
        handler: Callable[..., Awaitable[Any]],
        *args: Any,
    ) -> None:
        await self._run(conn, box, handler, *args)

    async def _run(
        self,
        conn: Connection,
        box: Mailbox,
        handler: Callable[..., Awaitable[Any]],
        *args: Any,
        quiet: bool = False,
    ) -> tuple[Any, Exception | None]:
        """Call one handler: what it returned, or how it failed.

        A failure is logged and passed to the error hooks; with ``quiet``
        (a request, answered by a reply) no error frame is sent.
        """
        box.since = self.clock()
        box.handler = handler
        try:
            return await handler(conn, *args), None
        except MessageError as exc:
            if quiet:
                await self._run_error_hooks(conn, exc)
            else:
                await self.refuse(conn, exc)
            return None, exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if box.overran and task is not None and task.cancelling() <= 1:
                # The watchdog's cancel (and no shutdown's): already logged,
                # the connection is closing; its disconnect handlers still
                # run after this.
                task.uncancel()
                box.overran = False
                return None, _OVERRAN
            if task is not None and task.cancelling():
                raise  # we are being cancelled (shutdown): stop here
            # The handler's own business (a cancelled future it awaited):
            # a handler failure like any other, not the end of this queue.
            failure = RuntimeError("handler was cancelled")
            failure.__cause__ = exc
            await self._handler_failed(conn, handler, failure, quiet=quiet)
            return None, failure
        except Exception as exc:
            await self._handler_failed(conn, handler, exc, quiet=quiet)
            return None, exc
        finally:
            # Only after the watchdog's cancel: asyncio.current_task() is
            # Python code in 3.11, a few percent of a chat server's CPU.
            if box.overran:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The handler swallowed the watchdog's cancel: take it
                    # back, or the next await of this queue would be
                    # cancelled too.
                    task.uncancel()
            box.since = 0.0
            box.handler = None
            box.overran = False

    def watch(self, now: float) -> None:
        """Cancel handler calls running past ``WS_HANDLER_TIMEOUT``.

        A handler that never returns would hold its connection's mailbox full
        and reading paused for ever. Its connection is closed with 1011; the
        messages still queued for it are dropped, its disconnect handlers run.
        """
        timeout = self.config.handler_timeout
        if timeout is None:
            return
        for task, conn in list(self.tasks.items()):
            box = conn._mailbox
            if box is None or not box.since or box.overran:
                continue
            if now - box.since <= timeout:
                continue
            log.error(
                "websocket handler %s ran over WS_HANDLER_TIMEOUT (%gs) on "
                "connection %s: cancelled, connection closed",
                getattr(box.handler, "__qualname__", box.handler),
                timeout,
                conn.id,
            )
            box.overran = True
            # The messages queued behind it go; the disconnect marker stays,
            # so the app's on_disconnect handlers still run.
            closed = CLOSED in box.items
            box.items.clear()
            box.size = 0
            if closed:
                box.items.append(CLOSED)
            task.cancel()
            conn._wire.start_close(CloseCode.INTERNAL_ERROR, "handler timeout")

    async def _handler_failed(
        self,
        conn: Connection,
        handler: Callable[..., Awaitable[Any]],
        exc: Exception,
        *,
        quiet: bool = False,
    ) -> None:
        log.error(
            "websocket handler %s failed on connection %s",
            getattr(handler, "__qualname__", handler),
            conn.id,
            exc_info=exc,
        )
        if not quiet:
            conn._wire.send_frame(
                encode_frame(
                    OP_TEXT, error_envelope(ErrorCode.HANDLER_ERROR, "internal error")
                )
            )
        await self._run_error_hooks(conn, exc)

    async def refuse(self, conn: Connection, exc: MessageError) -> None:
        """Answer a refused message with an error frame; run the error hooks."""
        body = error_envelope(exc.code, exc.reason, exc.details)
        conn._wire.send_frame(encode_frame(OP_TEXT, body))
        await self._run_error_hooks(conn, exc)

    async def _run_error_hooks(self, conn: Connection, exc: Exception) -> None:
        for hook in self.registry.error:
            try:
                await hook(conn, exc)
            except Exception:
                log.exception("websocket error hook failed on connection %s", conn.id)

    async def cancel_all(self, timeout: float) -> None:
        """Cancel every running handler task and wait (at most ``timeout``)."""
        await cancel_tasks(self.tasks, timeout)


async def cancel_tasks(tasks: Any, timeout: float) -> None:
    """Cancel ``tasks`` and wait (at most ``timeout``) for them to finish."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)
