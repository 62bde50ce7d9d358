"""Delivery between the workers of one machine, with no external service.

The main process (``main_process_start``) makes two inboxes per worker slot:
``socketpair(AF_UNIX, SOCK_SEQPACKET)``, handed to every worker on
``app.shared_ctx`` (Sanic pickles it into each process it spawns, restarted
ones included, so all of them hold the same kernel sockets). A worker reads
its slot's current inbox with ``loop.add_reader``; every worker writes to it.

Why this design (docs/architecture.md has the measurements): per-worker
multiprocessing queues deadlock forever after a worker is killed while
holding a queue's lock; a hub process is a single point of failure that Sanic
does not restart. Kernel datagram sockets have no lock a dying process can
hold, keep their buffer while a worker restarts, and preserve each sender's
order. Writes are coalesced: all ops for one slot in an event-loop pass go
out in datagrams of at most 32 KiB.

Rules this module keeps:

- Two inboxes per slot, and ``current[slot]`` (shared memory) says which one
  the live worker reads. A starting worker takes the other one and empties it
  of stale ops first, so the process it replaces (still shutting down) never
  takes ops meant for the new one.
- Sending never blocks: a full inbox (a dead or stuck worker) keeps ops in a
  bounded per-slot backlog retried when writable; past the bound they are
  dropped and counted.
- No silent holes: after any loss for a peer (its backlog overflowed, or a
  write failed with anything but "would block"), everything for it is
  dropped and counted until the peer is re-synced (``on_gap``), so a peer
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

from . import Op
from .wire import apply_records, encode_op, frame_record, pack_records

__all__ = ["RelayInboxes", "WorkerRelay", "make_inboxes", "slot_of"]

log = logging.getLogger("sanic.root.sanic_ws_ext.relay")

DATAGRAM = 32 * 1024
_HEAD = struct.Struct("!BHI")  # kind, sender slot, sender's life (random per process)
_WHOLE, _FIRST, _MORE, _LAST = 0, 1, 2, 3
_READS_PER_WAKEUP = 256
# After a failed write, the first recovery is at once; if writes keep failing
# with nothing getting through, the next ones back off from 50 ms to 2 s.
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0
# Errors meaning the peer's end is closed: expected while a worker restarts.
_PEER_GONE = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED}
)

# With the Redis backplane, process names carry their node: "<node>/<worker>".
_WORKER_NAME = re.compile(r"^(?:[^/]*/)?Sanic-Server-(\d+)-\d+$")


def slot_of(worker_name: str) -> int | None:
    """The slot of a Sanic server worker (``[<node>/]Sanic-Server-<slot>-<n>``)."""
    match = _WORKER_NAME.match(worker_name)
    return int(match.group(1)) if match else None


RelayInboxes = tuple[tuple[MPConnection, ...], tuple[MPConnection, ...], Any]


def make_inboxes(slots: int) -> RelayInboxes:
    """Create the sockets and the ``current`` array (in the main process).

    Returns ``(read_ends, write_ends, current)``, indexed ``slot * 2 + half``
    for the ends, picklable into spawned workers.
    """
    from multiprocessing import get_context

    reads: list[MPConnection] = []
    writes: list[MPConnection] = []
    for _ in range(slots * 2):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (a, b):
            # Room for a burst while a worker is busy or restarting.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        reads.append(MPConnection(os.dup(a.fileno())))
        writes.append(MPConnection(os.dup(b.fileno())))
        a.close()
        b.close()
    current = get_context("spawn").RawArray("b", slots)
    return tuple(reads), tuple(writes), current


class WorkerRelay:
    """The delivery backend between ``sanic --workers N`` workers."""

    name = "relay"

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
        self._reads = reads
        self._writes = writes
        self._current = current
        self._max_backlog = max_backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._apply: Callable[[Op], None] | None = None
        self._inbox: socket.socket | None = None
        # Framed records in publish order, each with its slot (-1: all).
        self._out: list[tuple[bytes, int]] = []
        self._directed = False
        self._backlog: list[deque[bytes]] = [deque() for _ in range(self.slots)]
        self._backlog_bytes = [0] * self.slots
        # Which inbox each slot's backlog was queued for (-1: none yet).
        self._backlog_index = [-1] * self.slots
        self._overflowed = [False] * self.slots
        # Per slot: the fd watched for writability, the pending recovery after
        # a failed write, and how many recoveries in a row found writes failing.
        self._watching: list[int | None] = [None] * self.slots
        self._recovery: list[asyncio.Handle | None] = [None] * self.slots
        self._failures = [0] * self.slots
        self._writers: dict[int, socket.socket] = {}
        # Per sender slot: (its life, the fragments so far).
        self._partial: dict[int, tuple[int, bytearray]] = {}
        life = int.from_bytes(os.urandom(4), "big")
        self._head = [_HEAD.pack(kind, slot, life) for kind in range(4)]
        #: Called with a peer's worker name after ops for it had to be dropped.
        self.on_gap: Callable[[str], None] | None = None
        self._scheduled = False
        self._drained: asyncio.Event | None = None
        #: Datagrams dropped: a peer's backlog overflowed, or writing to it
        #: failed (each followed by a re-sync of that peer, ``on_gap``).
        self.dropped = 0

    # -- lifecycle -----------------------------------------------------------

    async def start(self, apply: Callable[[Op], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._apply = apply
        half = 1 - self._current[self.slot]
        inbox = socket.socket(fileno=os.dup(self._reads[self.slot * 2 + half].fileno()))
        inbox.setblocking(False)
        stale = 0
        while True:  # what sits in this half was meant for a dead process
            try:
                inbox.recv(DATAGRAM + _HEAD.size)
                stale += 1
            except BlockingIOError:
                break
        self._current[self.slot] = half
        self._inbox = inbox
        self._loop.add_reader(inbox.fileno(), self._on_readable)
        log.debug("relay slot %d reads inbox %d (%d stale)", self.slot, half, stale)

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
        for sock in self._writers.values():
            sock.close()
        self._writers.clear()
        for backlog in self._backlog:
            backlog.clear()
        self._backlog_bytes = [0] * self.slots
        self._apply = None

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
            "slot": self.slot,
            "slots": self.slots,
            "dropped": self.dropped,
            "backlog_bytes": sum(self._backlog_bytes),
        }

    # -- sending ---------------------------------------------------------------

    def publish(
        self, op: Op, to: str | None = None, record: bytes | None = None
    ) -> None:
        if self._apply is None:
            raise RuntimeError("publish() before start() or after stop()")
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
        if not self._directed:
            # Only ops for everyone: the same chunks for every peer, built once.
            chunks = list(pack_records([r for r, _ in out], DATAGRAM - _HEAD.size))
            for slot in peers:
                for chunk in chunks:
                    self._send_chunk(slot, chunk)
            return
        self._directed = False
        for slot in peers:
            records = [r for r, to in out if to == -1 or to == slot]
            for chunk in pack_records(records, DATAGRAM - _HEAD.size):
                self._send_chunk(slot, chunk)

    def _send_chunk(self, slot: int, chunk: bytes) -> None:
        head = self._head
        if len(chunk) <= DATAGRAM - _HEAD.size:
            self._send(slot, head[_WHOLE] + chunk)
            return
        step = DATAGRAM - _HEAD.size
        for start in range(0, len(chunk), step):
            if start == 0:
                kind = _FIRST
            elif start + step >= len(chunk):
                kind = _LAST
            else:
                kind = _MORE
            self._send(slot, head[kind] + chunk[start : start + step])

    def _send(self, slot: int, datagram: bytes) -> None:
        index = slot * 2 + self._current[slot]
        if self._backlog_index[slot] != index:
            # The peer restarted onto its other inbox: what we held for the
            # old one is for a dead process. Forget it; write to the new one.
            self._forget_backlog(slot)
            self._backlog_index[slot] = index
        backlog = self._backlog[slot]
        if self._overflowed[slot]:
            self.dropped += 1  # keep dropping until the peer is re-synced: no holes
            return
        if not backlog:
            try:
                self._writer(index).send(datagram)
            except (BlockingIOError, InterruptedError):
                pass  # the inbox is full: keep it in the backlog
            except OSError as exc:
                self._lose(slot, exc, queued=False)
                return
            else:
                if self._failures[slot]:
                    self._failures[slot] = 0
                return
        if self._backlog_bytes[slot] + len(datagram) > self._max_backlog:
            # Dropping one datagram and sending the next would leave a hole
            # in this peer's stream: drop everything until it catches up,
            # then the manager re-syncs it (on_gap).
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

    def _drain(self, slot: int) -> None:
        index = self._backlog_index[slot]
        if index != slot * 2 + self._current[slot]:
            self._forget_backlog(slot)
            return
        backlog = self._backlog[slot]
        sock = self._writers[index]
        while backlog:
            try:
                sock.send(backlog[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(slot, exc, queued=True)
                return
            self._backlog_bytes[slot] -= len(backlog.popleft())
        self._unwatch(slot)
        self._failures[slot] = 0
        self._caught_up(slot)

    def _lose(self, slot: int, exc: OSError, *, queued: bool) -> None:
        """A write to ``slot`` failed for good: recover as from an overflow.

        Only "would block" is worth retrying, and it never gets here. Any
        other error means the datagram cannot be delivered: the peer's inbox
        is gone (``EPIPE``, ``ECONNRESET``, ``ENOTCONN``, ``ECONNREFUSED``),
        the datagram is larger than the socket takes (``EMSGSIZE``), the
        kernel is short of memory (``ENOBUFS``, ``ENOMEM``), or our socket is
        unusable (``EBADF``). Sending what follows would leave a hole in the
        middle of the peer's stream, so the failed datagram, the backlog
        behind it and everything for that peer are dropped (counted) until
        the recovery, which re-syncs the peer (``on_gap``) as after an
        overflow. Recovery is at once the first time; if writes keep
        failing with nothing getting through, it backs off (to 2 s).
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
        # This socket failed: the next write uses a fresh one.
        sock = self._writers.pop(self._backlog_index[slot], None)
        if sock is not None:
            sock.close()
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
        self._caught_up(slot)

    def _caught_up(self, slot: int) -> None:
        recovery = self._recovery[slot]
        if recovery is not None:
            recovery.cancel()
            self._recovery[slot] = None
        if self._overflowed[slot]:
            self._overflowed[slot] = False
            if self.on_gap is not None:
                self.on_gap(f"Sanic-Server-{slot}-0")
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
        """A socket to inbox ``index`` (``slot * 2 + half``)."""
        sock = self._writers.get(index)
        if sock is None:
            sock = socket.socket(fileno=os.dup(self._writes[index].fileno()))
            sock.setblocking(False)
            self._writers[index] = sock
        return sock

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

    def _receive(self, datagram: bytes) -> None:
        kind, sender, life = _HEAD.unpack_from(datagram, 0)
        body = datagram[_HEAD.size :]
        if kind == _WHOLE:
            chunk = body
        elif kind == _FIRST:
            # A new message from this sender: any older partial one is from
            # a sender that died mid-message.
            self._partial[sender] = (life, bytearray(body))
            return
        else:
            partial = self._partial.get(sender)
            if partial is None or partial[0] != life:
                self._partial.pop(sender, None)
                log.warning("relay: fragment without its start from slot %d", sender)
                return
            partial[1].extend(body)
            if kind == _MORE:
                return
            chunk = bytes(self._partial.pop(sender)[1])
        assert self._apply is not None
        apply_records(self._apply, chunk, log, f"relay slot {sender}")
