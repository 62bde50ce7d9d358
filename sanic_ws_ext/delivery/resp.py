"""The backplane's per-message path to Redis, without redis-py.

redis-py carries every pub/sub message through its generic machinery: a
reader that wakes a task per reply, builds a dict per message and checks
health on every read, and a pipeline that makes command objects and parses
each ``PUBLISH`` reply into an object. At thousands of messages a second
that is most of a node's CPU per delivered message. Here is the lean path:

- :class:`Replies`, an incremental RESP2/RESP3 reader: bytes in, complete
  replies out (``bytes.find`` for the line ends, never a loop per byte);
- :class:`Subscriber`, a subscriber connection as an asyncio protocol: each
  push read is turned straight into the link's callbacks (a message, a
  confirmed subscription), with no task, future or dict per message;
- :class:`Publisher`, a publishing connection: a batch of ``PUBLISH`` /
  ``SPUBLISH`` is written as one buffer of RESP (each channel's command
  prefix made once) and its replies are counted, not parsed into objects.

Both hold one connection, raise on any fault (a closed socket, an error
reply, a reply late by :data:`IO_TIMEOUT`) and never retry: the link fails
and the backplane reconnects, as with redis-py. Connection set-up (``AUTH``)
is done here too; everything else (``INFO``, ``CLUSTER SLOTS``, ``PUBSUB
NUMSUB``) stays with redis-py. A ``rediss://`` URL (TLS) gets the same two
classes' redis-py twins, :class:`PySubscriber` and :class:`PyPublisher`:
TLS options are redis-py's to read, and that path is the one it always was.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

__all__ = [
    "IO_TIMEOUT",
    "Hooks",
    "Moved",
    "Publisher",
    "Push",
    "PyPublisher",
    "PySubscriber",
    "Replies",
    "ReplyError",
    "Subscriber",
    "command",
    "raw_ok",
]

#: Seconds for connecting and for a command's round trip.
IO_TIMEOUT = 5.0

Node = tuple[str, int]  # host, port
OnMessage = Callable[[bytes, bytes], None]
OnConfirmed = Callable[[bytes], None]
OnHeard = Callable[[], None]

_CRLF = b"\r\n"


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``, ``!<bulk error>``)."""


class Moved(Exception):
    """The cluster's slot map changed under a subscription or a publish."""


def _error(text: str) -> Exception:
    """The exception for an error reply: cluster redirections are Moved."""
    if text.startswith(("MOVED ", "ASK ", "CLUSTERDOWN")):
        return Moved(text)
    return ReplyError(text)


class Push(list[Any]):
    """A RESP3 push (``>``): a list, told apart from an array reply."""


class Verbatim(bytes):
    """A RESP3 verbatim string (``=``), its format (``txt``, ``mkd``) kept."""

    format: bytes = b"txt"


