"""The worker relay in one process: two relays, one loop, real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

from sanic_ws_ext.delivery import Op, OpKind
from sanic_ws_ext.delivery.relay import DATAGRAM, WorkerRelay, make_inboxes
from sanic_ws_ext.delivery.wire import encode_op, frame_record

from .conftest import units

W0, W1 = "Sanic-Server-0-0", "Sanic-Server-1-0"


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


async def test_ops_arrive_in_order_including_fragmented_ones() -> None:
    inboxes = make_inboxes(2)
    a, b = WorkerRelay(inboxes, W0), WorkerRelay(inboxes, W1)
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
        a.publish(op)
    a.publish(Op(OpKind.SEND, b"only-b", origin=W0), to=W1)
    assert await got_b.until(4) == [*sent, Op(OpKind.SEND, b"only-b", origin=W0)]
    # publish applies locally first, except what is addressed to another worker.
    assert got_a.ops == sent
    await a.stop()
    await b.stop()


async def test_a_dead_senders_fragment_is_not_glued_to_the_next() -> None:
    inboxes = make_inboxes(2)
    b = WorkerRelay(inboxes, W1)
    got = Sink()
    await b.start(got)
    writer = inboxes[1][2 + inboxes[2][1]].fileno()  # slot 1's current inbox
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


async def test_a_restarted_peer_gets_ops_after_its_old_inbox_filled() -> None:
    inboxes = make_inboxes(2)
    a = WorkerRelay(inboxes, W0, max_backlog=1 << 20)
    old_b = WorkerRelay(inboxes, W1)
    await a.start(Sink())
    await old_b.start(Sink())
    await old_b.stop()  # slot 1 dies without reading; its inbox fills up
    for _ in range(2000):
        a.publish(Op(OpKind.BROADCAST, b"y" * 8000, origin=W0))
        await asyncio.sleep(0)
    gaps: list[str] = []
    a.on_gap = gaps.append
    new_b = WorkerRelay(inboxes, W1)  # the replacement takes the other inbox
    got = Sink()
    await new_b.start(got)
    a.publish(Op(OpKind.SEND, b"hello new b", origin=W0), to=W1)
    ops = await got.until(1)
    assert ops == [Op(OpKind.SEND, b"hello new b", origin=W0)]  # nothing stale
    assert a.dropped > 0
    assert gaps == [W1]  # the peer is re-synced after the loss
    await a.stop()
    await new_b.stop()


class Gaps:
    """An ``on_gap`` hook: records peers, and re-syncs them as the manager would."""

    def __init__(
        self, relay: WorkerRelay | None = None, sync: Op | None = None
    ) -> None:
        self.peers: list[str] = []
        self.event = asyncio.Event()
        self.relay, self.sync = relay, sync

    def __call__(self, peer: str) -> None:
        self.peers.append(peer)
        self.event.set()
        if self.relay is not None and self.sync is not None:
            self.relay.publish(self.sync, to=peer)


async def test_a_datagram_the_inbox_refuses_is_a_gap_not_a_silent_hole() -> None:
    """EMSGSIZE drops a datagram: the peer is re-synced before it gets more."""
    inboxes = make_inboxes(2)
    a, b = WorkerRelay(inboxes, W0), WorkerRelay(inboxes, W1)
    got = Sink()
    await a.start(Sink())
    await b.start(got)
    # Shrink the send buffer of slot 1's inbox (one kernel socket that every
    # sender shares) below a full datagram: the kernel refuses those whole.
    write_end = inboxes[1][2 + inboxes[2][1]]
    with socket.socket(fileno=os.dup(write_end.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < DATAGRAM
    sync = Op(OpKind.SYNC, b"the whole state", origin=W0)
    a.on_gap = gaps = Gaps(a, sync)  # the manager answers a gap with a SYNC
    first = Op(OpKind.BROADCAST, b"first", origin=W0)
    refused = Op(OpKind.BROADCAST, b"x" * (2 * DATAGRAM), origin=W0)
    behind = Op(OpKind.BROADCAST, b"behind the hole", origin=W0)
    for op in (first, refused, behind):
        a.publish(op)
    # Nothing past the hole before the SYNC: `behind` is dropped with it.
    assert await got.until(2) == [first, sync]
    assert gaps.peers == [W1]
    assert a.dropped > 0
    later = Op(OpKind.BROADCAST, b"later", origin=W0)
    a.publish(later)
    assert await got.until(3) == [first, sync, later]
    assert a.status()["state"] == "ok"
    await a.stop()
    await b.stop()


async def test_an_inbox_closed_under_a_backlog_is_a_gap_not_a_silent_loss() -> None:
    """EPIPE while draining: the backlog is counted as lost and the peer re-synced."""
    inboxes = make_inboxes(2)
    a = WorkerRelay(inboxes, W0)
    old_b = WorkerRelay(inboxes, W1)
    await a.start(Sink())
    await old_b.start(Sink())
    index = 2 + inboxes[2][1]  # slot 1's current inbox
    await old_b.stop()  # slot 1 stops reading; its inbox fills up
    a.on_gap = gaps = Gaps()
    for _ in range(2000):
        a.publish(Op(OpKind.BROADCAST, b"y" * 8000, origin=W0))
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
    a.publish(hello, to=W1)
    assert await got.until(1) == [hello]
    await a.stop()
    await new_b.stop()
