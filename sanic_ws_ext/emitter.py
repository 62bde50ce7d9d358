"""Sending to the cluster from outside it: background jobs, scripts, services.

An emitter joins a Redis-backed cluster (``WS_BACKPLANE = "redis://..."``)
as a *sender only*: it publishes the very ops a worker's
``app.ctx.ws.broadcast`` (and the rest) would, on the same channels, in the
same message format, and never subscribes. Workers never list it
(``workers()``, ``count()``), never wait for it, and never ask it for state.
Nothing here needs Sanic to run::

    async with Emitter("redis://localhost:6379/0") as ws:   # asyncio code
        await ws.send_user("alice", "job.done", {"id": 7})

    with SyncEmitter("redis://localhost:6379/0") as ws:     # Celery, Django
        ws.publish("lobby", "news", {"text": "hi"})

Use the workers' ``WS_REDIS_CHANNEL`` as ``channel``.

The calls are the manager's: ``broadcast``, ``send``, ``publish`` (a room),
``send_user``, ``disconnect``, ``disconnect_user``, ``join``, ``leave``.

Guarantees (docs/topics/delivery.md): each receiving process applies an
emitter's ops in the order sent (per channel; across channels too on one
Redis), at most once: every message carries the emitter's name
(``~emitter/<random>``), a life and a sequence number per channel, and
receivers drop duplicates as they do a worker's. Ops for one connection
(``send``, ``disconnect``, ``join``, ``leave``) go to every process, and
the one holding the connection acts: an emitter does not know where it is.

- :class:`Emitter` (asyncio) is a worker's backplane without a subscriber
  (:class:`~sanic_ws_ext.delivery.backplane.RedisBackplane`): the same
  outage buffer (``buffer`` bytes), resend window and reconnects, on one
  Redis or a Redis Cluster. After a reconnect it sends its buffer once as
  many processes subscribe to ``<channel>:all`` as before the outage (it
  counts them every second while connected; bounded wait).
- :class:`SyncEmitter` (redis-py's blocking client) publishes each op at
  once and returns when Redis confirmed it; nothing is buffered: a failure
  raises :class:`~sanic_ws_ext.errors.EmitFailed`. One Redis only (on a
  Redis Cluster it raises at the first call: use :class:`Emitter`).

Rooms declared with ``history=`` are numbered and kept by their sequencer:
an emitter's ``publish`` to one is delivered live to its members but not
numbered, kept or replayed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .config import DEFAULTS
from .delivery import LinkState, Op, OpKind
from .delivery.backplane import SENDER_ONLY, RedisBackplane, _redact
from .delivery.local import LocalDelivery
from .delivery.redislink import IO_TIMEOUT
from .delivery.wire import encode_op, frame_record, pack_message
from .envelope import message_body
from .errors import CloseCode, EmitFailed, PublishTooLarge
from .manager import check_close
from .wire import send_key

__all__ = ["Emitter", "SyncEmitter"]

_DEFAULT_CHANNEL: str = DEFAULTS["WS_REDIS_CHANNEL"]
_DEFAULT_MAX_PUBLISH: int = DEFAULTS["WS_MAX_PUBLISH"]
_DEFAULT_BUFFER: int = DEFAULTS["WS_BACKPLANE_BUFFER"]
#: Ops queued without yielding before an async call lets the loop send them.
_PASS = 256
#: Room channels a SyncEmitter keeps numbering (as a worker's room streams).
_STREAMS = 65536


def _name() -> str:
    return f"{SENDER_ONLY}emitter/{os.urandom(6).hex()}"


def _send_op(
    kind: OpKind,
    target: str,
    type: str | None,
    data: Any,
    raw: str | bytes | None,
    exclude: Iterable[str],
    volatile: bool,
    key: str | None,
    origin: str,
) -> Op:
    """One of the four sends, as a worker's manager makes it."""
    body, binary = message_body(type, data, raw)
    if isinstance(exclude, str):
        raise TypeError("exclude is a collection of connection ids, not one str")
    return Op(
        kind,
        body,
        binary,
        target,
        frozenset(exclude),
        1000,
        send_key(key) or "",
        origin,
        bool(volatile),
    )