class _Incomplete(Exception):
    """Not all of a reply is in the buffer yet."""


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class Replies:
    """RESP2 and RESP3 replies from a byte stream fed in pieces of any size.

    :meth:`feed` what the socket gave, then iterate: each complete reply
    comes out once, in order; a reply cut short waits for the next feed.
    Bulk and simple strings are ``bytes``, integers ``int``, nulls ``None``,
    arrays and sets ``list``, pushes :class:`Push`, maps ``dict``, doubles
    ``float``, booleans ``bool``, big numbers ``int``, errors
    :class:`ReplyError` *values* (returned, not raised: what an error means
    is the caller's to say). Attributes (``|``) are read and dropped.

    The unread bytes are kept as one ``bytes`` object; a reply longer than
    what has arrived (a big bulk string) is not re-parsed on every piece:
    pieces are only collected until enough bytes are there.
    """

    __slots__ = ("_buf", "_more", "_need", "_pos", "_size")

    def __init__(self) -> None:
        self._buf = b""  # unread from _pos on
        self._pos = 0
        self._more: list[bytes] = []  # fed since, not yet joined to _buf
        self._size = 0  # bytes unread in _buf and _more
        self._need = 1  # bytes unread before parsing again is worth it

    def feed(self, data: bytes) -> None:
        self._more.append(data)
        self._size += len(data)

    @property
    def pending(self) -> int:
        """Bytes fed and not yet returned as a reply."""
        return self._size

    def __iter__(self) -> Replies:
        return self

    def __next__(self) -> Any:
        if self._size < self._need:
            raise StopIteration
        more = self._more
        if more:
            pos = self._pos
            if pos == len(self._buf) and len(more) == 1:
                self._buf = more[0]
            else:
                more.insert(0, self._buf[pos:])
                self._buf = b"".join(more)
            more.clear()
            self._pos = 0
        start = self._pos
        try:
            value, end = self._read(self._buf, start)
        except _Incomplete as short:
            # The least that must be there before this reply can be whole.
            self._need = max(self._size + 1, short.args[0] - start if short.args else 0)
            raise StopIteration from None
        self._pos = end
        self._size -= end - start
        self._need = 1
        return value

    def _read(self, buf: bytes, pos: int) -> tuple[Any, int]:
        """The reply starting at ``pos`` and where the next one starts."""
        end = buf.find(_CRLF, pos)
        if end < 0:
            raise _Incomplete
        kind = buf[pos]
        if kind == 36:  # $ bulk string
            size = int(buf[pos + 1 : end])
            if size < 0:
                return None, end + 2
            start = end + 2
            stop = start + size
            if len(buf) < stop + 2:
                raise _Incomplete(stop + 2)
            return buf[start:stop], stop + 2
        if kind == 42 or kind == 62 or kind == 126:  # * array, > push, ~ set
            count = int(buf[pos + 1 : end])
            if count < 0:
                return None, end + 2
            items = Push() if kind == 62 else []
            pos = end + 2
            read = self._read
            for _ in range(count):
                item, pos = read(buf, pos)
                items.append(item)
            return items, pos
        if kind == 58:  # : integer
            return int(buf[pos + 1 : end]), end + 2
        if kind == 43:  # + simple string
            return buf[pos + 1 : end], end + 2
        if kind == 45:  # - error
            return ReplyError(buf[pos + 1 : end].decode(errors="replace")), end + 2
        if kind == 37 or kind == 124:  # % map, | attribute
            count = int(buf[pos + 1 : end])
            found: dict[Any, Any] = {}
            pos = end + 2
            for _ in range(count):
                key, pos = self._read(buf, pos)
                value, pos = self._read(buf, pos)
                found[tuple(key) if isinstance(key, list) else key] = value
            if kind == 124:  # attributes describe the reply after them
                return self._read(buf, pos)
            return found, pos
        if kind == 95:  # _ null
            return None, end + 2
        if kind == 35:  # # boolean
            return buf[pos + 1 : end] == b"t", end + 2
        if kind == 44:  # , double
            return float(buf[pos + 1 : end]), end + 2
        if kind == 40:  # ( big number
            return int(buf[pos + 1 : end]), end + 2
        if kind == 33 or kind == 61:  # ! bulk error, = verbatim string
            size = int(buf[pos + 1 : end])
            start = end + 2
            stop = start + size
            if len(buf) < stop + 2:
                raise _Incomplete(stop + 2)
            text = buf[start:stop]
            if kind == 33:
                return ReplyError(text.decode(errors="replace")), stop + 2
            verbatim = Verbatim(text[4:])
            verbatim.format = text[:3]
            return verbatim, stop + 2
        raise ReplyError(f"not RESP: {bytes(buf[pos : pos + 20])!r}")


def raw_ok(url: str) -> bool:
    """Whether this module's own connections serve ``url`` (not TLS)."""
    return url.partition("://")[0] in ("redis", "unix")


class Hooks:
    """What a subscriber connection tells its link, and when it last spoke.

    ``message`` for each ``message``/``smessage``; ``confirmed`` for each
    ``subscribe``/``ssubscribe``; ``heard`` once per read that had either
    (not for a ``pong``: the backplane's deafness watch wants its own beat,
    not a ping's answer). A ``sunsubscribe`` for a channel not in
    ``leaving`` is Redis moving that channel's slot away: the connection
    fails with :class:`Moved`.
    """

    def __init__(
        self,
        node: Node,
        message: OnMessage,
        confirmed: OnConfirmed,
        heard: OnHeard | None,
    ) -> None:
        self.node = node
        self.message = message
        self.confirmed = confirmed
        self.heard = heard


