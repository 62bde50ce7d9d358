"""Delivery between the workers of one machine, with no external service.

The main process (``main_process_start``) makes two inboxes per worker slot,
handed to every worker on ``app.shared_ctx`` (Sanic pickles it into each
process it spawns, restarted ones included, so all of them hold the same
kernel sockets). A worker reads its slot's current inbox with
``loop.add_reader``. Two transports, one protocol on top:

- ``seqpacket`` (Linux): each inbox is a ``socketpair(AF_UNIX,
  SOCK_SEQPACKET)``; every worker writes its datagrams to it. The kernel keeps
  each datagram whole, so many writers never mix.
- ``stream`` (where seqpacket pairs cannot be made: macOS): each inbox is a
  ``SOCK_DGRAM`` pair that carries only file descriptors. A sender makes a
  private ``socketpair(AF_UNIX, SOCK_STREAM)`` per receiving process and
  passes the read end through that inbox (``SCM_RIGHTS``). Each stream has
  one writer and one reader, so partial writes (which a stream allows)
  cannot interleave with another writer's; datagrams travel on it framed by
  their length. A sender that exits or is killed closes its end: the reader
  sees EOF and drops a record cut short.

Why this design (docs/architecture.md has the measurements): per-worker
multiprocessing queues deadlock forever after a worker is killed while
holding a queue's lock; a hub process is a single point of failure that Sanic
does not restart. Kernel sockets have no lock a dying process can hold and
preserve each sender's order. Writes are coalesced: all ops for one slot in
an event-loop pass go out in datagrams of at most 32 KiB.

Rules this module keeps:

- Two inboxes per slot, and ``current[slot]`` (shared memory) counts the
  slot's lives: the live worker reads inbox ``life & 1``. A starting worker
  takes the other one and empties it of stale ops (or streams) first, so the
  process it replaces (still shutting down) never takes ops meant for the
  new one. The first worker of a slot replaces nobody: it reads the inbox
  written to until then (``_UNREAD``), so a question sent to it while it was
  starting (a history room's sequencer asked for a replay) is answered, not
  lost. A sender compares lives, not inboxes: a peer that restarted twice
  while we sent it nothing is back on the same inbox, yet our backlog and
  stream were for a dead process.
- Sending never blocks: a full inbox or stream (a dead or stuck worker) keeps
  ops in a bounded per-slot backlog retried when writable; past the bound
  they are dropped and counted. The unsent rest of a record a stream took in
  part is always kept, and sent before anything else.
- No silent holes: after any loss for a peer (its backlog overflowed, or a
  write failed with anything but "would block"), everything for it is
  dropped and counted until the peer is re-synced (``events.gap``), so a peer
  never gets later ops past a missing one without a SYNC in between.
- Datagrams from one sender arrive in order; ops larger than a datagram are
  cut into fragments that the receiver joins per sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as MPConnection
from typing import Any

from . import NO_EVENTS, DeliveryEvents, LinkState, Op
from .wire import apply_records, encode_op, frame_record, pack_records

__all__ = [
    "TRANSPORTS",
    "RelayInboxes",
    "WorkerRelay",
    "choose_transport",
    "inbox_of",
    "make_inboxes",
    "slot_of",
    "transport_of",
]

log = logging.getLogger("sanic.root.sanic_ws_ext.relay")

DATAGRAM = 32 * 1024
_HEAD = struct.Struct("!BHI")  # kind, sender slot, sender's life (random per process)
_WHOLE, _FIRST, _MORE, _LAST = 0, 1, 2, 3
_READS_PER_WAKEUP = 256
#: ``current[slot]`` before any worker of the slot started: ops go to inbox
#: 0 (``current & 1``), and the first worker (life 0) reads them.
_UNREAD = -2
#: Lives are counted modulo this (``current`` holds signed bytes); each
#: restart flips the inbox.
_LIVES = 128
#: The ways between workers, in the order "auto" tries them.
TRANSPORTS = ("seqpacket", "stream")
# Stream transport: a datagram's length before it; the hello that comes with
# a stream's read end (sender slot, sender's life); the buffer of one stream
# (one per sender and receiver: smaller than a shared inbox's); reads.
_FRAME = struct.Struct("!I")
_HELLO = struct.Struct("!HI")
_STREAM_BUFFER = 1 << 20
_STREAM_READ = 256 * 1024
_STREAM_READS_PER_WAKEUP = 16
# How often to retry handing a stream to a control inbox that is full.
_HANDOVER_RETRY = 0.05
# After a failed write, the first recovery is at once; if writes keep failing
# with nothing getting through, the next ones back off from 50 ms to 2 s.
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0
# Errors meaning the peer's end is closed: expected while a worker restarts.
_PEER_GONE = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED}
)
# A control inbox that cannot take a message now (macOS says ENOBUFS).
_CONTROL_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})

# With the Redis backplane, process names carry their node: "<node>/<worker>".
_WORKER_NAME = re.compile(r"^(?:[^/]*/)?Sanic-Server-(\d+)-\d+$")


def slot_of(worker_name: str) -> int | None:
    """The slot of a Sanic server worker (``[<node>/]Sanic-Server-<slot>-<n>``)."""
    match = _WORKER_NAME.match(worker_name)
    return int(match.group(1)) if match else None


RelayInboxes = tuple[tuple[MPConnection, ...], tuple[MPConnection, ...], Any]


def _probe_seqpacket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        b.send(b"x")
        a.recv(1)


def _probe_stream() -> None:
    control_read, control_write = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with control_read, control_write, ours, theirs:
        socket.send_fds(control_write, [b"x"], [theirs.fileno()])
        _, fds, _, _ = socket.recv_fds(control_read, 1, 1)
        for fd in fds:
            os.close(fd)
        if len(fds) != 1:
            raise OSError("file descriptors do not pass over Unix sockets")


_PROBES = {"seqpacket": _probe_seqpacket, "stream": _probe_stream}


def choose_transport(wanted: str = "auto") -> str:
    """The transport to use on this system: ``wanted``, or for ``"auto"`` the
    first of :data:`TRANSPORTS` that works.

    Each is tried for real (a socket pair made and used), since a constant
    can exist where the call fails (``SOCK_SEQPACKET`` on macOS). Raises
    :class:`OSError` naming each failure when none works.
    """
    names = TRANSPORTS if wanted == "auto" else (wanted,)
    problems: list[str] = []
    for name in names:
        try:
            _PROBES[name]()
        except (OSError, AttributeError) as exc:  # AttributeError: no such call
            problems.append(f"{name}: {exc}")
        else:
            return name
    raise OSError(f"no relay transport works here ({'; '.join(problems)})")


def make_inboxes(slots: int, transport: str = "auto") -> RelayInboxes:
    """Create the sockets and the ``current`` array (in the main process).

    Returns ``(read_ends, write_ends, current)``, indexed ``slot * 2 + half``
    for the ends, picklable into spawned workers. ``transport``: one of
    :data:`TRANSPORTS`, or ``"auto"`` (see :func:`choose_transport`).
    """
    from multiprocessing import get_context

    if transport == "auto":
        transport = choose_transport()
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown relay transport {transport!r}")
    seqpacket = transport == "seqpacket"
    # Room for a burst while a worker is busy or restarting; a control inbox
    # (stream transport) carries only a small message per stream.
    kind = socket.SOCK_SEQPACKET if seqpacket else socket.SOCK_DGRAM
    size = 4 << 20 if seqpacket else 256 << 10
    reads: list[MPConnection] = []
    writes: list[MPConnection] = []
    for _ in range(slots * 2):
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        with a, b:
            for sock in (a, b):
                for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                    with contextlib.suppress(OSError):  # a hint; the OS may cap it
                        sock.setsockopt(socket.SOL_SOCKET, option, size)
            reads.append(MPConnection(os.dup(a.fileno())))
            writes.append(MPConnection(os.dup(b.fileno())))
    current = get_context("spawn").RawArray("b", [_UNREAD] * slots)
    return tuple(reads), tuple(writes), current


def _index(slot: int, life: int) -> int:
    """The inbox (``slot * 2 + half``) that life ``life`` of ``slot`` reads."""
    return slot * 2 + (life & 1)


def inbox_of(current: Any, slot: int) -> int:
    """The index of the inbox ``slot``'s worker reads (``current``: the
    shared array of :func:`make_inboxes`)."""
    return _index(slot, int(current[slot]))


def transport_of(inboxes: RelayInboxes) -> str:
    """Which transport ``inboxes`` were made for: their sockets say."""
    with socket.socket(fileno=os.dup(inboxes[0][0].fileno())) as sock:
        return "stream" if sock.type == socket.SOCK_DGRAM else "seqpacket"


class _InStream:
    """A stream from one sender process, as its reader holds it."""

    __slots__ = ("buffer", "sender", "sock")

    def __init__(self, sock: socket.socket, sender: tuple[int, int]) -> None:
        self.sock = sock
        self.sender = sender  # (slot, life)
        self.buffer = bytearray()  # bytes of a record not complete yet


class WorkerRelay:
    """The delivery backend between ``sanic --workers N`` workers."""

    name = "relay"
    clustered = True
    link_state: LinkState | None = None

    def __init__(
        self,
        inboxes: RelayInboxes,
        worker: str,
        *,
        max_backlog: int = 64 << 20,
    ) -> None:
        reads, writes, current = inboxes
        slot = slot_of(worker)
        if slot is None or slot * 2 + 1 >= len(reads):
            raise ValueError(f"worker {worker!r} has no relay slot")
        self.slot = slot
        self.slots = len(reads) // 2
        #: "seqpacket" or "stream" (see :data:`TRANSPORTS`).
        self.transport = transport_of(inboxes)
        self._stream = self.transport == "stream"
        self._reads = reads
        self._writes = writes
        self._current = current
        self._max_backlog = max_backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._apply: Callable[[Op], None] | None = None
        self._inbox: socket.socket | None = None
        # Framed records in the order delivered, each with its slot (-1: all).
        self._out: list[tuple[bytes, int]] = []
        self._directed = False
        self._backlog: list[deque[bytes]] = [deque() for _ in range(self.slots)]
        self._backlog_bytes = [0] * self.slots
        # Which life of each slot our backlog and writer are for (None: none
        # yet); its inbox is _inbox_for(slot).
        self._backlog_life: list[int | None] = [None] * self.slots
        self._overflowed = [False] * self.slots
        # Per slot: the fd watched for writability, the pending recovery after
        # a failed write, and how many recoveries in a row found writes failing.
        self._watching: list[int | None] = [None] * self.slots
        self._recovery: list[asyncio.Handle | None] = [None] * self.slots
        self._failures = [0] * self.slots
        # Per inbox (slot * 2 + half): the socket we write to it (seqpacket:
        # the inbox; stream: our own stream to the process reading it).
        self._writers: dict[int, socket.socket] = {}
        # Stream transport: per inbox, the read end of our stream while its
        # control inbox is too full to take it, with the retry; the control
        # inboxes we write to; the streams we read.
        self._handover: dict[int, socket.socket] = {}
        self._handover_retry: dict[int, asyncio.TimerHandle] = {}
        self._controls: dict[int, socket.socket] = {}
        self._streams_in: set[_InStream] = set()
        # Per sender process (slot, life): its streams to us, in the order
        # they came; only the first is read (see _on_control).
        self._stream_queues: dict[tuple[int, int], deque[_InStream]] = {}
        # Per source (sender slot, or stream): (its life, the fragments so far).
        self._partial: dict[object, tuple[int, bytearray]] = {}
        life = int.from_bytes(os.urandom(4), "big")
        self._head = [_HEAD.pack(kind, slot, life) for kind in range(4)]
        self._hello = _HELLO.pack(slot, life)
        #: Called with a peer's worker name after ops for it had to be dropped.
        self._events: DeliveryEvents = NO_EVENTS
        self._scheduled = False
        self._drained: asyncio.Event | None = None
        #: Datagrams dropped: a peer's backlog overflowed, or writing to it
        #: failed (each followed by a re-sync of that peer, ``events.gap``).
        self.dropped = 0

    # -- lifecycle -----------------------------------------------------------

    async def start(
        self, apply: Callable[[Op], None], events: DeliveryEvents = NO_EVENTS
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._apply = apply
        self._events = events
        now = int(self._current[self.slot])
        first = now == _UNREAD
        life = 0 if first else (now + 1) % _LIVES
        read_end = self._reads[_index(self.slot, life)]
        inbox = socket.socket(fileno=os.dup(read_end.fileno()))
        inbox.setblocking(False)
        stale = 0
        while not first:  # what sits in this half was meant for a dead process
            try:
                if self._stream:  # streams to it: closing them is its EOF
                    data, fds, _, _ = socket.recv_fds(inbox, _HELLO.size, 4)
                    for fd in fds:
                        os.close(fd)
                else:
                    data = inbox.recv(DATAGRAM + _HEAD.size)
            except BlockingIOError:
                break
            if not data:
                break
            stale += 1
        self._current[self.slot] = life
        self._inbox = inbox
        on_readable = self._on_control if self._stream else self._on_readable
        self._loop.add_reader(inbox.fileno(), on_readable)
        log.debug(
            "relay slot %d, life %d, reads inbox %d (%s, %d stale)",
            self.slot,
            life,
            life & 1,
            self.transport,
            stale,
        )

    async def stop(self, drain_timeout: float = 1.0) -> None:
        """Send what is pending (waiting at most ``drain_timeout``), then close."""
        self._flush()
        if any(self._backlog):
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            if any(self._backlog):
                log.warning("relay: stopping with unsent ops for a peer not reading")
        if self._loop is not None and self._inbox is not None:
            self._loop.remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
        # Writers are keyed by inbox (slot * 2 + half), backlogs by slot.
        for slot in range(self.slots):
            self._unwatch(slot)
            recovery = self._recovery[slot]
            if recovery is not None:
                recovery.cancel()
                self._recovery[slot] = None
        for index in list(self._writers):
            self._close_writer(index)
        for sock in self._controls.values():
            sock.close()
        self._controls.clear()
        for stream in list(self._streams_in):
            self._close_stream(stream)
        for backlog in self._backlog:
            backlog.clear()
        self._backlog_bytes = [0] * self.slots
        self._apply = None

    def interest(self, room: str, wanted: bool) -> None:
        pass  # every process of one machine hears every room

    async def ready(self, room: str) -> None:
        pass

    def hears(self, peer: str) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        if any(self._overflowed):
            state = "dropping"  # a peer does not read: its ops are dropped
        elif any(self._backlog):
            state = "backlogged"  # a peer reads slowly: ops wait, bounded
        else:
            state = "ok"
        return {
            "name": self.name,
            "state": state,
            "transport": self.transport,
            "slot": self.slot,
            "slots": self.slots,
            "dropped": self.dropped,
            "backlog_bytes": sum(self._backlog_bytes),
        }

    # -- sending ---------------------------------------------------------------

    def deliver(
        self, op: Op, to: str | None = None, record: bytes | None = None
    ) -> None:
        if self._apply is None:
            raise RuntimeError("deliver() before start() or after stop()")
        if to is None:
            self._apply(op)
            targets: Sequence[int] = ()
        else:
            slot = slot_of(to)
            if slot is None or slot == self.slot:
                self._apply(op)
                return
            targets = (slot,)
        if self.slots == 1:
            return
        if record is None:
            record = frame_record(encode_op(op))
        if to is None:
            self._out.append((record, -1))
        else:
            self._out.append((record, targets[0]))
            self._directed = True
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        out, self._out = self._out, []
        if not out:
            return
        peers = [slot for slot in range(self.slots) if slot != self.slot]
        limit = DATAGRAM - _HEAD.size
        if not self._directed:
            # Only ops for everyone: the same datagrams for every peer, built once.
            datagrams = [
                datagram
                for chunk in pack_records([r for r, _ in out], limit)
                for datagram in self._datagrams(chunk)
            ]
            for slot in peers:
                for datagram in datagrams:
                    self._send(slot, datagram)
            return
        self._directed = False
        for slot in peers:
            records = [r for r, to in out if to == -1 or to == slot]
            for chunk in pack_records(records, limit):
                for datagram in self._datagrams(chunk):
                    self._send(slot, datagram)

    def _datagrams(self, chunk: bytes) -> list[bytes]:
        """``chunk`` as datagrams (fragments if large), framed for a stream."""
        head = self._head
        step = DATAGRAM - _HEAD.size
        if len(chunk) <= step:
            parts = [(_WHOLE, chunk)]
        else:
            parts = []
            for start in range(0, len(chunk), step):
                if start == 0:
                    kind = _FIRST
                elif start + step >= len(chunk):
                    kind = _LAST
                else:
                    kind = _MORE
                parts.append((kind, chunk[start : start + step]))
        if self._stream:
            frame = _FRAME.pack
            return [
                b"".join((frame(_HEAD.size + len(body)), head[kind], body))
                for kind, body in parts
            ]
        return [head[kind] + body for kind, body in parts]

    def _send(self, slot: int, datagram: bytes) -> None:
        life = int(self._current[slot])
        if self._backlog_life[slot] != life:
            self._new_life(slot, life)
        index = self._inbox_for(slot)
        backlog = self._backlog[slot]
        if self._overflowed[slot]:
            self.dropped += 1  # keep dropping until the peer is re-synced: no holes
            return
        if not backlog:
            try:
                sent = self._writer(index).send(datagram)
            except (BlockingIOError, InterruptedError):
                sent = 0  # the inbox is full: keep it in the backlog
            except OSError as exc:
                self._lose(slot, exc, queued=False)
                return
            if sent == len(datagram):
                if self._failures[slot]:
                    self._failures[slot] = 0
                return
            if sent:
                # A stream took the start of the record: the rest goes next,
                # whatever the bound, or the reader would lose its place.
                backlog.append(datagram[sent:])
                self._backlog_bytes[slot] += len(datagram) - sent
                self._watch(slot, index)
                return
        if self._backlog_bytes[slot] + len(datagram) > self._max_backlog:
            # Dropping one datagram and sending the next would leave a hole
            # in this peer's stream: drop everything until it catches up,
            # then the manager re-syncs it (events.gap).
            self._overflowed[slot] = True
            self.dropped += 1
            log.warning(
                "relay: worker slot %d is not reading; dropping its ops until it"
                " catches up (%d dropped so far)",
                slot,
                self.dropped,
            )
            return
        backlog.append(datagram)
        self._backlog_bytes[slot] += len(datagram)
        if len(backlog) == 1:
            self._watch(slot, index)

    def _new_life(self, slot: int, life: int) -> None:
        """``slot`` has a process we have not written to: write to its inbox."""
        if not (self._backlog_life[slot] == _UNREAD and life == 0):
            # The peer restarted, perhaps more than once and back onto the
            # same inbox: what we held, and our stream, were for a dead
            # process. Forget them. (Unless it is the slot's first life,
            # reading the inbox we wrote to while it started.)
            self._forget_backlog(slot)
        self._backlog_life[slot] = life

    def _inbox_for(self, slot: int) -> int:
        """The inbox our backlog and writer for ``slot`` are for (-1: none)."""
        life = self._backlog_life[slot]
        return -1 if life is None else _index(slot, life)

    def _drain(self, slot: int) -> None:
        life = int(self._current[slot])
        if self._backlog_life[slot] != life:
            self._new_life(slot, life)
            if not self._backlog[slot]:
                return  # it was for a dead process
        index = self._inbox_for(slot)
        backlog = self._backlog[slot]
        sock = self._writers[index]
        while backlog:
            datagram = backlog[0]
            try:
                sent = sock.send(datagram)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(slot, exc, queued=True)
                return
            self._backlog_bytes[slot] -= sent
            if sent < len(datagram):  # a stream took part: the rest stays first
                backlog[0] = datagram[sent:]
                return
            backlog.popleft()
        self._unwatch(slot)
        self._failures[slot] = 0
        self._caught_up(slot)

    def _lose(self, slot: int, exc: OSError, *, queued: bool) -> None:
        """A write to ``slot`` failed for good: recover as from an overflow.

        Only "would block" is worth retrying, and it never gets here. Any
        other error means the datagram cannot be delivered: the peer's end
        is gone (``EPIPE``, ``ECONNRESET``, ``ENOTCONN``, ``ECONNREFUSED``),
        the datagram is larger than the socket takes (``EMSGSIZE``), the
        kernel is short of memory (``ENOBUFS``, ``ENOMEM``), or our socket is
        unusable (``EBADF``). Sending what follows would leave a hole in the
        middle of the peer's stream, so the failed datagram, the backlog
        behind it and everything for that peer are dropped (counted) until
        the recovery, which re-syncs the peer (``events.gap``) as after an
        overflow. The socket that failed is closed (a stream: its reader sees
        EOF and drops a record cut short); the next write opens a fresh one.
        Recovery is at once the first time; if writes keep failing with
        nothing getting through, it backs off (to 2 s).
        """
        if not queued:
            self.dropped += 1  # the datagram that failed; a queued one is counted below
        if not self._overflowed[slot]:
            self._overflowed[slot] = True
            level = logging.INFO if exc.errno in _PEER_GONE else logging.WARNING
            log.log(
                level,
                "relay: cannot write to worker slot %d (%s); its ops are dropped"
                " until it is re-synced",
                slot,
                exc,
            )
        self._discard(slot)
        self._close_writer(self._inbox_for(slot))
        if self._recovery[slot] is None:
            assert self._loop is not None
            failures = self._failures[slot]
            self._failures[slot] = failures + 1
            if failures == 0:
                handle: asyncio.Handle = self._loop.call_soon(self._recover, slot)
            else:
                delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** (failures - 1))
                handle = self._loop.call_later(delay, self._recover, slot)
            self._recovery[slot] = handle

    def _recover(self, slot: int) -> None:
        self._recovery[slot] = None
        if not self._backlog[slot]:
            self._caught_up(slot)

    def _discard(self, slot: int) -> None:
        """Drop (and count) the backlog for ``slot``; stop waiting to write."""
        self._unwatch(slot)
        self.dropped += len(self._backlog[slot])
        self._backlog[slot].clear()
        self._backlog_bytes[slot] = 0

    def _forget_backlog(self, slot: int) -> None:
        self._discard(slot)
        if self._stream:  # that stream's reader is gone or going
            self._close_writer(self._inbox_for(slot))
        self._caught_up(slot)

    def _caught_up(self, slot: int) -> None:
        recovery = self._recovery[slot]
        if recovery is not None:
            recovery.cancel()
            self._recovery[slot] = None
        if self._overflowed[slot]:
            self._overflowed[slot] = False
            self._events.gap(f"Sanic-Server-{slot}-0")
        if self._drained is not None and not any(self._backlog):
            self._drained.set()

    def _watch(self, slot: int, index: int) -> None:
        """Drain the backlog of ``slot`` when inbox ``index`` is writable."""
        assert self._loop is not None
        fd = self._writers[index].fileno()
        self._loop.add_writer(fd, self._drain, slot)
        self._watching[slot] = fd

    def _unwatch(self, slot: int) -> None:
        fd = self._watching[slot]
        if fd is not None and self._loop is not None:
            self._loop.remove_writer(fd)
        self._watching[slot] = None

    def _writer(self, index: int) -> socket.socket:
        """The socket to write to inbox ``index`` (``slot * 2 + half``).

        Seqpacket: the inbox itself. Stream: a new stream whose read end goes
        to the inbox's reader through its control inbox; what we write waits
        in the stream until the reader takes it.
        """
        sock = self._writers.get(index)
        if sock is not None:
            return sock
        if not self._stream:
            sock = socket.socket(fileno=os.dup(self._writes[index].fileno()))
            sock.setblocking(False)
            self._writers[index] = sock
            return sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end, option in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
            with contextlib.suppress(OSError):  # a hint; the OS may cap it
                end.setsockopt(socket.SOL_SOCKET, option, _STREAM_BUFFER)
        ours.setblocking(False)
        self._writers[index] = ours
        self._handover[index] = theirs
        try:
            self._hand_over(index)
        except OSError:
            self._close_writer(index)
            raise
        return ours

    def _hand_over(self, index: int) -> None:
        """Pass our stream's read end to inbox ``index``'s reader.

        A full control inbox (its reader stuck or gone) is retried on a
        timer; other errors raise.
        """
        self._handover_retry.pop(index, None)
        theirs = self._handover[index]
        control = self._controls.get(index)
        if control is None:
            control = socket.socket(fileno=os.dup(self._writes[index].fileno()))
            control.setblocking(False)
            self._controls[index] = control
        try:
            socket.send_fds(control, [self._hello], [theirs.fileno()])
        except OSError as exc:
            if exc.errno not in _CONTROL_FULL:
                raise
            assert self._loop is not None
            self._handover_retry[index] = self._loop.call_later(
                _HANDOVER_RETRY, self._retry_handover, index
            )
            return
        del self._handover[index]
        theirs.close()  # the reader holds it now (or the inbox, until read)

    def _retry_handover(self, index: int) -> None:
        slot = index // 2
        life = int(self._current[slot])
        if self._backlog_life[slot] != life:
            # The reader it was for is dead: a later one must never get it
            # (forgetting closes it and cancels this, unless the first
            # worker reads the inbox it was meant for).
            self._new_life(slot, life)
            if index not in self._handover:
                return
        try:
            self._hand_over(index)
        except OSError as exc:
            if self._inbox_for(slot) == index:
                self._lose(slot, exc, queued=True)
            else:
                self._close_writer(index)

    def _close_writer(self, index: int) -> None:
        """Close what we write to inbox ``index`` (unwatched by the caller)."""
        sock = self._writers.pop(index, None)
        if sock is not None:
            sock.close()
        retry = self._handover_retry.pop(index, None)
        if retry is not None:
            retry.cancel()
        theirs = self._handover.pop(index, None)
        if theirs is not None:
            theirs.close()

    # -- receiving -------------------------------------------------------------

    def _on_readable(self) -> None:
        inbox = self._inbox
        if inbox is None or self._apply is None:
            return
        for _ in range(_READS_PER_WAKEUP):
            try:
                datagram = inbox.recv(DATAGRAM + _HEAD.size)
            except BlockingIOError:
                return
            try:
                self._receive(datagram)
            except Exception:
                # Never let a bad datagram escape into the event loop.
                log.exception("relay: a datagram could not be read; dropped")

    def _on_control(self) -> None:
        """Stream transport: take the streams senders pass to our inbox."""
        inbox = self._inbox
        if inbox is None or self._apply is None:
            return
        assert self._loop is not None
        for _ in range(_READS_PER_WAKEUP):
            try:
                hello, fds, _, _ = socket.recv_fds(inbox, _HELLO.size, 4)
            except (BlockingIOError, InterruptedError):
                return
            if not fds:
                if not hello:
                    return
                log.warning("relay: a control message without a stream; dropped")
                continue
            for fd in fds[1:]:
                os.close(fd)
            try:
                sock = socket.socket(fileno=fds[0])
            except OSError:
                os.close(fds[0])
                log.warning("relay: a control message without a socket; dropped")
                continue
            if len(hello) != _HELLO.size or sock.type != socket.SOCK_STREAM:
                sock.close()
                log.warning("relay: a control message not from a relay; dropped")
                continue
            sender = _HELLO.unpack(hello)
            sock.setblocking(False)
            stream = _InStream(sock, sender)
            self._streams_in.add(stream)
            # A sender replaces its stream to us only after closing the old
            # one, which may still hold ops we have not read: read the new
            # one after the old one's EOF, so its order holds across both.
            queue = self._stream_queues.setdefault(sender, deque())
            queue.append(stream)
            if len(queue) == 1:
                self._loop.add_reader(sock.fileno(), self._on_stream, stream)

    def _on_stream(self, stream: _InStream) -> None:
        """Stream transport: read length-framed datagrams from one sender."""
        if self._apply is None:
            return
        buffer = stream.buffer
        for _ in range(_STREAM_READS_PER_WAKEUP):
            try:
                data = stream.sock.recv(_STREAM_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._close_stream(stream, f"reading it failed: {exc}")
                return
            if not data:  # the sender closed it, exited or was killed
                self._close_stream(stream)
                return
            if buffer:  # the start of a record came in an earlier read
                buffer += data
                data = bytes(buffer)
                buffer.clear()
            pos, end = 0, len(data)
            while end - pos >= _FRAME.size:
                (size,) = _FRAME.unpack_from(data, pos)
                if not _HEAD.size <= size <= DATAGRAM + _HEAD.size:
                    # Not a relay's framing: nothing after it can be trusted.
                    self._close_stream(stream, f"a record of {size} bytes")
                    return
                start = pos + _FRAME.size
                if end - start < size:
                    break
                pos = start + size
                try:
                    self._receive(data[start:pos], stream)
                except Exception:
                    # Never let a bad datagram escape into the event loop.
                    log.exception("relay: a datagram could not be read; dropped")
            if pos < end:
                buffer += data[pos:]

    def _close_stream(self, stream: _InStream, problem: str | None = None) -> None:
        if stream not in self._streams_in:
            return
        self._streams_in.discard(stream)
        self._partial.pop(stream, None)
        queue = self._stream_queues[stream.sender]
        reading = queue[0] is stream
        queue.remove(stream)
        if reading and self._loop is not None:
            self._loop.remove_reader(stream.sock.fileno())
        stream.sock.close()
        if not queue:
            del self._stream_queues[stream.sender]
        elif reading and self._loop is not None:
            self._loop.add_reader(queue[0].sock.fileno(), self._on_stream, queue[0])
        if problem is not None:
            log.warning(
                "relay: closed the stream from worker slot %d: %s",
                stream.sender[0],
                problem,
            )
        elif stream.buffer:
            # Its sender stopped in the middle of a record: drop the start.
            log.info(
                "relay: the stream from worker slot %d ended inside a record"
                " (%d bytes dropped)",
                stream.sender[0],
                len(stream.buffer),
            )

    def _receive(self, datagram: bytes, source: object = None) -> None:
        """Apply one datagram; fragments are joined per ``source`` (a stream),
        or per sender slot when datagrams from all senders share an inbox."""
        kind, sender, life = _HEAD.unpack_from(datagram, 0)
        key = sender if source is None else source
        body = datagram[_HEAD.size :]
        if kind == _WHOLE:
            chunk = body
        elif kind == _FIRST:
            # A new message from this sender: any older partial one is from
            # a sender that died mid-message.
            self._partial[key] = (life, bytearray(body))
            return
        else:
            partial = self._partial.get(key)
            if partial is None or partial[0] != life:
                self._partial.pop(key, None)
                log.warning("relay: fragment without its start from slot %d", sender)
                return
            partial[1].extend(body)
            if kind == _MORE:
                return
            chunk = bytes(self._partial.pop(key)[1])
        assert self._apply is not None
        apply_records(self._apply, chunk, log, f"relay slot {sender}")