def _target(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _disconnect_op(
    kind: OpKind, name: str, target: str, code: int, reason: str, origin: str
) -> Op:
    """DISCONNECT (a connection) or USER_DISCONNECT (every one of a user)."""
    target = _target(name, target)
    check_close(code, reason)
    return Op(kind, target=target, code=code, reason=reason, origin=origin)


def _membership_op(kind: OpKind, conn_id: str, room: str, origin: str) -> Op:
    return Op(
        kind,
        _target("room", room).encode(),
        target=_target("conn_id", conn_id),
        origin=origin,
    )


def _nothing(op: Op) -> None:
    """An emitter's own process holds no connection: nothing to apply."""


class _SenderBackplane(RedisBackplane):
    """A backplane that publishes and never subscribes (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Subscribers of ``:all`` last counted while connected.
        self.listeners = 0

    def _plain_channels(self) -> list[str]:
        return []

    def _listeners_expected(self) -> int:
        return self.listeners

    async def _watch(self) -> None:
        """Count the listeners (no deafness watch: there is nothing to hear)."""
        assert self._link is not None
        deaf_after = max(5 * self.beat, 2.0)
        while True:
            if not self._recovering:  # not a count from mid-outage
                counts = await self._link.numsub([self._all])
                if not self._recovering:
                    self.listeners = counts.get(self._all, 0)
            await self._link.watch(deaf_after)  # a cluster's shard connections
            await asyncio.sleep(self.beat)  # a periodic count, not a sync point

    @property
    def backlog(self) -> int:
        """Bytes queued or buffered, not yet taken by Redis."""
        return self._outbox_bytes + sum(len(r) for _, r in self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending)


class Emitter:
    """Sends to the cluster from asyncio code outside its workers.

    ``await start()`` (or ``async with``) first; ``close()`` sends what is
    buffered (for up to ``timeout`` seconds) and disconnects. The calls take
    the arguments of the manager's calls of the same names and return once
    the op is queued, not delivered; ``flush()`` waits until Redis took
    everything sent so far. An op whose body exceeds ``max_publish`` raises
    :class:`~sanic_ws_ext.errors.PublishTooLarge`, as in a worker.
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str = _DEFAULT_CHANNEL,
        max_publish: int = _DEFAULT_MAX_PUBLISH,
        buffer: int = _DEFAULT_BUFFER,
    ) -> None:
        #: This emitter's name: the origin of its ops (``~emitter/<hex>``).
        self.name = _name()
        self._backplane = _SenderBackplane(
            url,
            LocalDelivery(),
            node=self.name.rpartition("/")[0],
            process=self.name,
            channel=channel,
            max_publish=max_publish,
            buffer=buffer,
            beat=1.0,
        )
        self._started = False
        self._unyielded = 0

    async def start(self) -> None:
        """Connect (waits up to 2 s; then keeps trying in the background,
        buffering what is sent meanwhile)."""
        if not self._started:
            self._started = True
            await self._backplane.start(_nothing)

    async def close(self, timeout: float = 5.0) -> bool:
        """Send what is buffered, then disconnect; False if some was not sent."""
        if not self._started:
            return True
        sent = await self.flush(timeout)
        self._started = False
        await self._backplane.stop()
        return sent

    async def __aenter__(self) -> Emitter:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until Redis took everything sent so far; False on timeout."""
        return await self._backplane.drain(timeout)

    @property
    def state(self) -> str:
        """``"connected"``, ``"reconnecting"`` (buffering) or ``"down"``
        (the buffer overflowed: ops are being dropped)."""
        return self._backplane.state.value

    def status(self) -> dict[str, Any]:
        """Counters: ``published`` messages, ``lost`` ops, ``buffered_bytes``, ..."""
        status = self._backplane.status()
        del status["machine"]
        status["name"] = self.name
        status["listeners"] = self._backplane.listeners
        return status

    # -- sending ---------------------------------------------------------------

    async def send(
        self,
        conn_id: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to one connection, wherever it is."""
        target = _target("conn_id", conn_id)
        op = _send_op(
            OpKind.SEND, target, type, data, raw, (), volatile, key, self.name
        )
        await self._deliver(op)

    async def broadcast(
        self,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every connection but those in ``exclude`` (ids)."""
        op = _send_op(
            OpKind.BROADCAST, "", type, data, raw, exclude, volatile, key, self.name
        )
        await self._deliver(op)

    async def publish(
        self,
        room: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every member of ``room``."""
        target = _target("room", room)
        op = _send_op(
            OpKind.ROOM_SEND, target, type, data, raw, exclude, volatile, key, self.name
        )
        await self._deliver(op)

    async def send_user(
        self,
        user: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every connection of ``user``."""
        target = _target("user", user)
        op = _send_op(
            OpKind.USER_SEND, target, type, data, raw, exclude, volatile, key, self.name
        )
        await self._deliver(op)

    async def disconnect(
        self, conn_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close one connection, after what it was already sent."""
        op = _disconnect_op(
            OpKind.DISCONNECT, "conn_id", conn_id, code, reason, self.name
        )
        await self._deliver(op)

    async def disconnect_user(
        self, user: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close every connection of ``user`` (logout everywhere)."""
        op = _disconnect_op(
            OpKind.USER_DISCONNECT, "user", user, code, reason, self.name
        )
        await self._deliver(op)

    async def join(self, conn_id: str, room: str) -> None:
        """Put a connection into ``room`` (returns at once, not once joined)."""
        await self._deliver(_membership_op(OpKind.JOIN, conn_id, room, self.name))

    async def leave(self, conn_id: str, room: str) -> None:
        """Take a connection out of ``room``."""
        await self._deliver(_membership_op(OpKind.LEAVE, conn_id, room, self.name))

    async def _deliver(self, op: Op) -> None:
        if not self._started:
            raise RuntimeError("Emitter: await start() (or async with) first")
        backplane = self._backplane
        backplane.deliver(op)
        self._unyielded += 1
        if self._unyielded >= _PASS:
            # A caller looping without awaiting anything real: let the loop
            # pack and send, and wait for Redis while half the buffer is full.
            self._unyielded = 0
            await asyncio.sleep(0)
            if (
                backplane.state is LinkState.CONNECTED
                and backplane.backlog > backplane.buffer // 2
            ):
                await backplane.drain(IO_TIMEOUT)


class SyncEmitter:
    """Sends to the cluster from blocking code: Celery tasks, Django, scripts.

    Each call publishes at once and returns once Redis confirmed it, or
    raises :class:`~sanic_ws_ext.errors.EmitFailed` (nothing is buffered or
    sent again; the next call reconnects). Safe to share between threads.
    The calls are the manager's, without ``await``.
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str = _DEFAULT_CHANNEL,
        max_publish: int = _DEFAULT_MAX_PUBLISH,
    ) -> None:
        #: This emitter's name: the origin of its ops (``~emitter/<hex>``).
        self.name = _name()
        self.url = url
        self.max_publish = max_publish
        self._all = f"{channel}:all"
        self._room_prefix = f"{channel}:room:"
        self._origin = self.name.encode()
        self._lock = threading.Lock()
        self._redis: Any = None
        # Channel -> [life, last sequence], least recently used first.
        self._streams: OrderedDict[str, list[int]] = OrderedDict()
        #: Messages Redis confirmed.
        self.published = 0

    def close(self) -> None:
        with self._lock:
            if self._redis is not None:
                redis, self._redis = self._redis, None
                redis.close()

    def __enter__(self) -> SyncEmitter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(
        self,
        conn_id: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to one connection, wherever it is."""
        target = _target("conn_id", conn_id)
        op = _send_op(
            OpKind.SEND, target, type, data, raw, (), volatile, key, self.name
        )
        self._publish("send", op)

    def broadcast(
        self,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every connection but those in ``exclude`` (ids)."""
        op = _send_op(
            OpKind.BROADCAST, "", type, data, raw, exclude, volatile, key, self.name
        )
        self._publish("broadcast", op)

    def publish(
        self,
        room: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every member of ``room``."""
        target = _target("room", room)
        op = _send_op(
            OpKind.ROOM_SEND, target, type, data, raw, exclude, volatile, key, self.name
        )
        self._publish("publish", op)

    def send_user(
        self,
        user: str,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        exclude: Iterable[str] = (),
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send to every connection of ``user``."""
        target = _target("user", user)
        op = _send_op(
            OpKind.USER_SEND, target, type, data, raw, exclude, volatile, key, self.name
        )
        self._publish("send_user", op)

    def disconnect(
        self, conn_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close one connection, after what it was already sent."""
        op = _disconnect_op(
            OpKind.DISCONNECT, "conn_id", conn_id, code, reason, self.name
        )
        self._publish("disconnect", op)

    def disconnect_user(
        self, user: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close every connection of ``user`` (logout everywhere)."""
        op = _disconnect_op(
            OpKind.USER_DISCONNECT, "user", user, code, reason, self.name
        )
        self._publish("disconnect_user", op)

    def join(self, conn_id: str, room: str) -> None:
        """Put a connection into ``room``."""
        self._publish("join", _membership_op(OpKind.JOIN, conn_id, room, self.name))

    def leave(self, conn_id: str, room: str) -> None:
        """Take a connection out of ``room``."""
        self._publish("leave", _membership_op(OpKind.LEAVE, conn_id, room, self.name))

    # -- the link ----------------------------------------------------------------

    def _publish(self, call: str, op: Op) -> None:
        if len(op.payload) > self.max_publish:
            raise PublishTooLarge(len(op.payload), self.max_publish)
        if op.kind is OpKind.ROOM_SEND:
            channel = self._room_prefix + op.target
        else:
            channel = self._all
        record = frame_record(encode_op(op))
        with self._lock:
            stream = self._stream(channel)
            stream[1] += 1
            message = pack_message(self._origin, stream[0], stream[1], record)
            try:
                self._connected().publish(channel, message)
            except EmitFailed:
                raise
            except Exception as exc:
                # The connection may be half-used: the next call makes anew.
                redis, self._redis = self._redis, None
                if redis is not None:
                    redis.close()
                raise EmitFailed(f"{call} to {channel}", exc) from exc
            self.published += 1

    def _stream(self, channel: str) -> list[int]:
        """[life, last sequence] of ``channel``; a new life once evicted."""
        stream = self._streams.get(channel)
        if stream is not None:
            self._streams.move_to_end(channel)
            return stream
        stream = self._streams[channel] = [int.from_bytes(os.urandom(8), "big"), 0]
        if len(self._streams) > _STREAMS:
            self._streams.popitem(last=False)
        return stream

    def _connected(self) -> Any:
        if self._redis is not None:
            return self._redis
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.exceptions import ResponseError
        from redis.retry import Retry

        redis = Redis.from_url(
            self.url,
            socket_timeout=IO_TIMEOUT,
            socket_connect_timeout=IO_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            max_connections=1,
        )
        try:
            try:
                cluster = int(redis.info("cluster").get("cluster_enabled", 0))
            except ResponseError:  # INFO refused (a proxy): one server to us
                cluster = 0
        except Exception as exc:
            redis.close()
            raise EmitFailed(f"connecting to {_redact(self.url)}", exc) from exc
        if cluster:
            redis.close()
            raise EmitFailed(
                f"connecting to {_redact(self.url)}",
                RuntimeError(
                    "a Redis Cluster: SyncEmitter publishes to one Redis; use"
                    " Emitter (asyncio), which routes by shard"
                ),
            )
        self._redis = redis
        return redis
