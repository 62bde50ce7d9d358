"""The worker relay in one process: two relays, one loop, real sockets.

Tests marked with ``transport`` run over both transports; on Linux the stream
one (macOS's) runs only because it is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from typing import Any

import pytest

from sanic_ws_ext.delivery import LinkState, Op, OpKind
from sanic_ws_ext.delivery.relay import (
    DATAGRAM,
    TRANSPORTS,
    WorkerRelay,
    choose_transport,
    inbox_of,
    make_inboxes,
)
from sanic_ws_ext.delivery.wire import encode_op, frame_record

from .conftest import units

W0, W1, W2 = "Sanic-Server-0-0", "Sanic-Server-1-0", "Sanic-Server-2-0"
both = pytest.mark.parametrize("transport", TRANSPORTS)


class Sink:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.event = asyncio.Event()

    def __call__(self, op: Op) -> None:
        self.ops.append(op)
        self.event.set()

    async def until(self, n: int) -> list[Op]:
        while len(self.ops) < n:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), units(5))
        return self.ops


@both
async def test_ops_arrive_in_order_including_fragmented_ones(transport: str) -> None:
    inboxes = make_inboxes(2, transport)
    a, b = WorkerRelay(inboxes, W0), WorkerRelay(inboxes, W1)
    assert a.status()["transport"] == transport
    got_a, got_b = Sink(), Sink()
    await a.start(got_a)
    await b.start(got_b)
    big = b"x" * (3 * DATAGRAM + 5)
    sent = [
        Op(OpKind.BROADCAST, b"1", origin=W0),
        Op(OpKind.BROADCAST, big, origin=W0),
        Op(OpKind.SEND, b"3", target="id", origin=W0),
    ]
    for op in sent:
        a.deliver(op)
    a.deliver(Op(OpKind.SEND, b"only-b", origin=W0), to=W1)
    assert await got_b.until(4) == [*sent, Op(OpKind.SEND, b"only-b", origin=W0)]
    # publish applies locally first, except what is addressed to another worker.
    assert got_a.ops == sent
    await a.stop()
    await b.stop()


async def test_a_dead_senders_fragment_is_not_glued_to_the_next() -> None:
    inboxes = make_inboxes(2, "seqpacket")
    b = WorkerRelay(inboxes, W1)
    got = Sink()
    await b.start(got)
    writer = inboxes[1][inbox_of(inboxes[2], 1)].fileno()  # slot 1's current inbox
    sock = socket.socket(fileno=os.dup(writer))
    head = struct.Struct("!BHI")
    # A sender (life 7) dies after the first fragment of a message...
    sock.send(head.pack(1, 0, 7) + b"partial bytes of a big op")
    # ...its replacement (life 8) sends a whole op, then a bare fragment.
    op = Op(OpKind.BROADCAST, b"fresh", origin=W0)
    sock.send(head.pack(0, 0, 8) + frame_record(encode_op(op)))
    sock.send(head.pack(3, 0, 8) + b"a last fragment with no start")
    sock.send(b"\x00")  # garbage: must not reach the event loop
    sock.send(head.pack(0, 0, 8) + frame_record(encode_op(op)))
    assert await got.until(2) == [op, op]
    sock.close()
    await b.stop()


@both
async def test_a_restarted_peer_gets_ops_after_its_old_inbox_filled(
    transport: str,
) -> None:
    inboxes = make_inboxes(2, transport)
    a = WorkerRelay(inboxes, W0, max_backlog=1 << 20)
    old_b = WorkerRelay(inboxes, W1)
    gaps = Gaps()
    await a.start(Sink(), gaps)
    await old_b.start(Sink())
    await old_b.stop()  # slot 1 dies without reading; its inbox fills up
    for _ in range(2000):
        a.deliver(Op(OpKind.BROADCAST, b"y" * 8000, origin=W0))
        await asyncio.sleep(0)
    new_b = WorkerRelay(inboxes, W1)  # the replacement takes the other inbox
    got = Sink()
    await new_b.start(got)
    a.deliver(Op(OpKind.SEND, b"hello new b", origin=W0), to=W1)
    ops = await got.until(1)
    assert ops == [Op(OpKind.SEND, b"hello new b", origin=W0)]  # nothing stale
    assert a.dropped > 0
    assert gaps.peers == [W1]  # the peer is re-synced after the loss
    await a.stop()
    await new_b.stop()


@both
async def test_what_a_slots_first_worker_was_sent_while_starting_reaches_it(
    transport: str,
) -> None:
    """A slot's first worker replaces nobody: ops sent to it before it read
    its inbox (a sequencer asked for a replay) are its own, not stale."""
    inboxes = make_inboxes(2, transport)
    a = WorkerRelay(inboxes, W0)
    await a.start(Sink())
    early = [
        Op(OpKind.SEND, b"a question", target="id", origin=W0),
        Op(OpKind.BROADCAST, b"news", origin=W0),
    ]
    a.deliver(early[0], to=W1)
    a.deliver(early[1])
    await asyncio.sleep(0)  # the pass's writes: slot 1 has no reader yet
    b = WorkerRelay(inboxes, W1)
    got = Sink()
    await b.start(got)
    try:
        assert await got.until(2) == early
    finally:
        await a.stop()
        await b.stop()


@both
async def test_a_backlog_for_a_slot_not_started_yet_goes_to_its_first_worker(
    transport: str,
) -> None:
    """More than the inbox holds, sent before the slot's first worker
    started: the rest waits in our backlog, and is for that worker."""
    inboxes = make_inboxes(2, transport)
    a = WorkerRelay(inboxes, W0)
    await a.start(Sink())
    sent = [
        Op(OpKind.SEND, b"%06d" % i + b"z" * 8000, target="id", origin=W0)
        for i in range(1500)
    ]
    for op in sent:
        a.deliver(op, to=W1)
        await asyncio.sleep(0)  # one pass each: the inbox fills, then the backlog
    assert a.status()["backlog_bytes"] > 0
    b = WorkerRelay(inboxes, W1)
    got = Sink()
    await b.start(got)
    try:
        assert await got.until(len(sent)) == sent
        assert a.dropped == 0
    finally:
        await a.stop()
        await b.stop()


@both
@pytest.mark.parametrize("told", [False, True], ids=["silent", "told"])
async def test_a_third_life_of_a_slot_drops_what_was_sent_to_the_first(
    transport: str, told: bool
) -> None:
    """Ops sent while a slot's worker was dead wait in the inbox its next
    life does not read, and in our backlog; the life after that empties the
    inbox unread. A sender that wrote nothing to the second life (``silent``)
    finds the third on the inbox it last wrote to, and still drops its
    backlog and writes afresh: both were for a dead process."""
    inboxes = make_inboxes(2, transport)
    a = WorkerRelay(inboxes, W0)
    await a.start(Sink())
    first = WorkerRelay(inboxes, W1)
    await first.start(Sink())  # reads inbox 0
    await first.stop()
    for i in range(1500):  # more than inbox 0 takes: the rest waits with us
        a.deliver(Op(OpKind.SEND, b"dead %d" % i + b"z" * 8000, origin=W0), to=W1)
        await asyncio.sleep(0)  # one pass each
    assert a.status()["backlog_bytes"] > 0
    second = WorkerRelay(inboxes, W1)
    heard = Sink()
    await second.start(heard)  # reads inbox 1
    if told:
        hello = Op(OpKind.SEND, b"for the second", target="id", origin=W0)
        a.deliver(hello, to=W1)
        assert await heard.until(1) == [hello]
    await second.stop()
    third = WorkerRelay(inboxes, W1)
    got = Sink()
    await third.start(got)  # reads inbox 0, emptied first
    try:
        fresh = Op(OpKind.SEND, b"for the third", target="id", origin=W0)
        a.deliver(fresh, to=W1)
        # What we held for the first life was sent first if at all: only
        # ``fresh`` arrives.
        assert await got.until(1) == [fresh]
    finally:
        await a.stop()
        await third.stop()


async def test_a_stream_waiting_for_room_never_reaches_a_later_life() -> None:
    """Our stream waits for room in the control inbox of a slot's first life,
    which dies; two restarts later the retry must not hand that stream (and
    what was written to it) to the third life."""
    inboxes = make_inboxes(2, "stream")
    a = WorkerRelay(inboxes, W0)
    await a.start(Sink())
    first = WorkerRelay(inboxes, W1)
    await first.start(Sink())  # life 0, inbox 0
    await first.stop()
    index = inbox_of(inboxes[2], 1)
    junk = socket.socket(fileno=os.dup(inboxes[1][index].fileno()))
    junk.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            junk.send(b"junk")
    a.deliver(Op(OpKind.SEND, b"for life 0", target="id", origin=W0), to=W1)
    await asyncio.sleep(0)  # the pass's writes: the handover waits for room
    second = WorkerRelay(inboxes, W1)
    await second.start(Sink())
    await second.stop()
    third = WorkerRelay(inboxes, W1)
    got = Sink()
    await third.start(got)  # life 2: inbox 0 again, emptied of the junk
    try:
        # The retry's timer, fired now rather than waited for.
        a._retry_handover(index)
        fresh = Op(OpKind.SEND, b"for life 2", target="id", origin=W0)
        a.deliver(fresh, to=W1)
        assert await got.until(1) == [fresh]
    finally:
        junk.close()
        await a.stop()
        await third.stop()


class Gaps:
    """Delivery events: records gaps, and re-syncs the peer as the manager would."""

    def __init__(self, sync: Op | None = None) -> None:
        self.peers: list[str] = []
        self.event = asyncio.Event()
        self.relay: WorkerRelay | None = None
        self.sync = sync

    def gap(self, peer: str) -> None:
        self.peers.append(peer)
        self.event.set()
        if self.relay is not None and self.sync is not None:
            self.relay.deliver(self.sync, to=peer)

    def missed(self, peer: str) -> None:
        raise AssertionError("the relay has no sequence numbers to miss")

    def link(self, state: LinkState) -> None:
        raise AssertionError("the relay has no external link")


async def test_a_datagram_the_inbox_refuses_is_a_gap_not_a_silent_hole() -> None:
    """EMSGSIZE drops a datagram: the peer is re-synced before it gets more."""
    inboxes = make_inboxes(2, "seqpacket")
    a, b = WorkerRelay(inboxes, W0), WorkerRelay(inboxes, W1)
    got = Sink()
    sync = Op(OpKind.SYNC, b"the whole state", origin=W0)
    gaps = Gaps(sync)  # the manager answers a gap with a SYNC
    gaps.relay = a
    await a.start(Sink(), gaps)
    await b.start(got)
    # Shrink the send buffer of slot 1's inbox (one kernel socket that every
    # sender shares) below a full datagram: the kernel refuses those whole.
    write_end = inboxes[1][inbox_of(inboxes[2], 1)]
    with socket.socket(fileno=os.dup(write_end.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < DATAGRAM
    first = Op(OpKind.BROADCAST, b"first", origin=W0)
    refused = Op(OpKind.BROADCAST, b"x" * (2 * DATAGRAM), origin=W0)
    behind = Op(OpKind.BROADCAST, b"behind the hole", origin=W0)
    for op in (first, refused, behind):
        a.deliver(op)
    # Nothing past the hole before the SYNC: `behind` is dropped with it.
    assert await got.until(2) == [first, sync]
    assert gaps.peers == [W1]
    assert a.dropped > 0
    later = Op(OpKind.BROADCAST, b"later", origin=W0)
    a.deliver(later)
    assert await got.until(3) == [first, sync, later]
    assert a.status()["state"] == "ok"
    await a.stop()
    await b.stop()


@both
async def test_an_inbox_closed_under_a_backlog_is_a_gap_not_a_silent_loss(
    transport: str,
) -> None:
    """EPIPE while draining: the backlog is counted as lost and the peer re-synced.

    Stream transport: the stream's read end waits in the control inbox (its
    reader stopped), and goes with it.
    """
    inboxes = make_inboxes(2, transport)
    a = WorkerRelay(inboxes, W0)
    old_b = WorkerRelay(inboxes, W1)
    gaps = Gaps()
    await a.start(Sink(), gaps)
    await old_b.start(Sink())
    index = inbox_of(inboxes[2], 1)  # slot 1's current inbox
    await old_b.stop()  # slot 1 stops reading; its inbox fills up
    for _ in range(2000):
        a.deliver(Op(OpKind.BROADCAST, b"y" * 8000, origin=W0))
    await asyncio.sleep(0)  # one loop pass: the flush runs
    assert a.status()["state"] == "backlogged"
    # The last reference to the inbox's read end goes: writes fail (EPIPE).
    inboxes[0][index].close()
    await asyncio.wait_for(gaps.event.wait(), units(5))
    assert gaps.peers == [W1]
    status = a.status()
    assert (status["state"], status["backlog_bytes"]) == ("ok", 0)
    assert a.dropped > 0
    # A replacement for slot 1 takes its other inbox and is reached.
    new_b = WorkerRelay(inboxes, W1)
    got = Sink()
    await new_b.start(got)
    hello = Op(OpKind.SEND, b"hello new b", origin=W0)
    a.deliver(hello, to=W1)
    assert await got.until(1) == [hello]
    await a.stop()
    await new_b.stop()


@both
async def test_bursts_beyond_the_buffers_keep_each_senders_records_whole(
    transport: str,
) -> None:
    """Two senders blast one receiver in one loop pass: megabytes each.

    The buffers fill, so writes are partial (a stream takes the start of a
    record) and backlogs drain later; every op still arrives whole, once,
    in each sender's order.
    """
    inboxes = make_inboxes(3, transport)
    a, b, c = (WorkerRelay(inboxes, w) for w in (W0, W1, W2))
    got = Sink()
    await a.start(Sink())
    await b.start(Sink())
    await c.start(got)
    n = 600
    sent: dict[str, list[Op]] = {W0: [], W1: []}
    for i in range(n):
        for relay, name in ((a, W0), (b, W1)):
            size = 3 * DATAGRAM + i if i % 50 == 7 else 7000 + i  # some fragmented
            op = Op(OpKind.SEND, b"%d:" % i + b"z" * size, target="x", origin=name)
            relay.deliver(op, to=W2)
            sent[name].append(op)
    ops = await got.until(2 * n)
    assert [op for op in ops if op.origin == W0] == sent[W0]
    assert [op for op in ops if op.origin == W1] == sent[W1]
    assert a.dropped == b.dropped == 0
    for relay in (a, b, c):
        await relay.stop()


async def test_a_stream_cut_short_or_garbled_is_dropped_not_misread() -> None:
    inboxes = make_inboxes(2, "stream")
    b = WorkerRelay(inboxes, W1)
    got = Sink()
    await b.start(got)
    control = socket.socket(fileno=os.dup(inboxes[1][inbox_of(inboxes[2], 1)].fileno()))
    # The wire: datagram head (kind, slot, life), frame length, hello.
    head, frame, hello = (struct.Struct(f) for f in ("!BHI", "!I", "!HI"))
    op = Op(OpKind.BROADCAST, b"fresh", origin=W0)

    def stream_to_b(life: int) -> socket.socket:
        """What a sender does: a stream of its own, the read end passed to b."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        socket.send_fds(control, [hello.pack(0, life)], [theirs.fileno()])
        theirs.close()
        return ours

    def framed(life: int, payload: Op = op) -> bytes:
        datagram = head.pack(0, 0, life) + frame_record(encode_op(payload))
        return frame.pack(len(datagram)) + datagram

    # A sender (life 7) is killed in the middle of its second record.
    dying = stream_to_b(7)
    dying.sendall(framed(7) + framed(7)[:12])
    dying.close()
    # Another sends a length no relay writes: its stream is closed unread.
    garbled = stream_to_b(8)
    garbled.sendall(frame.pack(0xFFFFFFFF) + framed(8))
    # The replacement (life 9) is read as usual.
    fresh = stream_to_b(9)
    fresh.sendall(framed(9))
    assert await got.until(2) == [op, op]
    # All three were readable at once, so by the time a later record on
    # `fresh` arrives, the cut and the garbled records have been dealt with.
    marker = Op(OpKind.BROADCAST, b"marker", origin=W0)
    fresh.sendall(framed(9, marker))
    assert await got.until(3) == [op, op, marker]
    garbled.setblocking(False)
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(garbled, 1), units(5)) == b""
    for sock in (control, garbled, fresh):
        sock.close()
    await b.stop()


