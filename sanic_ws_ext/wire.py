"""The socket engine: one upgraded socket, bytes in and frames out.

After the upgrade the extension takes the socket from Sanic
(``transport.set_protocol``) and hands it to a :class:`Wire`, which reads
frames with a :class:`~sanic_ws_ext.frames.FrameReader` and runs the closing
handshake itself. No task, lock or timer exists per idle connection. The
app never sees a ``Wire``: it holds a
:class:`~sanic_ws_ext.connection.Connection`, which delegates here.

Rules this module keeps:

- Every byte written to a socket goes through :meth:`Wire.enqueue`: data
  frames, pongs, pings and the close frame alike, so frames never interleave
  and order is the order of the calls.
- Writing never waits. Frames are appended to the wire's pending list and the
  :class:`Flusher` writes each wire's pending frames in one
  ``transport.write`` per event-loop pass.
- The transport never holds much: a flush gives it at most ``_WIRE_CHUNK``
  bytes, and none while it holds any (its high-water mark is 0: it pauses
  the wire until it has written everything).
  What the transport buffers, the event loop writes in its own I/O phase
  for every socket that turns writable, unbounded by the Flusher's budget:
  thousands of members each holding a 150 KB presence diff there made one
  loop pass of 130 ms (issue 14). Held in the pending list instead, the rest
  goes out through the Flusher, a budget per pass.
- Unsent bytes (pending plus the transport's buffer) are bounded by
  ``WS_MAX_BACKPRESSURE`` plus one frame: a frame is refused only when the
  backlog already passed the bound, so a client that keeps up can receive
  any single message, however large. A wire refused a frame is aborted at
  once with 1008 "slow consumer": its backlog is dropped, nothing else waits.
- Data frames are accepted only while the wire is OPEN; once a close frame
  is queued, further sends are ignored.
- What the engine needs from the rest of the server comes through one small
  object the manager hands it, :class:`WireHost`; it reads no other object's
  internals.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import io
import logging
import socket
import sys
import termios
from collections import deque
from collections.abc import Callable, Collection, Sequence
from enum import Enum
from typing import TYPE_CHECKING

from .deflate import Deflater, Inflater
from .envelope import error_envelope
from .errors import CloseCode, ErrorCode
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PING_FRAME,
    RSV1,
    FrameError,
    FrameReader,
    close_payload,
    encode_frame,
    parse_close,
)
from .limits import take

if TYPE_CHECKING:
    from .config import WSConfig
    from .connection import Connection
    from .stats import Counters

__all__ = [
    "ConnectionState",
    "Flusher",
    "Wire",
    "WireHost",
    "fan_out",
    "fragment_limit",
    "send_key",
]

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


class ConnectionState(Enum):
    OPEN = "open"
    #: A close frame is queued; waiting for the peer's reply or the timeout.
    CLOSING = "closing"
    CLOSED = "closed"


class WireHost:
    """What a :class:`Wire` needs from the server around it.

    The manager makes one and hands it to every wire it adopts: the wires
    report through it, not through the manager, whose every public name is
    for apps.
    """

    __slots__ = ("clock", "config", "counters", "lost", "message", "reader")

    def __init__(
        self,
        config: WSConfig,
        counters: Counters,
        *,
        message: Callable[[Connection, str | bytes], None],
        lost: Callable[[Connection], None],
    ) -> None:
        self.config = config
        self.counters = counters
        #: The loop's clock once the manager started (a test may put its own).
        self.clock: Callable[[], float] = _not_started
        #: A whole message arrived (text decoded, binary as bytes).
        self.message = message
        #: The socket is gone; the connection's close code and reason are final.
        self.lost = lost
        #: The reader lent to a wire for one ``data_received`` when it holds
        #: no part of a frame, as most do between messages: an idle
        #: connection has no reader of its own, one object less per
        #: connection for every full garbage collection (issue 14). A wire
        #: left with a partial frame keeps it, and a new one is made here.
        self.reader = FrameReader(config.max_message_size)


def _not_started() -> float:
    return 0.0


#: Bytes of frames queued in one event-loop pass after which the Flusher
#: writes at once instead of at the end of the pass (and a sender in a loop
#: yields at its next await), and bytes one flush writes before leaving the
#: other wires to the next pass. A handler that broadcasts in a loop would
#: otherwise hold every frame until it returns (no limit: p99 135 ms with
#: 1,000 clients and 200 broadcasts, bench/fanout.py), and one huge fan-out
#: (a presence diff to every member of a big room) would hold the loop.
#:
#: The limit grows with the wires waiting, _PER_WIRE each, from _PASS_MIN to
#: _PASS_MAX: what a flush costs is mostly one ``send`` per socket, so each
#: socket's write must carry many frames. With a fixed 2 MiB, 1,000 clients
#: got ~2 KB (20 frames) per write and the writes were 40% of the server's
#: CPU; 8 KB per write cut the CPU per delivered message from 0.67-0.87 to
#: 0.25-0.36 us in the same runs (docs/performance.md). 100 clients keep
#: 2 MiB: their writes are large already, and a pass stays short.
#:
#: 32 KiB per wire, not 8: a loopback write costs mostly its fixed part, so
#: 8 KiB writes made ~1 KB broadcasts to 1,000 clients one write per 8
#: frames (251,000 writes for 2 M deliveries, 0.68 M msg/s); 32 KiB gave
#: 2.9 M, and 100-byte fan-out 10.3 M against 4.5 M at half the CPU per
#: message. The price is the latency of a burst queued in one pass (p99 of
#: 1,000 broadcasts to 1,000 clients 20 against 13 ms): only a handler that
#: queues more than the limit in one go waits for it; other traffic is
#: written at the end of its loop pass, as before.
_PASS_MIN = 2 << 20
_PASS_MAX = 32 << 20
_PER_WIRE = 32 << 10

#: Bytes a scheduled pass (a callback of its own, the end of a loop pass)
#: writes at most, whatever the limit above; the rest goes in the next
#: passes, after the loop has polled its sockets. Loopback sends cost the TCP
#: path of both ends: a pass of 8 MiB (presence diffs of 180 KB to 1,700
#: members, queued by the tracker) was 54 ms of CPU in one loop tick, the
#: largest stall after a peer died (bench/scale.py, issue 14). A flush a
#: sender's own queuing set off (account) still writes the whole limit and
#: the writes that carry it (Flusher.budget, up to 12 MiB): it is that
#: sender's turn, and writing less there let a broadcasting loop queue
#: faster than it wrote (p99 33 -> 253 ms, bench/fanout.py).
_PASS_WRITE = 2 << 20

#: What one ``transport.write`` costs beyond its bytes, in bytes of the
#: pass budget: a send on loopback is a system call and the TCP path of both
#: ends, about 8 us on a loaded 2-core machine, while the bytes cost ~3 ns
#: each. Without it a pass of small presence diffs to 1,400 members was
#: 1,400 writes, 30 ms of CPU (bench/scale.py, issue 14); with it a
#: scheduled pass holds at most ~500 writes (_PASS_WRITE over this).
_WRITE_COST = 4 << 10

#: Bytes one flush hands one transport. The transport pauses us when the
#: kernel did not take all of it and we give it nothing more until it has
#: written the rest, so it never holds more than one chunk; the kernel takes
#: a chunk in one ``send`` while the client keeps up. Broadcasts of small
#: messages never reach it in a pass.
_WIRE_CHUNK = 64 << 10

#: Most bytes a run gathers by joining: no more than one flush hands a
#: transport, so a run of joined frames goes out in one write (a single
#: larger frame is a run of its own, written a chunk at a time).
_RUN_MAX = _WIRE_CHUNK


class Run:
    """The frames of consecutive broadcasts to the same wires, queued once.

    While a handler broadcasts in a loop, or one room's messages follow each
    other, every broadcast goes to the same receivers. The first one puts
    this object in each receiver's pending list; the next ones only append
    their frame here, and the flush joins the frames once and hands every
    member the same bytes: per receiver, a broadcast costs nothing but the
    write its pass makes anyway (issue 16: the work per receiver per message
    was most of our CPU per delivered message).

    The :class:`Flusher` holds the open run; anything else queued to any
    wire, a wire leaving OPEN, and every flush end it (:meth:`Flusher.end_run`),
    so a run's frames are always the last thing in its members' pending
    lists and order is kept.
    """

    __slots__ = (
        "_data",
        "exclude",
        "frames",
        "host",
        "members",
        "sent",
        "size",
        "source",
        "top",
        "variants",
    )

    def __init__(
        self, frame: bytes, source: Sequence[Wire], exclude: Collection[str]
    ) -> None:
        self.frames = [frame]
        self.size = len(frame)
        #: The size the members' ``_pending_bytes`` count (the first frame):
        #: the rest is added when the run ends.
        self.sent = self.size
        #: The receiver list the run was made for, and the excluded ids: a
        #: later broadcast joins the run when it has equal ones.
        self.source: Sequence[Wire] = source
        self.exclude: Collection[str] = exclude
        #: The wires holding this run (``source`` when nobody was excluded).
        self.members: Sequence[Wire] = source
        #: The largest backlog of a member before the run: a frame joins
        #: only if that member could take it (``WS_MAX_BACKPRESSURE``).
        self.top = 0
        #: With permessage-deflate: the frames as members with each window
        #: size get them, compressed once per frame (see Deflater).
        self.variants: dict[int, Variant] | None = None
        #: Where compressed frames are counted (while there are variants).
        self.host: WireHost | None = None
        self._data: bytes | None = None

    def release(self) -> None:
        """The run has ended: let go of its receiver lists. It stays in the
        pending lists of members that have not written yet (a stalled one
        may hold thousands of runs), which must not keep every receiver of
        every broadcast alive with it."""
        self.source = self.members = ()
        self.exclude = ()

    def data(self, bits: int = 0) -> bytes:
        """The frames as one bytes object, as a member with a ``bits``
        deflate window gets them (joined once; the run has ended)."""
        if bits and self.variants is not None:
            return self.variants[bits].data()
        data = self._data
        if data is None:
            data = self._data = _joined(self.frames)
            self.frames = []  # held once, joined
        return data

    def extra(self, bits: int) -> int:
        """Bytes gathered after the first frame, for a member with ``bits``."""
        if bits and self.variants is not None:
            variant = self.variants[bits]
            return variant.size - variant.sent
        return self.size - self.sent


class Variant:
    """A run's frames as the members with one deflate window size get them."""

    __slots__ = ("_data", "frames", "members", "sent", "size")

    def __init__(self, frame: bytes) -> None:
        self.frames = [frame]
        self.size = self.sent = len(frame)
        #: Members with this window (a compressed frame counts once for each).
        self.members = 0
        self._data: bytes | None = None

    def data(self) -> bytes:
        data = self._data
        if data is None:
            data = self._data = _joined(self.frames)
            self.frames = []
        return data


