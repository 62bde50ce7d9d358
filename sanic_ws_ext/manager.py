"""The connection manager, ``app.ctx.ws``: the one object apps talk to.

Rules this module keeps:

- ``connections`` holds the OPEN and CLOSING connections of this process; a
  connection leaves it the moment its socket is gone, before its disconnect
  handlers run.
- Cluster-wide calls (``broadcast``, ``send``, ``disconnect``) become an
  :class:`~sanic_ws_ext.delivery.Op` published through the delivery backend;
  :meth:`ConnectionManager.apply` executes ops on local connections. A
  message is encoded and framed once per process, whatever the receivers.
- Handlers of one connection run one at a time, in arrival order, in a task
  that exists only while that connection has work queued. The queue is
  bounded by ``WS_MAX_QUEUE``: past it, reading from that socket pauses.
- One heartbeat timer serves every connection; none exists per connection.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from websockets.server import ServerProtocol

from .config import WSConfig
from .connection import Connection, ConnectionState, Flusher, WireProtocol
from .delivery import Delivery, Op, OpKind
from .envelope import decode_envelope, encode_envelope, error_envelope
from .errors import CloseCode, ErrorCode, MessageError
from .frames import OP_BINARY, OP_TEXT, PING_FRAME, encode_frame
from .handlers import Accept, HandlerRegistry

__all__ = ["ConnectionManager"]

log = logging.getLogger("sanic_ws_ext")

# Markers queued in a connection's inbox around its messages.
_OPENED = object()
_CLOSED = object()


class ConnectionManager:
    """Connections of this process, and every way to reach them.

    Sending never waits on a client's socket: the awaitable methods return
    once the message is accepted for delivery.
    """

    def __init__(
        self,
        config: WSConfig,
        registry: HandlerRegistry,
        delivery: Delivery,
        *,
        worker: str,
    ) -> None:
        self.config = config
        self.registry = registry
        self.delivery = delivery
        self.worker = worker
        self._connections: dict[str, Connection] = {}
        #: Read-only view of this process's connections by id.
        self.connections: Mapping[str, Connection] = MappingProxyType(self._connections)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.clock: Callable[[], float] = lambda: 0.0

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Bind to the running loop and start delivery and the heartbeat."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.clock = loop.time
        self._flusher = Flusher(loop)
        await self.delivery.start(self.apply)
        if self.config.ping_interval is not None:
            self._heartbeat = loop.call_later(self._tick(), self._beat)

    async def stop(self) -> None:
        """Close every connection with 1001 after what was accepted is sent.

        Waits at most ``WS_CLOSE_TIMEOUT`` for clients to answer, then drops
        the rest; disconnect handlers have run for all of them on return.
        """
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for conn in list(self._connections.values()):
            conn.start_close(CloseCode.GOING_AWAY, "server shutting down")
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.close_timeout + 1)
        except TimeoutError:
            for conn in list(self._connections.values()):
                conn.abort(CloseCode.GOING_AWAY, "server shutting down")
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.close_timeout)
            except TimeoutError:
                for task in list(self._tasks):
                    task.cancel()
                log.warning("websocket handlers still running at shutdown: cancelled")
        await self.delivery.stop()

    # -- the public API ----------------------------------------------------

    def get(self, conn_id: str) -> Connection | None:
        """The connection with this id, if this process holds it."""
        return self._connections.get(conn_id)

    async def count(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    async def send(self, conn_id: str, type: str, data: Any = None) -> None:
        """Send an envelope to one connection, wherever it is."""
        await self.delivery.publish(
            Op(OpKind.SEND, encode_envelope(type, data), target=conn_id)
        )

    async def send_raw(self, conn_id: str, payload: str | bytes) -> None:
        """Send a raw text (``str``) or binary (``bytes``) frame to one connection."""
        body, binary = _raw(payload)
        await self.delivery.publish(Op(OpKind.SEND, body, binary, target=conn_id))

    async def broadcast(
        self, type: str, data: Any = None, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send an envelope to every connection but those in ``exclude`` (ids)."""
        await self.delivery.publish(
            Op(
                OpKind.BROADCAST,
                encode_envelope(type, data),
                exclude=frozenset(exclude),
            )
        )

    async def broadcast_raw(
        self, payload: str | bytes, *, exclude: Iterable[str] = ()
    ) -> None:
        """Send a raw text or binary frame to every connection but ``exclude``."""
        body, binary = _raw(payload)
        await self.delivery.publish(
            Op(OpKind.BROADCAST, body, binary, exclude=frozenset(exclude))
        )

    async def disconnect(
        self, conn_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close one connection, wherever it is, after what it was already sent."""
        await self.delivery.publish(
            Op(OpKind.DISCONNECT, target=conn_id, code=code, reason=reason)
        )

    # -- applying ops to local connections --------------------------------

    def apply(self, op: Op) -> None:
        """Execute ``op`` on this process's connections (called by delivery)."""
        kind = op.kind
        if kind is OpKind.BROADCAST:
            frame = encode_frame(OP_BINARY if op.binary else OP_TEXT, op.payload)
            exclude = op.exclude
            for conn in list(self._connections.values()):
                if conn.id not in exclude:
                    conn.send_frame(frame)
        elif kind is OpKind.SEND:
            target = self._connections.get(op.target or "")
            if target is not None:
                target.send_frame(
                    encode_frame(OP_BINARY if op.binary else OP_TEXT, op.payload)
                )
        elif kind is OpKind.DISCONNECT:
            target = self._connections.get(op.target or "")
            if target is not None:
                target.start_close(op.code, op.reason)

    # -- connections coming and going --------------------------------------

    def accept(
        self,
        transport: asyncio.Transport,
        proto: ServerProtocol,
        accepted: Accept,
        *,
        remote: str,
        headers: dict[str, str],
    ) -> Connection:
        """Adopt an upgraded socket (called by the endpoint after the 101)."""
        assert self._flusher is not None, "ConnectionManager.start() was not awaited"
        conn = Connection(
            id=str(uuid.uuid4()),
            manager=self,
            transport=transport,
            proto=proto,
            flusher=self._flusher,
            user=accepted.user,
            meta=dict(accepted.meta),
            remote=remote,
            headers=headers,
            worker=self.worker,
        )
        conn.last_seen = self.clock()
        self._connections[conn.id] = conn
        self._idle.clear()
        transport.set_protocol(WireProtocol(conn, self._queue))
        if self._closing:
            conn.start_close(CloseCode.GOING_AWAY, "server shutting down")
        self._queue(conn, _OPENED)
        return conn

    def log_open(self, conn: Connection) -> None:
        log.debug("websocket %s open from %s user=%r", conn.id, conn.remote, conn.user)

    def _connection_lost(self, conn: Connection) -> None:
        if self._connections.pop(conn.id, None) is None:
            return
        log.debug(
            "websocket %s closed %s %s", conn.id, conn.close_code, conn.close_reason
        )
        self._queue(conn, _CLOSED)

    # -- running handlers --------------------------------------------------

    def _queue(self, conn: Connection, item: object) -> None:
        conn.inbox.append(item)
        if conn.task is None:
            assert self._loop is not None
            task = self._loop.create_task(self._drain(conn))
            conn.task = task
            self._tasks.add(task)
            self._idle.clear()
        elif len(conn.inbox) >= self.config.max_queue:
            conn._pause_reading()

    async def _drain(self, conn: Connection) -> None:
        inbox = conn.inbox
        low_water = self.config.max_queue // 2
        try:
            while inbox:
                item = inbox.popleft()
                if item is _OPENED:
                    for handler in self.registry.connect:
                        await self._call(conn, handler)
                elif item is _CLOSED:
                    for handler in self.registry.disconnect:
                        await self._call(conn, handler)
                elif isinstance(item, str):
                    await self._on_text(conn, item)
                elif isinstance(item, bytes):
                    await self._on_binary(conn, item)
                if len(inbox) <= low_water:
                    conn._resume_reading()
        finally:
            task = conn.task
            conn.task = None
            if task is not None:
                self._tasks.discard(task)
            if not self._tasks and not self._connections:
                self._idle.set()

    async def _on_text(self, conn: Connection, text: str) -> None:
        registry = self.registry
        try:
            envelope = decode_envelope(text)
            if not registry.handles_text(envelope.type):
                raise MessageError(
                    ErrorCode.UNKNOWN_TYPE, f"no handler for type {envelope.type!r}"
                )
        except MessageError as exc:
            await self._refuse(conn, exc)
            return
        for handler in registry.message:
            await self._call(conn, handler, envelope)
        for typed in registry.typed.get(envelope.type, ()):
            await self._call(conn, typed, envelope)

    async def _on_binary(self, conn: Connection, data: bytes) -> None:
        registry = self.registry
        if not registry.handles_binary():
            await self._refuse(
                conn,
                MessageError(ErrorCode.UNKNOWN_TYPE, "no handler for binary frames"),
            )
            return
        for handler in registry.message:
            await self._call(conn, handler, data)
        for binary in registry.binary:
            await self._call(conn, binary, data)

    async def _call(
        self, conn: Connection, handler: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        try:
            await handler(conn, *args)
        except MessageError as exc:
            await self._refuse(conn, exc)
        except Exception as exc:
            log.exception(
                "websocket handler %s failed on connection %s",
                getattr(handler, "__qualname__", handler),
                conn.id,
            )
            conn.send_frame(
                encode_frame(
                    OP_TEXT, error_envelope(ErrorCode.HANDLER_ERROR, "internal error")
                )
            )
            await self._run_error_hooks(conn, exc)

    async def _refuse(self, conn: Connection, exc: MessageError) -> None:
        conn.send_frame(encode_frame(OP_TEXT, error_envelope(exc.code, exc.reason)))
        await self._run_error_hooks(conn, exc)

    async def _run_error_hooks(self, conn: Connection, exc: Exception) -> None:
        for hook in self.registry.error:
            try:
                await hook(conn, exc)
            except Exception:
                log.exception("websocket error hook failed on connection %s", conn.id)

    # -- heartbeat -----------------------------------------------------------

    def _tick(self) -> float:
        """Seconds between heartbeat sweeps: a fifth of the tightest timing."""
        assert self.config.ping_interval is not None
        return min(self.config.ping_interval, self.config.ping_timeout, 5.0) / 5

    def _beat(self) -> None:
        assert self._loop is not None and self.config.ping_interval is not None
        now = self.clock()
        interval = self.config.ping_interval
        timeout = self.config.ping_timeout
        for conn in list(self._connections.values()):
            if conn.state is not ConnectionState.OPEN:
                continue
            if conn._ping_sent:
                if now - conn._ping_sent > timeout:
                    conn.abort(CloseCode.INTERNAL_ERROR, "ping timeout")
            elif now - conn.last_seen >= interval and conn.send_frame(PING_FRAME):
                conn._ping_sent = now
        self._heartbeat = self._loop.call_later(self._tick(), self._beat)


def _raw(payload: str | bytes) -> tuple[bytes, bool]:
    if isinstance(payload, str):
        return payload.encode(), False
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), True
    raise TypeError(f"payload must be str or bytes, got {type(payload).__name__}")
