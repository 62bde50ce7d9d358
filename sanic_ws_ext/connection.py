"""One websocket connection: its identity, and the only path to its socket.

After the upgrade the extension takes the socket from Sanic
(``transport.set_protocol``) and hands it to a :class:`WireProtocol`, which
parses frames with the websockets library's sans-I/O ``ServerProtocol``. No
task, lock or timer exists per idle connection.

Rules this module keeps:

- Every byte written to a connection goes through :meth:`Connection._enqueue`:
  data frames, pongs, pings and the close frame alike, so frames never
  interleave and order is the order of the calls.
- Writing never waits. Frames are appended to the connection's pending list
  and the :class:`Flusher` writes each connection's pending frames in one
  ``transport.write`` per event-loop pass.
- Unsent bytes (pending plus the transport's buffer) are bounded by
  ``WS_MAX_BACKPRESSURE`` plus one frame: a frame is refused only when the
  backlog already passed the bound, so a client that keeps up can receive
  any single message, however large. A connection refused a frame is
  aborted at once with 1008 "slow consumer": its backlog is dropped,
  nothing else waits for it.
- Data frames are accepted only while the connection is OPEN; once a close
  frame is queued, further sends are ignored.
"""

from __future__ import annotations

import asyncio
import codecs
import fcntl
import io
import logging
import socket
import sys
import termios
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from .envelope import encode_envelope, error_envelope
from .errors import CloseCode, ErrorCode
from .frames import OP_TEXT, PING_FRAME, data_frame, encode_frame, raw_body
from .limits import take

if TYPE_CHECKING:
    from .manager import ConnectionManager