def _joined(frames: list[bytes]) -> bytes:
    return frames[0] if len(frames) == 1 else b"".join(frames)


Pending = list[bytes | memoryview | Run]


class Flusher:
    """Writes every wire's pending frames once per event-loop pass.

    One ``call_soon`` per pass for all connections, not one per connection:
    uWebSockets calls this corking. One callback writes at most
    the pass limit's bytes and leaves the other wires for the next pass, so
    a huge fan-out (a presence diff of 200 KB to 1,700 members is 340 MB)
    never holds the loop for more than a few milliseconds. A wire's frames
    are always written together and in order, and a wire waiting its turn
    gathers what is queued meanwhile.
    """

    __slots__ = (
        "_dirty",
        "_loop",
        "_paused",
        "_queued",
        "_resumed",
        "_scheduled",
        "_unyielded",
        "behind",
        "deflater",
        "deflating",
        "run",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: deque[Wire] = deque()
        self._scheduled = False
        self._queued = 0
        # Bytes queued since the event loop last ran one of our passes: a
        # sender past the pass limit yields at its next await (pace()).
        self._unyielded = 0
        # Wires whose transport holds bytes the kernel did not take, with the
        # loop time they paused: their readers are behind, or stalled.
        self._paused: dict[Wire, float] = {}
        self._resumed = asyncio.Event()
        #: Set by a send that left some wire past half of WS_MAX_BACKPRESSURE:
        #: the sender's next await paces (see pace()).
        self.behind = False
        #: With WS_COMPRESSION: compresses each frame once for every wire
        #: that negotiated permessage-deflate; how many open wires did.
        self.deflater: Deflater | None = None
        self.deflating = 0
        #: The shared run the next broadcast to the same wires may join.
        self.run: Run | None = None

    def end_run(self) -> None:
        """Close the open run: its members count the bytes it gathered."""
        run = self.run
        if run is None:
            return
        self.run = None
        if run.variants is not None:
            for wire in run.members:
                if wire._pending is not None:
                    wire._pending_bytes += run.extra(wire.deflate_bits)
        else:
            extra = run.size - run.sent
            if extra:
                for wire in run.members:
                    if wire._pending is not None:
                        wire._pending_bytes += extra
        run.release()

    def limit(self) -> int:
        """The pass limit: _PER_WIRE for each wire waiting, within bounds."""
        return min(_PASS_MAX, max(_PASS_MIN, len(self._dirty) * _PER_WIRE))

    def budget(self) -> int:
        """What a flush of the pass limit may write: its bytes, and the cost
        of the writes that carry them at _PER_WIRE each. Counting the writes
        against the limit alone left a third of 1,000 waiting wires to the
        next pass, a whole burst cycle later (fan-out p99 twice its p50)."""
        writes = min(len(self._dirty), _PASS_MAX // _PER_WIRE)
        return self.limit() + writes * _WRITE_COST

    def account(self, size: int) -> None:
        """Count ``size`` bytes queued; past the pass limit, write them now."""
        self._queued += size
        self._unyielded += size
        if self._queued >= _PASS_MIN and self._queued >= self.limit():
            self.flush(self.budget())

    def paused(self, wire: Wire) -> None:
        self._paused[wire] = self._loop.time()

    def resumed(self, wire: Wire) -> None:
        """``wire``'s transport wrote everything (or the wire is gone)."""
        if self._paused.pop(wire, None) is not None:
            self._resumed.set()

    def due(self) -> bool:
        """Whether a sender's next await must pace (:meth:`pace`): it queued
        more than the pass limit since the loop last ran, or left a
        receiver past half of ``WS_MAX_BACKPRESSURE``. Senders check it
        before awaiting pace(): most need not."""
        unyielded = self._unyielded
        return self.behind or (unyielded >= _PASS_MIN and unyielded >= self.limit())

    async def pace(self, limit: int | None, patience: float | None) -> None:
        """What an ``await`` on a send does: nothing, unless this sender queued
        more than the pass limit without letting the loop run, or left
        a receiver with more than half of ``limit`` unsent.

        Then it lets the loop run (sockets written, clients read), and waits
        while some reader that is reading holds more than half of ``limit``
        (``WS_MAX_BACKPRESSURE``) unsent: a handler broadcasting in a loop
        goes at the pace of its readers instead of closing them all 1008
        (issue 18). A reader whose socket took nothing for ``patience``
        seconds (``WS_DRAIN_TIMEOUT``) is not waited for: the sender goes
        on, and that reader passes the limit and is dropped, as before.
        """
        if not self.due():
            return
        await asyncio.sleep(0)
        self._unyielded = 0
        self.behind = False
        if limit is None or patience is None:
            return
        soft = limit // 2
        while True:
            if any(wire.backlog > soft for wire in self._dirty):
                # Behind on our own passes (a pass hands a socket 64 KiB at
                # most): let them run.
                await asyncio.sleep(0)
                continue
            now = self._loop.time()
            heavy = [
                since
                for wire, since in self._paused.items()
                if now - since < patience and wire.backlog > soft
            ]
            if not heavy:
                return
            self._resumed.clear()
            # Woken by any resume; at the latest when the longest-paused of
            # them stops counting as a reader.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._resumed.wait(), min(heavy) + patience - now
                )

    def mark(self, wire: Wire) -> None:
        self._dirty.append(wire)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        self._scheduled = False
        self._unyielded = 0
        self.flush(min(self.limit(), _PASS_WRITE))

    def flush(self, budget: int | None = None) -> None:
        """Write the dirty wires, up to ``budget`` (the pass limit by
        default); schedule the rest."""
        self._queued = 0
        if self.run is not None:
            self.end_run()  # what a member writes now, later frames must follow
        dirty = self._dirty
        if budget is None:
            budget = self.limit()
        while dirty and budget > 0:
            wire = dirty.popleft()
            try:
                budget -= wire._flush() + _WRITE_COST
            except Exception:
                # One broken socket must not stall the others in this batch.
                log.exception("websocket %s: write failed", wire.conn.id)
                wire.abort(CloseCode.ABNORMAL, "write failed")
        if dirty and not self._scheduled:
            # The rest in the next pass, after the loop has polled its sockets.
            self._scheduled = True
            self._loop.call_soon(self._pass)


class Wire(asyncio.Protocol):
    """The asyncio protocol of one upgraded socket, and its sending state."""

    __slots__ = (
        "_close_rcvd",
        "_close_sent",
        "_close_timer",
        "_eof_pending",
        "_flusher",
        "_fragments",
        "_host",
        "_inflater",
        "_keyed",
        "_pending",
        "_pending_bytes",
        "_reader",
        "_tokens",
        "_tokens_at",
        "_transport",
        "_unread",
        "_written",
        "close_code",
        "close_reason",
        "conn",
        "deflate_bits",
        "last_seen",
        "ping_sent",
        "reading_paused",
        "state",
        "writing_paused",
    )

    def __init__(
        self,
        host: WireHost,
        transport: asyncio.Transport,
        flusher: Flusher,
    ) -> None:
        #: The app's handle for this socket (set by the connection itself).
        self.conn: Connection
        self._host = host
        self._transport = transport
        # Its own reader only while a frame or a fragmented message is
        # partly in (see WireHost.reader).
        self._reader: FrameReader | None = None
        self._flusher = flusher
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: Loop time of the last frame received (the heartbeat reads it).
        self.last_seen = host.clock()
        #: Loop time of the heartbeat's unanswered ping, or 0.0.
        self.ping_sent = 0.0
        self.reading_paused = False
        # The transport pauses us as soon as the kernel leaves it anything
        # to hold, and resumes us once it has written all of it: it never
        # holds more than the rest of one chunk.
        transport.set_write_buffer_limits(high=0)
        #: The transport holds bytes the kernel did not take: nothing more
        #: is handed to it until it calls resume_writing.
        self.writing_paused = transport.get_write_buffer_size() > 0
        # Frames not yet handed to the transport; None while there are none
        # (most sockets, most of the time: one object less per connection
        # for every full garbage collection to walk).
        self._pending: Pending | None = None
        self._pending_bytes = 0
        # Keyed frames still in _pending: key -> index (None until one is).
        self._keyed: dict[str, int] | None = None
        # The transport's own buffer size as of the last flush.
        self._written = 0
        self._fragments: PartialMessage | None = None
        #: permessage-deflate's window for frames to this socket (0: off).
        self.deflate_bits = 0
        # The compressed message being inflated, while one is.
        self._inflater: Inflater | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # The close frames exchanged: (code, reason), None until then.
        self._close_rcvd: tuple[int, str] | None = None
        self._close_sent: tuple[int, str] | None = None
        # Close TCP once what is pending is written (the server closes first).
        self._eof_pending = False
        # Bytes unread in the kernel when the heartbeat last looked, while
        # reading is paused (-1: not looked at since the pause).
        self._unread = -1
        # WS_MESSAGE_RATE's token bucket: its level (negative: the client is
        # over the limit and owes) as of _tokens_at, refilled lazily. Without
        # a rate both hold the shared constant 0.0: no float per connection.
        config = host.config
        limited = config.message_rate is not None
        self._tokens = float(config.message_burst) if limited else 0.0
        self._tokens_at = host.clock() if limited else 0.0

    # -- sending ---------------------------------------------------------

    def send_frame(
        self, frame: bytes, volatile: bool = False, key: str | None = None
    ) -> bool:
        """Queue an already-framed message; ``False`` if no new frame was
        queued (refused, skipped as volatile, or replacing a keyed one).

        Every data frame to one socket comes through here (broadcasts through
        :func:`fan_out`), so this is where ``messages_out`` counts.
        """
        if volatile or key is not None:
            if not self.offer(frame, volatile, key):
                return False
        elif self.state is not ConnectionState.OPEN or not self._enqueue(
            self._deflated(frame) if self.deflate_bits else frame
        ):
            return False
        self._host.counters.messages_out += 1
        self._flusher.account(len(frame))
        return True

    def offer(self, frame: bytes, volatile: bool, key: str | None) -> int:
        """Queue a frame of a volatile or keyed send; 1 if it is a new one.

        Volatile: not queued (0) when this socket already has more than
        ``WS_VOLATILE_BACKLOG`` unsent, so it never adds to a slow client's
        way to 1008. Keyed: replaces the unsent frame of the same key, in its
        place (0); a key's frames are never both sent unless the first one
        was already written. Counts ``volatile_skipped`` and ``replaced``;
        the caller counts ``messages_out`` and accounts the bytes.
        """
        if self.state is not ConnectionState.OPEN:
            return 0
        if self.deflate_bits:
            frame = self._deflated(frame)
        host = self._host
        if volatile and self.backlog > host.config.volatile_backlog:
            host.counters.volatile_skipped += 1
            return 0
        keyed = self._keyed
        if key is not None and keyed is not None:
            at = keyed.get(key)
            if at is not None:
                pending = self._pending
                assert pending is not None  # keyed frames are pending ones
                if self._flusher.run is not None:
                    # The open run's members were checked with the old size.
                    self._flusher.end_run()
                replaced = pending[at]
                assert not isinstance(replaced, Run)  # each queued on its own
                self._pending_bytes += len(frame) - len(replaced)
                pending[at] = frame
                host.counters.replaced += 1
                return 0
        if not self._enqueue(frame):
            return 0
        if key is not None:
            if keyed is None:
                keyed = self._keyed = {}
            keyed[key] = len(self._pending or ()) - 1
        return 1

    def enable_deflate(self, bits: int) -> None:
        """permessage-deflate was negotiated, with a ``bits`` window for the
        server's frames (see :mod:`sanic_ws_ext.deflate`)."""
        assert self._flusher.deflater is not None
        self.deflate_bits = bits
        self._flusher.deflating += 1

    def _deflated(self, frame: bytes) -> bytes:
        deflater = self._flusher.deflater
        assert deflater is not None
        out = deflater.frame(frame, self.deflate_bits)
        if out is not frame:
            self._host.counters.compressed_out += 1
        return out

    def send_ping(self) -> bool:
        """Queue the heartbeat's ping (a control frame: not a message)."""
        return self.state is ConnectionState.OPEN and self._enqueue(PING_FRAME)

    @property
    def backlog(self) -> int:
        """Bytes accepted for this socket and not yet sent to the kernel."""
        if self._flusher.run is not None:
            self._flusher.end_run()  # its members count what it gathered
        return self._pending_bytes + self._transport.get_write_buffer_size()

    def _enqueue(self, frame: bytes) -> bool:
        if self._flusher.run is not None:
            self._flusher.end_run()  # this frame must follow the run's
        limit = self._host.config.max_backpressure
        queued = self._pending_bytes
        if (
            limit is not None
            # The backlog before this frame: a frame larger than the limit
            # still goes to a client that keeps up.
            and queued + self._written > limit
            # The cached transport size only shrinks between flushes:
            # re-read it before calling the client slow.
            and queued + self._transport.get_write_buffer_size() > limit
        ):
            if self.state is not ConnectionState.CLOSED:
                self._host.counters.slow_closed += 1
                log.info(
                    "websocket %s closed: slow consumer (%d bytes unsent)",
                    self.conn.id,
                    queued + self._transport.get_write_buffer_size(),
                )
            self.abort(CloseCode.POLICY_VIOLATION, "slow consumer")
            return False
        pending = self._pending
        if pending is None:
            self._flusher.mark(self)
            self._pending = [frame]
        else:
            pending.append(frame)
        self._pending_bytes = queued + len(frame)
        if limit is not None and queued + self._written > limit >> 1:
            self._flusher.behind = True
        return True

    def _flush(self) -> int:
        """Hand the transport up to ``_WIRE_CHUNK`` pending bytes; how many."""
        pending = self._pending
        if not pending or self.writing_paused or self.state is ConnectionState.CLOSED:
            # Paused: resume_writing marks this wire again.
            return 0
        transport = self._transport
        bits = self.deflate_bits
        data: bytes | memoryview
        if len(pending) == 1:
            first = pending[0]
            # A run: the same bytes for every member, joined once.
            data = first.data(bits) if isinstance(first, Run) else first
        else:
            # What one write takes, not the whole backlog: joining all of
            # it to write a chunk copied a slow reader's megabytes on every
            # pass (a presence diff of 180 KB behind a small frame: 68% of
            # a survivor's samples after a peer died, bench/scale.py).
            parts: list[bytes | memoryview] = []
            size = 0
            for p in pending:
                part = p.data(bits) if isinstance(p, Run) else p
                parts.append(part)
                size += len(part)
                if size >= _WIRE_CHUNK:
                    break
            if len(parts) < len(pending) or size > _WIRE_CHUNK:
                return self._write_chunk(parts, pending[len(parts) :])
            data = b"".join(parts)
        if len(data) > _WIRE_CHUNK:
            return self._write_chunk([data], [])
        transport.write(data)
        self._pending = None
        self._pending_bytes = 0
        self._keyed = None
        self._written = transport.get_write_buffer_size()
        if self._eof_pending:
            # The peer answered our close (or failed the protocol): the
            # server closes TCP once the close frame is out.
            transport.close()
        return len(data)

    def _write_chunk(self, parts: list[bytes | memoryview], later: Pending) -> int:
        """Write ``_WIRE_CHUNK`` bytes from ``parts`` (the first pending
        entries, more than that in all); keep the rest, then ``later``."""
        last = memoryview(parts[-1])
        cut = len(last) - (sum(len(p) for p in parts) - _WIRE_CHUNK)
        if len(parts) == 1:
            chunk: bytes | memoryview = last[:cut]  # a view: no copy
        else:
            chunk = b"".join([*parts[:-1], last[:cut]])
        transport = self._transport
        transport.write(chunk)
        rest: Pending = [last[cut:]] if cut < len(last) else []
        self._pending = pending = rest + later
        self._keyed = None
        self._pending_bytes = sum(
            len(p.data(self.deflate_bits)) if isinstance(p, Run) else len(p)
            for p in pending
        )
        self._written = transport.get_write_buffer_size()
        if not self.writing_paused:
            self._flusher.mark(self)
        return _WIRE_CHUNK

    # -- flow control of outgoing bytes (the transport calls these) --------

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._flusher.paused(self)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._flusher.resumed(self)
        if self._pending and self.state is not ConnectionState.CLOSED:
            self._flusher.mark(self)

    async def pace(self) -> None:
        """What ``await conn.send(...)`` does after queuing: :meth:`Flusher.pace`."""
        config = self._host.config
        await self._flusher.pace(config.max_backpressure, config.drain_timeout)

    def _send_close(self, payload: bytes, code: int, reason: str) -> None:
        """Queue our close frame (once); nothing but it follows."""
        if self._close_sent is None and not self._transport.is_closing():
            self._close_sent = (code, reason)
            self._enqueue(encode_frame(OP_CLOSE, payload))

    def _close_tcp(self) -> None:
        """Close TCP once what is pending is written."""
        self._eof_pending = True
        if not self._pending and not self._transport.is_closing():
            # Nothing pending: an empty write makes the flush close it.
            self._flusher.mark(self)
            self._pending = [b""]

    # -- closing ---------------------------------------------------------

    def start_close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; frames queued before it are sent first."""
        if self.state is not ConnectionState.OPEN:
            return
        if self._close_rcvd is not None or self._eof_pending:
            # The peer is already gone (EOF) or closing: nothing to handshake.
            self.abort(code, reason)
            return
        self._set_close(code, reason)
        self._send_close(close_payload(code, reason), code, reason)
        self._enter_closing()

    def _enter_closing(self) -> None:
        """Stop accepting data frames; give the peer ``WS_CLOSE_TIMEOUT`` to finish.

        Every way into CLOSING comes here, so no socket can stay half
        closed: a peer that stops reading is dropped when the timer fires.
        """
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.CLOSING
            if self._flusher.run is not None:
                self._flusher.end_run()  # data frames stop here
        if self._close_timer is None and self.state is ConnectionState.CLOSING:
            self._close_timer = asyncio.get_running_loop().call_later(
                self._host.config.close_timeout, self._transport.abort
            )

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection for what the peer sent (RFC 6455, 7.1.7).

        The close frame follows what is already queued, then the server
        closes TCP; nothing more the peer sends is read.
        """
        self._fragments = None
        self._inflater = None
        self._set_close(code, reason)
        self._enter_closing()
        self._send_close(close_payload(code, reason), code, reason)
        self._close_tcp()

    def abort(self, code: int, reason: str) -> None:
        """Drop the socket now, unsent frames included."""
        if self.state is ConnectionState.CLOSED:
            return
        self._set_close(code, reason)
        self.state = ConnectionState.CLOSING
        if self._flusher.run is not None:
            self._flusher.end_run()  # its members must all be open
        self._pending = None
        self._pending_bytes = 0
        self._keyed = None
        self._transport.abort()

    def _set_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = int(code)
            self.close_reason = reason

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: record why, then tell the host."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.close_code is None:
            if self._close_rcvd is not None:
                self.close_code, self.close_reason = self._close_rcvd
            elif self._close_sent is not None:
                self.close_code, self.close_reason = self._close_sent
            else:
                self.close_code = CloseCode.ABNORMAL
                self.close_reason = "connection lost"
        if self._flusher.run is not None:
            self._flusher.end_run()
        self._pending = None
        self._pending_bytes = 0
        self._keyed = None
        self._inflater = None
        if self.deflate_bits:
            self._flusher.deflating -= 1
        self._flusher.resumed(self)  # never waited for again
        conn = self.conn
        # The engine lets go of the app's handle, which keeps the engine:
        # no cycle, so a closed connection is freed by reference counting
        # alone, even once frozen out of the collector's sight (collector.py).
        # Only code that checks for an open wire first reads ``conn``.
        del self.conn
        self._host.lost(conn)

    # -- flow control of incoming messages --------------------------------

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self._unread = -1
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.state is not ConnectionState.CLOSED:
            self.reading_paused = False
            # Pongs may sit unread in the kernel while we paused: that
            # silence was ours, not the peer's.
            self.last_seen = self._host.clock()
            self.ping_sent = 0.0
            self._transport.resume_reading()

    def heard_while_paused(self) -> bool:
        """While reading is paused: has the peer sent anything since last asked?

        The heartbeat cannot read pongs from a paused socket, but the kernel
        counts what arrived unread (``FIONREAD``): a count that grew means
        the peer is alive. A full receive buffer cannot grow, and says
        nothing either way: that counts as alive too (the peer is blocked by
        us, not gone). Where the count cannot be read, the peer is presumed
        alive, as before.
        """
        if self._transport.get_extra_info("ssl_object") is not None:
            # TLS in this process: the SSL layer keeps reading into its own
            # buffer while we are paused, so the kernel's count says nothing.
            return True
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
        config = self._host.config
        rate = config.message_rate
        if rate is None:
            return False
        now = self._host.clock()
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

    # -- receiving -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_seen = self._host.clock()
        self.ping_sent = 0.0
        if self._eof_pending or self._close_rcvd is not None:
            return  # closed by the peer, or failed: nothing more is read
        reader = self._reader
        if reader is None:
            reader = self._host.reader
            reader.compressed = self.deflate_bits != 0  # RSV1 allowed or not
            frames = reader.feed(data)
            if not reader.idle:
                # Part of a frame (or of a fragmented message) is in: keep it.
                self._reader = reader
                self._host.reader = FrameReader(self._host.config.max_message_size)
        else:
            frames = reader.feed(data)
            if reader.idle:
                self._reader = None
        self._process(frames)
        error = reader.error
        if error is not None and self._close_rcvd is None:
            self._fail(error.code, error.reason)

    def eof_received(self) -> bool | None:
        # The peer closed TCP: with a close frame before it or not, the
        # connection is over; the transport closes itself.
        self._enter_closing()
        return None

    def _process(self, frames: list[tuple[int, bool, bytes]]) -> None:
        config = self._host.config
        for opcode, fin, payload in frames:
            compressed = opcode & RSV1
            if compressed:
                opcode ^= RSV1
            if opcode == OP_CLOSE:
                self._fragments = None  # a message the peer never finished
                self._peer_closed(payload)
                return  # nothing after a close is read
            if self.state is not ConnectionState.OPEN:
                continue  # failed or closing: only the peer's close matters
            if opcode in (OP_TEXT, OP_BINARY):
                text = opcode == OP_TEXT
                kind = "text" if text else "binary"
                if kind not in config.accept:
                    # Refused at its first frame: nothing of it is buffered.
                    self._fail(
                        CloseCode.UNSUPPORTED_DATA, f"{kind} frames are not accepted"
                    )
                elif fin:
                    if compressed:
                        self._host.counters.compressed_in += 1
                        try:
                            payload = Inflater(config.max_message_size).feed(
                                payload, True
                            )
                        except FrameError as exc:
                            self._fail(exc.code, exc.reason)
                            return
                    self._message(text, payload)
                else:
                    self._fragments = PartialMessage(text)
                    if compressed:
                        self._host.counters.compressed_in += 1
                        self._inflater = Inflater(config.max_message_size)
                    self._fragment(payload, fin)
            elif opcode == OP_CONT:
                if self._fragments is not None:
                    self._fragment(payload, fin)
            else:  # ping or pong
                if opcode == OP_PING and not self._transport.is_closing():
                    self._enqueue(encode_frame(OP_PONG, payload))
                if config.message_rate is not None:
                    # Control frames cost a parse and, for pings, a reply: a
                    # flood of them spends the same budget as messages.
                    self._over_rate(control=True)

    def _peer_closed(self, payload: bytes) -> None:
        """The peer's close frame: echo it (unless ours went first), close TCP."""
        try:
            code, reason = parse_close(payload)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        self._close_rcvd = (code, reason)
        # RFC 6455 5.5.1: answer with a close frame, echoing its code.
        self._send_close(payload[:2], code, reason)
        self._enter_closing()
        self._close_tcp()

    def _fragment(self, payload: bytes, fin: bool) -> None:
        partial = self._fragments
        assert partial is not None
        limit = fragment_limit(self._host.config.max_message_size)
        if limit is not None and partial.count >= limit:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            return
        inflater = self._inflater
        if inflater is not None:
            try:
                payload = inflater.feed(payload, fin)
            except FrameError as exc:
                self._fail(exc.code, exc.reason)
                return
            if fin:
                self._inflater = None
        try:
            partial.add(payload, fin)
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        if fin:
            self._fragments = None
            message = partial.message()
            self._message(isinstance(message, str), message)

    def _message(
        self, is_text: bool, data: str | bytes | bytearray | memoryview
    ) -> None:
        """One whole message: a frame's payload, or a fragmented message's
        (its text already decoded by :class:`PartialMessage`)."""
        host = self._host
        host.counters.messages_in += 1
        if self._over_rate():
            return  # dropped before decoding: a flood costs as little as can be
        if isinstance(data, str):
            host.message(self.conn, data)
        elif not is_text:
            host.message(self.conn, bytes(data))
        else:
            try:
                text = str(data, "utf-8")
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                return
            host.message(self.conn, text)


#: Longest key of a keyed send, in characters.
MAX_KEY = 200


def send_key(key: str | None) -> str | None:
    """``key`` of a send, checked: a string of 1 to ``MAX_KEY`` characters."""
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY):
        raise ValueError(f"key must be a string of 1 to {MAX_KEY} characters")
    return key