async def test_a_senders_new_stream_is_read_after_the_one_it_replaced() -> None:
    """A sender replaces its stream (after a failed write) once it closed the
    old one, whose last ops may not be read yet: they still come first."""
    inboxes = make_inboxes(2, "stream")
    b = WorkerRelay(inboxes, W1)
    got = Sink()
    await b.start(got)
    control = socket.socket(fileno=os.dup(inboxes[1][inbox_of(inboxes[2], 1)].fileno()))
    head, frame, hello = (struct.Struct(f) for f in ("!BHI", "!I", "!HI"))

    def stream_to_b(slot: int, life: int) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        socket.send_fds(control, [hello.pack(slot, life)], [theirs.fileno()])
        theirs.close()
        return ours

    def framed(op: Op, slot: int, life: int) -> bytes:
        datagram = head.pack(0, slot, life) + frame_record(encode_op(op))
        return frame.pack(len(datagram)) + datagram

    ops = [Op(OpKind.BROADCAST, b"%d" % i, origin=W0) for i in range(4)]
    old = stream_to_b(0, 5)
    old.sendall(framed(ops[0], 0, 5))
    assert await got.until(1) == ops[:1]
    new = stream_to_b(0, 5)  # the same sender process (slot 0, life 5)
    new.sendall(framed(ops[3], 0, 5))
    # Another process's stream, written after: when its op has arrived, an
    # op readable on `new` would have been read too, were it read already.
    other = stream_to_b(2, 6)
    marker = Op(OpKind.BROADCAST, b"marker", origin="Sanic-Server-2-0")
    other.sendall(framed(marker, 2, 6))
    assert await got.until(2) == [ops[0], marker]
    old.sendall(framed(ops[1], 0, 5) + framed(ops[2], 0, 5))
    old.close()  # the sender gave it up: EOF once its ops are read
    assert await got.until(5) == [ops[0], marker, ops[1], ops[2], ops[3]]
    for sock in (control, new, other):
        sock.close()
    await b.stop()