class _Connection(asyncio.Protocol):
    """A raw connection to Redis: connect, ``AUTH``, and fail once."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        #: Done (with the exception) once the connection failed or closed.
        self.failed: asyncio.Future[None] = self._loop.create_future()
        self._replies = Replies()
        self._answer: asyncio.Future[Any] | None = None  # during set-up only

    @classmethod
    async def open(cls, url: str, node: Node | None, *args: Any) -> Any:
        """Connected to ``node`` (or the URL's own), authenticated."""
        from redis.asyncio.connection import parse_url

        params = parse_url(url)
        loop = asyncio.get_running_loop()
        proto = cls(*args)
        if node is None and "path" in params:
            connecting = loop.create_unix_connection(lambda: proto, params["path"])
        else:
            host, port = node or (
                params.get("host", "localhost"),
                params.get("port", 6379),
            )
            connecting = loop.create_connection(lambda: proto, host, port)
        transport, _ = await asyncio.wait_for(connecting, IO_TIMEOUT)
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            password = params.get("password")
            if password is not None:
                user = params.get("username")
                await proto._ask("AUTH", *([str(user)] if user else []), str(password))
            name = params.get("client_name")
            if name:
                await proto._ask("CLIENT", "SETNAME", str(name))
        except BaseException:
            transport.abort()
            raise
        return proto

    async def _ask(self, *args: bytes | str | int) -> Any:
        """One command's reply, during set-up (nothing else in flight)."""
        assert self.transport is not None
        self._answer = self._loop.create_future()
        self.transport.write(command(*args))
        try:
            done, _ = await asyncio.wait(
                [self._answer, self.failed],
                timeout=IO_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self.failed.done():
                self.failed.result()
            if not done:
                raise TimeoutError(f"Redis did not answer {args[0]!r}")
            reply = self._answer.result()
        finally:
            self._answer = None
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def _set_up(self, data: bytes) -> None:
        self._replies.feed(data)
        for reply in self._replies:
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(reply)
            else:
                self.fail(ConnectionError(f"unasked reply: {reply!r}"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        """Fail for good: the link sees it and reconnects."""
        if not self.failed.done():
            self.failed.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Drop the connection (its failure, if any, is seen: no warning)."""
        self.fail(ConnectionError("closed"))
        with contextlib.suppress(BaseException):
            self.failed.exception()

    async def wait_failed(self) -> None:
        """Until the connection fails; raises what failed it."""
        await asyncio.wait([self.failed])  # never cancels the future itself
        self.failed.result()


class _Confirmations:
    """Counting subscriptions Redis confirmed, for the set-up's waits."""

    confirms = 0
    _progress: asyncio.Future[None] | None = None
    failed: asyncio.Future[None]

    def _confirmed_one(self) -> None:
        self.confirms += 1
        progress = self._progress
        if progress is not None and not progress.done():
            progress.set_result(None)

    async def until_confirmed(self, count: int) -> None:
        """Until ``count`` confirmations in all; each bounded by IO_TIMEOUT.

        Messages on channels confirmed first may come in between: delivered,
        not dropped (a drop would be a gap for the receiver to heal).
        """
        loop = asyncio.get_running_loop()
        while self.confirms < count:
            self._progress = progress = loop.create_future()
            done, _ = await asyncio.wait(
                [progress, self.failed],
                timeout=IO_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            self._progress = None
            if self.failed.done():
                self.failed.result()
            if not done:
                raise TimeoutError("Redis confirmed no subscription in time")


class Subscriber(_Connection, _Confirmations):
    """A subscriber connection whose pushes go straight to its hooks."""

    def __init__(self, hooks: Hooks) -> None:
        super().__init__()
        self._hooks = hooks
        self._message = hooks.message
        #: Shard channels we unsubscribe from, until Redis confirms.
        self.leaving: set[bytes] = set()
        #: Loop time of the last read (any reply, a ``pong`` too).
        self.heard_at = self._loop.time()

    def send(self, *args: bytes | str | int) -> None:
        """A command (SUBSCRIBE, PING...): its answer comes as a push."""
        if self.failed.done():
            self.failed.result()  # raises what failed it
        assert self.transport is not None
        self.transport.write(command(*args))

    def data_received(self, data: bytes) -> None:
        if self._answer is not None:
            self._set_up(data)
            return
        self.heard_at = self._loop.time()
        replies = self._replies
        replies.feed(data)
        message = self._message
        traffic = False
        reply = None
        try:
            for reply in replies:
                kind = reply[0]
                if kind == b"message" or kind == b"smessage":
                    message(reply[1], reply[2])
                    traffic = True
                elif kind == b"subscribe" or kind == b"ssubscribe":
                    self._hooks.confirmed(reply[1])
                    self._confirmed_one()
                    traffic = True
                elif kind == b"sunsubscribe":
                    channel = reply[1]
                    if channel not in self.leaving:
                        host, port = self._hooks.node
                        raise Moved(f"{host}:{port} dropped {channel!r}")
                    self.leaving.discard(channel)
            if traffic and self._hooks.heard is not None:
                self._hooks.heard()
        except TypeError:  # an error reply (not subscriptable), or not RESP
            self.fail(_unexpected(reply))
        except Exception as exc:
            self.fail(exc)


def _unexpected(reply: Any) -> Exception:
    if isinstance(reply, ReplyError):
        return _error(str(reply))
    return ConnectionError(f"unexpected reply on a subscriber: {reply!r}")


class Publisher(_Connection):
    """``PUBLISH``/``SPUBLISH`` batches on one connection, replies counted.

    One batch in flight at a time (the backplane sends the next when this
    one is through), so a channel keeps its order. Channels starting with
    ``sharded`` (room channels on a Redis Cluster) get ``SPUBLISH``.
    """

    #: Command prefixes kept; past it they are made afresh.
    PREFIXES = 4096

    def __init__(self, sharded: str | None = None) -> None:
        super().__init__()
        self._sharded = sharded
        self._prefixes: dict[str, bytes] = {}
        self._owed = 0  # replies the batch in flight still waits for
        self._through: asyncio.Future[None] | None = None

    def _prefix(self, channel: str) -> bytes:
        sharded = self._sharded is not None and channel.startswith(self._sharded)
        verb = b"SPUBLISH" if sharded else b"PUBLISH"
        name = channel.encode()
        prefix = b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$" % (
            len(verb),
            verb,
            len(name),
            name,
        )
        if len(self._prefixes) >= self.PREFIXES:
            self._prefixes.clear()
        self._prefixes[channel] = prefix
        return prefix

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """Send ``batch``; return once Redis took every message of it."""
        if self.failed.done():
            self.failed.result()
        assert self.transport is not None and self._through is None
        prefixes = self._prefixes
        parts: list[bytes] = []
        add = parts.append
        for channel, message in batch:
            add(prefixes.get(channel) or self._prefix(channel))
            add(b"%d\r\n" % len(message))
            add(message)
            add(_CRLF)
        self._owed = len(batch)
        self._through = through = self._loop.create_future()
        timer = self._loop.call_later(IO_TIMEOUT, self._late)
        try:
            self.transport.write(b"".join(parts))
            await through  # failed with the connection, if it fails
        except BaseException:
            # Replies still owed would be taken for the next batch's.
            self.fail(ConnectionError("a publish did not complete"))
            raise
        finally:
            timer.cancel()
            self._through = None

    def fail(self, exc: BaseException) -> None:
        through = self._through
        if through is not None and not through.done():
            through.set_exception(exc)
        super().fail(exc)

    def _late(self) -> None:
        self.fail(TimeoutError(f"Redis did not take a publish in {IO_TIMEOUT} s"))

    def data_received(self, data: bytes) -> None:
        if self._answer is not None:
            self._set_up(data)
            return
        # Every reply is one line: ":<subscribers>\r\n", or "-<error>\r\n".
        if b"-" in data:
            line = data[data.index(b"-") + 1 :].split(_CRLF, 1)[0]
            self.fail(_error(line.decode(errors="replace")))
            return
        self._owed -= data.count(b"\n")
        if self._owed <= 0:
            through = self._through
            if self._owed < 0 or through is None:
                self.fail(ConnectionError("unasked replies on a publisher"))
            elif not through.done():
                through.set_result(None)


class PySubscriber(_Confirmations):
    """:class:`Subscriber` over redis-py (TLS): a reader task per connection."""

    def __init__(self, redis: Any, hooks: Hooks) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._hooks = hooks
        self._pubsub = redis.pubsub()
        self.failed: asyncio.Future[None] = loop.create_future()
        self.leaving: set[bytes] = set()
        self.heard_at = loop.time()
        self._reader: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        # Commands go one at a time, in order (the first one connects).
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, redis: Any, hooks: Hooks) -> PySubscriber:
        return cls(redis, hooks)

    def send(self, *args: bytes | str | int) -> None:
        if self.failed.done():
            self.failed.result()
        task = self._loop.create_task(self._send(args))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, args: Sequence[Any]) -> None:
        try:
            async with self._lock:
                await asyncio.wait_for(self._pubsub.execute_command(*args), IO_TIMEOUT)
        except Exception as exc:
            self.fail(exc)
            return
        if self._reader is None:  # a connection to read from now
            self._reader = self._loop.create_task(self._read())

    async def _read(self) -> None:
        hooks = self._hooks
        try:
            while True:
                reply = await self._pubsub.parse_response(block=True)
                self.heard_at = self._loop.time()
                if reply is None:
                    continue
                kind = reply[0]
                if kind in (b"message", b"smessage"):
                    hooks.message(reply[1], reply[2])
                elif kind in (b"subscribe", b"ssubscribe"):
                    hooks.confirmed(reply[1])
                    self._confirmed_one()
                elif kind == b"sunsubscribe":
                    if reply[1] not in self.leaving:
                        host, port = hooks.node
                        raise Moved(f"{host}:{port} dropped {reply[1]!r}")
                    self.leaving.discard(reply[1])
                    continue
                else:
                    continue
                if hooks.heard is not None:
                    hooks.heard()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_exception(exc)
        connection = self._pubsub.connection
        if connection is not None:  # a read blocked in redis-py ends with it
            task = self._loop.create_task(connection.disconnect(nowait=True))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def close(self) -> None:
        self.fail(ConnectionError("closed"))
        with contextlib.suppress(BaseException):
            self.failed.exception()
        for task in (self._reader, *self._sending):
            if task is not None:
                task.cancel()
        pubsub = self._pubsub
        task = self._loop.create_task(pubsub.aclose())
        self._sending.add(task)  # held until it ran
        task.add_done_callback(self._sending.discard)

    async def wait_failed(self) -> None:
        await asyncio.wait([self.failed])
        self.failed.result()


class PyPublisher:
    """:class:`Publisher` over redis-py (TLS): a pipeline per batch."""

    def __init__(self, redis: Any, sharded: str | None = None) -> None:
        self._redis = redis
        self._sharded = sharded

    @classmethod
    async def open(cls, redis: Any, sharded: str | None = None) -> PyPublisher:
        return cls(redis, sharded)

    async def publish(self, batch: Sequence[tuple[str, bytes]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for channel, message in batch:
            if self._sharded is not None and channel.startswith(self._sharded):
                pipe.spublish(channel, message)
            else:
                pipe.publish(channel, message)
        await pipe.execute()

    def fail(self, exc: BaseException) -> None:
        """Nothing of its own to fail: the client's pool holds the connection."""

    async def wait_failed(self) -> None:
        """Never returns: a fault shows on the next publish instead."""
        await asyncio.get_running_loop().create_future()

    def close(self) -> None:
        """Nothing of its own to close."""