def fan_out(
    wires: Sequence[Wire],
    frame: bytes,
    exclude: Collection[str],
    limit: int | None,
    flusher: Flusher,
    *,
    account: bool = True,
    volatile: bool = False,
    key: str | None = None,
) -> int:
    """Queue ``frame`` for every open wire of ``wires`` whose id is not in ``exclude``.

    The broadcast hot path, where the work per receiver is the cost: this is
    :meth:`Wire.send_frame` inlined, with the limit (``WS_MAX_BACKPRESSURE``)
    and the flusher read once for all. A wire that may be past the limit
    takes the full path, which drops it if it is. Returns how many took it.

    A broadcast to the same wires (and exclusions) as the one before, with
    nothing else queued since, joins that one's :class:`Run`: no work per
    receiver at all. A frame joins only if the run's fullest member (its
    backlog when the run started, plus the run) could take it, as the
    per-receiver path decides; a run holds at most ``_RUN_MAX``.

    ``account=False``: leave the writing to the flusher's next pass, however
    much was queued (for a caller that is no handler's loop and has work of
    its own in this pass, the presence tracker).
    """
    size = len(frame)
    if not exclude:
        exclude = ()  # frozenset() and () alike: the same receivers
    run = flusher.run
    if run is not None:
        # What the fullest member holds before this frame, as the per-wire
        # path would see it: past the limit, that path drops it.
        backlog = run.top + run.size
        if (
            run.size + size <= _RUN_MAX
            and (limit is None or backlog <= limit)
            and not volatile
            and key is None
            and exclude == run.exclude
            # The index's receiver tuple is the same object until they
            # change; other callers' lists compare element by element.
            and (wires is run.source or wires == run.source)
        ):
            if limit is not None and backlog > limit >> 1:
                flusher.behind = True
            run.frames.append(frame)
            run.size += size
            if run.variants is not None:
                _join_variants(run, frame, flusher)
            queued = len(run.members)
            if account:
                flusher.account(size * queued)
            return queued
        flusher.end_run()
    queued = 0
    if volatile or key is not None:
        # Not the hot path: each receiver decides (Wire.offer), and gets
        # the frame compressed if it negotiated it (once for all of them).
        for wire in wires:
            if wire.state is ConnectionState.OPEN and not (
                exclude and wire.conn.id in exclude
            ):
                queued += wire.offer(frame, volatile, key)
        if account:
            flusher.account(size * queued)
        return queued
    is_open = ConnectionState.OPEN
    # Past half of the limit, the sender is told to pace (Flusher.pace).
    soft = limit >> 1 if limit is not None else 0
    # With permessage-deflate on some wire of this process: the frame is
    # compressed once (per window size, by the Deflater), before the loop
    # needs it; each wire that agreed to it gets the compressed bytes.
    deflater = flusher.deflater if flusher.deflating else None
    # Each receiver gets a new run: the next broadcast to them may join.
    run = Run(frame, wires, exclude)
    members: list[Wire] | None = [] if exclude else None
    whole = True  # every receiver took the run, not a frame of its own
    top = 0  # the largest backlog among them
    host: WireHost | None = None  # set once a member compresses
    for wire in wires:
        if wire.state is not is_open or (exclude and wire.conn.id in exclude):
            continue
        out = frame
        if deflater is not None and wire.deflate_bits:
            out = deflater.frame(frame, wire.deflate_bits)
        pending_bytes = wire._pending_bytes
        backlog = pending_bytes + wire._written
        if limit is not None and backlog > soft:
            flusher.behind = True
            if backlog > limit:
                queued += wire._enqueue(out)
                whole = False
                continue
        if wire.deflate_bits and deflater is not None:
            host = _add_variant(run, wire, out)
        if backlog > top:
            top = backlog
        pending = wire._pending
        if pending is None:
            flusher.mark(wire)
            wire._pending = [run]
        else:
            pending.append(run)
        wire._pending_bytes = pending_bytes + len(out)
        if members is not None:
            members.append(wire)
        queued += 1
    if host is not None and run.variants is not None:
        run.host = host
        host.counters.compressed_out += sum(
            v.members for v in run.variants.values() if v.frames[0] is not frame
        )
    if whole and queued:
        if members is not None:
            run.members = members
        elif queued != len(wires):
            whole = False  # a receiver not open: not one to append to
        if whole:
            run.top = top
            flusher.run = run
    if flusher.run is not run:
        run.release()  # nothing will join it
    if account:
        flusher.account(size * queued)
    return queued


def _add_variant(run: Run, wire: Wire, out: bytes) -> WireHost:
    """``wire``, with a deflate window, gets the run's first frame as ``out``
    (compressed, or the frame itself if too small to gain)."""
    variants = run.variants
    if variants is None:
        variants = run.variants = {}
    variant = variants.get(wire.deflate_bits)
    if variant is None:
        variant = variants[wire.deflate_bits] = Variant(out)
    variant.members += 1
    return wire._host


def _join_variants(run: Run, frame: bytes, flusher: Flusher) -> None:
    """A frame joins ``run``: compressed once for each window size in it."""
    deflater = flusher.deflater
    assert deflater is not None and run.variants is not None
    compressed = 0
    for bits, variant in run.variants.items():
        out = deflater.frame(frame, bits)
        variant.frames.append(out)
        variant.size += len(out)
        if out is not frame:
            compressed += variant.members
    if compressed and run.host is not None:
        run.host.counters.compressed_out += compressed