async def test_a_stream_waits_for_room_in_a_full_control_inbox() -> None:
    """The control inbox of a worker not reading is full: the stream is
    handed over once there is room, with what was written meanwhile."""
    inboxes = make_inboxes(2, "stream")
    a = WorkerRelay(inboxes, W0)
    await a.start(Sink())
    index = inbox_of(inboxes[2], 1)  # slot 1 has not started: this is where a writes
    junk = socket.socket(fileno=os.dup(inboxes[1][index].fileno()))
    junk.setblocking(False)
    filled = 0
    while True:
        try:
            junk.send(b"junk")
        except BlockingIOError:
            break
        filled += 1
    op = Op(OpKind.SEND, b"for slot 1", target="x", origin=W0)
    a.deliver(op, to=W1)
    await asyncio.sleep(0)  # one loop pass: the flush runs and finds no room
    reader = socket.socket(fileno=os.dup(inboxes[0][index].fileno()))
    reader.setblocking(False)
    drained = 0
    while True:  # the reader catches up: only junk so far, no stream
        try:
            message, fds, _, _ = socket.recv_fds(reader, 64, 4)
        except BlockingIOError:
            break
        assert (message, fds) == (b"junk", [])
        drained += 1
    assert drained == filled
    reader.setblocking(True)
    reader.settimeout(units(5))
    loop = asyncio.get_running_loop()
    _, fds, _, _ = await loop.run_in_executor(None, socket.recv_fds, reader, 64, 4)
    assert len(fds) == 1
    with socket.socket(fileno=fds[0]) as stream:
        stream.settimeout(units(5))
        (size,) = struct.unpack("!I", stream.recv(4, socket.MSG_WAITALL))
        datagram = stream.recv(size, socket.MSG_WAITALL)
    assert datagram[7:] == frame_record(encode_op(op))  # after the 7-byte head
    for sock in (junk, reader):
        sock.close()
    await a.stop()


def test_auto_picks_streams_where_seqpacket_pairs_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on macOS: the constant exists, making the pair fails."""
    real = socket.socketpair

    def socketpair(*args: Any, **kwargs: Any) -> tuple[socket.socket, socket.socket]:
        kind = args[1] if len(args) > 1 else kwargs.get("type")
        if kind == socket.SOCK_SEQPACKET:
            raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "socketpair", socketpair)
    assert choose_transport("auto") == "stream"
    assert choose_transport("stream") == "stream"
    with pytest.raises(OSError, match=r"seqpacket: .*Protocol not supported"):
        choose_transport("seqpacket")
    inboxes = make_inboxes(2)
    assert WorkerRelay(inboxes, W0).transport == "stream"
    # And where file descriptors cannot be passed either: nothing works.
    monkeypatch.delattr(socket, "send_fds")
    with pytest.raises(OSError, match=r"seqpacket: .*; stream: "):
        choose_transport("auto")