__all__ = ["Connection", "ConnectionState", "FrameParser", "fan_out"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: A fragmented message may come in one fragment per this many bytes of
#: ``WS_MAX_MESSAGE_SIZE`` (and at least :data:`_MIN_FRAGMENTS`): the size
#: limit alone does not bound empty continuation frames, and every frame
#: costs parse time.
_BYTES_PER_FRAGMENT = 64
_MIN_FRAGMENTS = 16


def fragment_limit(max_size: int | None) -> int | None:
    """Most fragments one message may have (``None``: no limit)."""
    if max_size is None:
        return None
    return max(_MIN_FRAGMENTS, max_size // _BYTES_PER_FRAGMENT)


class PartialMessage:
    """A fragmented message being reassembled.

    Fragments go into one buffer: memory is the message's size (which the
    parser bounds by ``WS_MAX_MESSAGE_SIZE``), with no cost per fragment.
    Text is decoded fragment by fragment, once, so a bad byte fails the
    connection when it arrives rather than at the end of the message.
    """

    __slots__ = ("_binary", "_text", "_utf8", "count")

    def __init__(self, text: bool) -> None:
        self.count = 0
        if text:
            self._text: io.StringIO | None = io.StringIO()
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
            self._binary: bytearray | None = None
        else:
            self._text = None
            self._binary = bytearray()

    def add(self, data: bytes | bytearray | memoryview, final: bool) -> None:
        """Append a fragment; raises :class:`UnicodeDecodeError` on bad text."""
        self.count += 1
        if self._text is not None:
            self._text.write(self._utf8.decode(data, final))
        else:
            assert self._binary is not None
            self._binary += data

    def message(self) -> str | bytearray:
        """The whole message: text already decoded, or the bytes."""
        if self._text is not None:
            return self._text.getvalue()
        assert self._binary is not None
        return self._binary


class FrameParser(ServerProtocol):
    """websockets' server protocol, with a close allowed between fragments.

    RFC 6455, 5.4: control frames may come between the fragments of a
    message, and a close ends the connection, unfinished message included.
    websockets answers that close with 1002 "incomplete fragmented message";
    a conforming server echoes it (Autobahn case 7.1.5). The partial message
    is dropped by :class:`WireProtocol`.
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None
        super().recv_frame(frame)


class ConnectionState(Enum):
    OPEN = "open"
    #: A close frame is queued; waiting for the peer's reply or the timeout.
    CLOSING = "closing"
    CLOSED = "closed"


#: Bytes of broadcast frames queued in one event-loop pass after which the
#: Flusher writes at once instead of at the end of the pass. A handler that
#: broadcasts in a loop would otherwise hold every frame until it returns:
#: measured with 1000 clients and 200 broadcasts (bench/fanout.py), no limit
#: gave a p99 of 135 ms; 2 MiB gave 65 ms and 15% more messages/s (the load
#: client starts reading while the server still produces); 512 KiB cut
#: throughput by a third (too many small writes).
_PASS_LIMIT = 2 << 20


class Flusher:
    """Writes every connection's pending frames once per event-loop pass.

    One ``call_soon`` per pass for all connections, not one per connection:
    uWebSockets calls this corking.
    """

    __slots__ = ("_dirty", "_loop", "_queued", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Connection] = []
        self._scheduled = False
        self._queued = 0

    def account(self, size: int) -> None:
        """Count ``size`` bytes queued; past the pass limit, write them now."""
        self._queued += size
        if self._queued >= _PASS_LIMIT:
            self.flush()

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._queued = 0
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn._flush()
            except Exception:
                # One broken socket must not stall the others in this batch.
                log.exception("websocket %s: write failed", conn.id)
                conn.abort(CloseCode.ABNORMAL, "write failed")


class Connection:
    """A connected client, as handlers and the manager see it.

    Attributes:
        id: A random UUID4 string, unique across the cluster.
        user: The identity returned by the verify hook, or ``None``.
        meta: Free-form metadata; seeded by the verify hook, yours to change.
        remote: The client's IP address as Sanic sees it.
        headers: The request headers listed in ``WS_KEEP_HEADERS``.
        worker: The name of the worker process that holds the socket.
        connected_at: Unix time of the upgrade.
        close_code, close_reason: Why it closed; ``None`` while open.
    """

    __slots__ = (
        "_close_timer",
        "_eof_pending",
        "_flusher",
        "_fragments",
        "_handler",
        "_handler_since",
        "_inbox_bytes",
        "_overran",
        "_pending",
        "_pending_bytes",
        "_ping_sent",
        "_proto",
        "_reading_paused",
        "_tokens",
        "_tokens_at",
        "_transport",
        "_unread",
        "_written",
        "close_code",
        "close_reason",
        "connected_at",
        "headers",
        "id",
        "inbox",
        "last_seen",
        "manager",
        "meta",
        "remote",
        "rooms",
        "state",
        "task",
        "user",
        "worker",
    )

    def __init__(
        self,
        *,
        id: str,
        manager: ConnectionManager,
        transport: asyncio.Transport,
        proto: ServerProtocol,
        flusher: Flusher,
        user: str | None,
        meta: dict[str, Any],
        remote: str,
        headers: dict[str, str],
        worker: str,
    ) -> None:
        self.id = id
        self.manager = manager
        self.user = user
        self.meta = meta
        self.remote = remote
        self.headers = headers
        self.worker = worker
        #: Rooms this connection is in (kept by the process that holds it).
        self.rooms: set[str] = set()
        self.connected_at = time.time()
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None
        self.close_reason: str | None = None
        # Messages (and the connect/disconnect markers) waiting for handlers.
        self.inbox: deque[object] = deque()
        # What the inbox holds, in bytes as WS_MAX_QUEUE_BYTES counts them.
        self._inbox_bytes = 0
        self.task: asyncio.Task[None] | None = None
        # When the handler now running started (loop time); 0.0: none runs.
        self._handler_since = 0.0
        self._handler: object = None
        # Set by the watchdog when that handler ran past WS_HANDLER_TIMEOUT.
        self._overran = False
        # Bytes unread in the kernel when the heartbeat last looked, while
        # reading is paused (-1: not looked at since the pause).
        self._unread = -1
        self.last_seen = 0.0
        self._transport = transport
        self._proto = proto
        self._flusher = flusher
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # The transport's own buffer size as of the last flush.
        self._written = 0
        self._ping_sent = 0.0
        self._fragments: PartialMessage | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._eof_pending = False
        self._reading_paused = False
        # WS_MESSAGE_RATE's token bucket: its level (negative: the client is
        # over the limit and owes) as of _tokens_at, refilled lazily. Without
        # a rate both hold the shared constant 0.0: no float per connection.
        limited = manager.config.message_rate is not None
        self._tokens = float(manager.config.message_burst) if limited else 0.0
        self._tokens_at = manager.clock() if limited else 0.0

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r} {self.state.value}>"

    # -- sending ---------------------------------------------------------

    async def send(self, type: str, data: Any = None) -> None:
        """Send one envelope to this connection (never waits on the socket)."""
        self.send_frame(encode_frame(OP_TEXT, encode_envelope(type, data)))

    async def send_raw(self, payload: str | bytes) -> None:
        """Send a raw text (``str``) or binary (``bytes``) frame."""
        self.send_frame(data_frame(*raw_body(payload)))

    def send_frame(self, frame: bytes) -> bool:
        """Queue an already-framed message; ``False`` if it was not accepted.

        Every data frame to one connection comes through here (broadcasts
        through :func:`fan_out`), so this is where ``messages_out`` counts.
        """
        if self.state is not ConnectionState.OPEN or not self._enqueue(frame):
            return False
        self.manager.counters.messages_out += 1
        return True

    def send_ping(self) -> bool:
        """Queue the heartbeat's ping (a control frame: not a message)."""
        return self.state is ConnectionState.OPEN and self._enqueue(PING_FRAME)

    @property
    def backlog(self) -> int:
        """Bytes accepted for this connection and not yet sent to the kernel."""
        return self._pending_bytes + self._transport.get_write_buffer_size()

    def _enqueue(self, frame: bytes) -> bool:
        limit = self.manager.config.max_backpressure
        queued = self._pending_bytes
        if (
            limit is not None
            # The backlog before this frame: a frame larger than the limit
            # still goes to a client that keeps up (issue 13, defect 1).
            and queued + self._written > limit
            # The cached transport size only shrinks between flushes:
            # re-read it before calling the client slow.
            and queued + self._transport.get_write_buffer_size() > limit
        ):
            if self.state is not ConnectionState.CLOSED:
                self.manager.counters.slow_closed += 1
                log.info(
                    "websocket %s closed: slow consumer (%d bytes unsent)",
                    self.id,
                    queued + self._transport.get_write_buffer_size(),
                )
            self.abort(CloseCode.POLICY_VIOLATION, "slow consumer")
            return False
        if not self._pending:
            self._flusher.mark(self)
        self._pending.append(frame)
        self._pending_bytes = queued + len(frame)
        return True

    def _flush(self) -> None:
        pending = self._pending
        if not pending or self.state is ConnectionState.CLOSED:
            return
        transport = self._transport
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        self._pending = []
        self._pending_bytes = 0
        self._written = transport.get_write_buffer_size()
        if self._eof_pending:
            # The peer answered our close (or failed the protocol): the
            # server closes TCP once the close frame is out.
            transport.close()

    def _send_control(self, chunks: list[bytes]) -> None:
        """Queue what the protocol object wants sent (pong, close, EOF)."""
        for chunk in chunks:
            if self._transport.is_closing():
                # Aborted (a ping flood past WS_MAX_BACKPRESSURE, say) or
                # closed: the rest has nowhere to go.
                return
            if chunk:
                self._enqueue(chunk)
            else:  # websockets' SEND_EOF marker
                self._eof_pending = True
                if not self._pending:
                    self._flusher.mark(self)
                    self._pending.append(b"")

    async def join(self, room: str) -> None:
        """Join a room (members of the room see a ``presence.join``)."""
        self.manager._join_local(self, room)

    async def leave(self, room: str) -> None:
        """Leave a room."""
        self.manager._leave_local(self, room)

    # -- closing ---------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; frames queued before it are sent first."""
        self.start_close(code, reason)

    def start_close(self, code: int, reason: str = "") -> None:
        if self.state is not ConnectionState.OPEN:
            return
        if self._proto.state is not State.OPEN:
            # The peer is already gone (EOF) or closing: nothing to handshake.
            self.abort(code, reason)
            return
        self._proto.send_close(code, reason)
        self._set_close(code, reason)
        self._send_control(self._proto.data_to_send())
        self._enter_closing()

    def _enter_closing(self) -> None:
        """Stop accepting data frames; give the peer ``WS_CLOSE_TIMEOUT`` to finish.

        Every way into CLOSING comes here, so no connection can stay half
        closed: a peer that stops reading is dropped when the timer fires.
        """
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.CLOSING
        if self._close_timer is None and self.state is ConnectionState.CLOSING:
            self._close_timer = asyncio.get_running_loop().call_later(
                self.manager.config.close_timeout, self._transport.abort
            )

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection for what the peer sent (RFC 6455, 7.1.7).

        The close frame follows what is already queued, then the server
        closes TCP; nothing more the peer sends is read.
        """
        self._fragments = None
        self._set_close(code, reason)
        self._enter_closing()
        self._proto.fail(code, reason)

    def abort(self, code: int, reason: str) -> None:
        """Drop the socket now, unsent frames included."""
        if self.state is ConnectionState.CLOSED:
            return
        self._set_close(code, reason)
        self.state = ConnectionState.CLOSING
        self._pending = []
        self._pending_bytes = 0
        self._transport.abort()

    def _set_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = int(code)
            self.close_reason = reason

    def _lost(self) -> None:
        """The socket is gone: record why, then let the manager clean up."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        proto = self._proto
        if self.close_code is None:
            if proto.close_rcvd is not None:
                self.close_code = proto.close_rcvd.code
                self.close_reason = proto.close_rcvd.reason
            elif proto.close_sent is not None:
                self.close_code = proto.close_sent.code
                self.close_reason = proto.close_sent.reason
            else:
                self.close_code = CloseCode.ABNORMAL
                self.close_reason = "connection lost"
        self._pending = []
        self._pending_bytes = 0
        self.manager._connection_lost(self)

    # -- flow control of incoming messages --------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self._unread = -1
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.state is not ConnectionState.CLOSED:
            self._reading_paused = False
            # Pongs may sit unread in the kernel while we paused: that
            # silence was ours, not the peer's.
            self.last_seen = self.manager.clock()
            self._ping_sent = 0.0
            self._transport.resume_reading()

    def _heard_while_paused(self) -> bool:
        """While reading is paused: has the peer sent anything since last asked?

        The heartbeat cannot read pongs from a paused socket, but the kernel
        counts what arrived unread (``FIONREAD``): a count that grew means
        the peer is alive. A full receive buffer cannot grow, and says
        nothing either way: that counts as alive too (the peer is blocked by
        us, not gone). Where the count cannot be read, the peer is presumed
        alive, as before.
        """
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            unread = int.from_bytes(raw, sys.byteorder, signed=True)
            full = unread >= sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        except (OSError, ValueError):
            return True
        grew = unread != self._unread
        self._unread = unread
        return grew or full

    # -- the message rate ---------------------------------------------------

    def _over_rate(self, *, control: bool = False) -> bool:
        """Charge one message to ``WS_MESSAGE_RATE``; True if it must be dropped.

        A ``control`` frame (ping, pong) is charged the same, and closes the
        connection past the same point, but is never answered with an error
        frame: a client that floods pings has no use for one.

        A dropped message is answered with a ``rate_limited`` error frame and
        still charged: the level goes negative, a debt that the refill repays
        before anything passes again, so a client that slows down recovers by
        itself. One that goes on until it owes ``WS_MESSAGE_BURST`` messages
        is closed with 1008 "rate limit".
        """
        config = self.manager.config
        rate = config.message_rate
        if rate is None:
            return False
        now = self.manager.clock()
        burst = config.message_burst
        level = take(self._tokens, self._tokens_at, now, rate, burst)
        self._tokens = level
        self._tokens_at = now
        if level >= 0:
            return False
        if level < -burst:
            self.start_close(CloseCode.POLICY_VIOLATION, "rate limit")
        elif not control:
            reason = f"over {rate:g} messages per second: message dropped"
            self.send_frame(
                encode_frame(OP_TEXT, error_envelope(ErrorCode.RATE_LIMITED, reason))
            )
        return True


def fan_out(
    conns: Iterable[Connection],
    frame: bytes,
    exclude: Collection[str],
    limit: int | None,
    flusher: Flusher,
) -> int:
    """Queue ``frame`` for every open connection of ``conns`` not in ``exclude``.

    The broadcast hot path, where the work per receiver is the cost: this is
    :meth:`Connection.send_frame` inlined, with the limit (``WS_MAX_BACKPRESSURE``)
    and the flusher read once for all. A connection that may be past the limit
    takes the full path, which drops it if it is. Returns how many took it.
    """
    queued = 0
    size = len(frame)
    is_open = ConnectionState.OPEN
    for conn in conns:
        if conn.state is not is_open or (exclude and conn.id in exclude):
            continue
        pending_bytes = conn._pending_bytes
        if limit is not None and pending_bytes + conn._written > limit:
            queued += conn._enqueue(frame)
            continue
        pending = conn._pending
        if not pending:
            flusher.mark(conn)
        pending.append(frame)
        conn._pending_bytes = pending_bytes + size
        queued += 1
    flusher.account(size * queued)
    return queued


class WireProtocol(asyncio.Protocol):
    """The asyncio protocol of an upgraded socket: bytes in, messages out."""

    __slots__ = ("_conn", "_deliver")

    def __init__(
        self, conn: Connection, deliver: Callable[[Connection, str | bytes], None]
    ) -> None:
        self._conn = conn
        self._deliver = deliver

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        conn.last_seen = conn.manager.clock()
        conn._ping_sent = 0.0
        proto = conn._proto
        proto.receive_data(data)
        self._process(proto)

    def eof_received(self) -> bool | None:
        proto = self._conn._proto
        proto.receive_eof()
        self._process(proto)
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._lost()

    def _process(self, proto: ServerProtocol) -> None:
        conn = self._conn
        for frame in proto.events_received():
            if not isinstance(frame, Frame):  # handshake events; none once OPEN
                continue
            if conn.state is not ConnectionState.OPEN:
                break  # failed or closing: what follows is not read
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                text = opcode is Opcode.TEXT
                kind = "text" if text else "binary"
                if kind not in conn.manager.config.accept:
                    # Refused at its first frame: nothing of it is buffered.
                    conn._fail(
                        CloseCode.UNSUPPORTED_DATA, f"{kind} frames are not accepted"
                    )
                elif frame.fin:
                    self._message(text, frame.data)
                else:
                    conn._fragments = PartialMessage(text)
                    self._fragment(frame)
            elif opcode is Opcode.CONT and conn._fragments is not None:
                self._fragment(frame)
            elif opcode is Opcode.CLOSE:
                conn._fragments = None  # a message the peer never finished
            elif (
                opcode is Opcode.PING or opcode is Opcode.PONG
            ) and conn.manager.config.message_rate is not None:
                # Control frames cost a parse and, for pings, a reply: a flood
                # of them spends the same budget as messages. The pong itself
                # is the protocol's, already queued.
                conn._over_rate(control=True)
        if proto.parser_exc is not None and proto.close_sent is not None:
            conn._set_close(proto.close_sent.code, proto.close_sent.reason)
        out = proto.data_to_send()
        if out:
            conn._send_control(out)
        if proto.state is not State.OPEN and conn.state is ConnectionState.OPEN:
            # The peer started the close or sent EOF, or the parser failed.
            conn._enter_closing()

    def _fragment(self, frame: Frame) -> None:
        conn = self._conn
        partial = conn._fragments
        assert partial is not None
        limit = fragment_limit(conn.manager.config.max_message_size)
        if limit is not None and partial.count >= limit:
            conn._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            return
        try:
            partial.add(frame.data, frame.fin)
        except UnicodeDecodeError:
            conn._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        if frame.fin:
            conn._fragments = None
            message = partial.message()
            self._message(isinstance(message, str), message)

    def _message(
        self, is_text: bool, data: str | bytes | bytearray | memoryview
    ) -> None:
        """One whole message: a frame's payload, or a fragmented message's
        (its text already decoded by :class:`PartialMessage`)."""
        conn = self._conn
        conn.manager.counters.messages_in += 1
        if conn._over_rate():
            return  # dropped before decoding: a flood costs as little as can be
        if isinstance(data, str):
            self._deliver(conn, data)
        elif not is_text:
            self._deliver(conn, bytes(data))
        else:
            try:
                text = str(data, "utf-8")
            except UnicodeDecodeError:
                conn._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                return
            self._deliver(conn, text)
