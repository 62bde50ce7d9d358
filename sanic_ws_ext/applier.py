"""Applying ops in this process: everything the delivery backend hands over.

Every process applies the ops published anywhere in the cluster (its own
first, synchronously) to its own connections, and learns from them who else
is alive.

Rules this module keeps:

- Applying never awaits. A message is framed once here, whatever the number
  of local receivers, and queued for each (:func:`~sanic_ws_ext.wire.fan_out`).
- An op for a connection this process does not hold is ignored: it went to
  every process (its holder was not known yet), and the holder acts.
- Any op from a peer is a sign of life. A life not known yet is *met*: each
  side then sends the other its whole state. Ops of a life already dropped
  (exited, stopped, replaced) are ignored, so a dead process's last ops, still
  in flight, cannot bring back what it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ujson

from .delivery import Op, OpKind
from .frames import data_frame
from .wire import fan_out

if TYPE_CHECKING:
    from .cluster import Membership
    from .config import WSConfig
    from .connection import Connection
    from .index import LocalIndex
    from .outbox import Outbox
    from .queries import Queries
    from .requests import Requests
    from .sequencer import Sequencer
    from .stats import Counters
    from .tracker import Tracker
    from .wire import Flusher

__all__ = ["Applier"]


class Applier:
    """Executes ops in this process, and keeps membership up to date from them."""

    def __init__(
        self,
        config: WSConfig,
        local: LocalIndex,
        counters: Counters,
        membership: Membership,
        tracker: Tracker,
        queries: Queries,
        outbox: Outbox,
        sequencer: Sequencer,
        requests: Requests,
        *,
        worker: str,
        join: Callable[[Connection, str], None],
        leave: Callable[[Connection, str], None],
        met: Callable[[], None],
    ) -> None:
        self.config = config
        self.local = local
        self.counters = counters
        self.membership = membership
        self.tracker = tracker
        self.queries = queries
        self.outbox = outbox
        self.sequencer = sequencer
        self.requests = requests
        self.worker = worker
        # Put a local connection in a room, or take it out.
        self._join = join
        self._leave = leave
        # Called when a peer is newly met (readiness counts the workers heard).
        self._met = met
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        # Joins of history rooms in progress (sent by another process).
        self._history_joins: set[asyncio.Task[None]] = set()
        # Bound once: the lookup runs for every op.
        self._by_kind: dict[OpKind, Callable[[Op], None]] = {
            OpKind.BROADCAST: self._broadcast,
            OpKind.SEND: self._send,
            OpKind.ROOM_SEND: self._group_send,
            OpKind.USER_SEND: self._group_send,
            OpKind.DISCONNECT: self._disconnect,
            OpKind.USER_DISCONNECT: self._user_disconnect,
            OpKind.JOIN: self._join_leave,
            OpKind.LEAVE: self._join_leave,
            OpKind.HELLO: self._peer,
            OpKind.SYNC: self._peer,
            OpKind.BEAT: self._peer,
            OpKind.BYE: self._peer,
            OpKind.PRESENCE: self._presence,
            OpKind.QUERY: queries.on_query,
            OpKind.REPLY: queries.on_reply,
            OpKind.SEQUENCE: sequencer.apply,
            OpKind.FETCH: sequencer.apply,
            OpKind.HISTORY: sequencer.apply,
            OpKind.ASK: requests.on_ask,
            OpKind.ANSWER: requests.on_answer,
        }

    def start(self, loop: asyncio.AbstractEventLoop, flusher: Flusher) -> None:
        self._loop = loop
        self._flusher = flusher

    def apply(self, op: Op) -> None:
        """Execute ``op`` in this process (called by the delivery backend)."""
        if op.origin != self.worker and self._loop is not None:
            # Any op is a sign of life: a peer busy sending is not silent.
            self.membership.heard(op.origin, self._loop.time())
        handler = self._by_kind.get(op.kind)
        if handler is not None:
            handler(op)

    # -- messages and requests for connections ------------------------------------

    def _broadcast(self, op: Op) -> None:
        assert self._flusher is not None
        self.counters.messages_out += fan_out(
            self.local.everyone(),
            data_frame(op.payload, op.binary),
            op.exclude,
            self.config.max_backpressure,
            self._flusher,
            volatile=op.volatile,
            key=op.reason or None,
        )

    def _group_send(self, op: Op) -> None:
        wires = self.local.of(op.kind is OpKind.ROOM_SEND, op.target)
        if not wires:
            return
        assert self._flusher is not None
        exclude = op.exclude
        sequencer = self.sequencer
        if (sequencer.holds or sequencer.floors) and op.kind is OpKind.ROOM_SEND:
            exclude = sequencer.hold_back(op)  # replays pending, or just sent
        self.counters.messages_out += fan_out(
            wires,
            data_frame(op.payload, op.binary),
            exclude,
            self.config.max_backpressure,
            self._flusher,
            volatile=op.volatile,
            key=op.reason or None,
        )

    def _send(self, op: Op) -> None:
        conn = self.local.conns.get(op.target)
        if conn is not None:
            conn._wire.send_frame(
                data_frame(op.payload, op.binary), op.volatile, op.reason or None
            )

    def _disconnect(self, op: Op) -> None:
        conn = self.local.conns.get(op.target)
        if conn is not None:
            conn._wire.start_close(op.code, op.reason)

    def _user_disconnect(self, op: Op) -> None:
        wires = self.local.users.get(op.target)
        for wire in list(wires or ()):
            wire.start_close(op.code, op.reason)

    def _join_leave(self, op: Op) -> None:
        conn = self.local.conns.get(op.target)
        if conn is None:
            return
        room = op.payload.decode()
        if op.kind is OpKind.JOIN:
            spec = self.sequencer.spec(room)
            if spec is not None and room not in conn.rooms and self._loop:
                # A history room: the connection is told its position
                # (room.joined), from which its client resumes after a
                # reconnect. The join itself is the task's first step.
                task = self._loop.create_task(
                    self.sequencer.join(conn, room, spec, None)
                )
                self._history_joins.add(task)
                task.add_done_callback(self._history_joins.discard)
                return
            self._join(conn, room)
        else:
            self._leave(conn, room)

    # -- the cluster -----------------------------------------------------------------

    def meet(
        self,
        peer: str,
        life: str,
        intro: dict[str, Any] | None = None,
        *,
        started: bool = False,
    ) -> bool:
        """Note ``peer`` living ``life``. Newly met (started, restarted, or
        heard again after we dropped it): each introduces itself to the
        other, and unless it just ``started`` (it holds nothing yet) we ask
        it for its part of the rooms we follow."""
        assert self._loop is not None
        intro = intro or {}
        new = self.membership.meet(
            peer,
            life,
            self._loop.time(),
            pid=intro.get("pid", 0),
            machine=intro.get("machine", ""),
        )
        if new:
            self.tracker.introduce(peer)
            self.outbox.request_sync(peer)
            if not started:
                self.tracker.resync(peer)
            self._met()
        return new

    def peer_gone(self, peer: str) -> None:
        """A peer was dropped: forget what it held; its questions need no answer."""
        self.tracker.drop(peer)
        self.sequencer.peer_gone(peer)
        self.queries.forget(peer)
        self.requests.peer_gone(peer)

    def _peer(self, op: Op) -> None:
        """HELLO, SYNC, BEAT, BYE: who is in the cluster, and since when."""
        peer = op.origin
        if peer == self.worker or self._loop is None:
            return
        membership = self.membership
        if op.kind is OpKind.HELLO:
            hello = ujson.loads(op.payload)
            self.meet(peer, hello["life"], hello, started=True)
        elif op.kind is OpKind.BEAT:
            # "<life> <sample as JSON>": the peer's counters ride on its beat.
            raw_life, _, sample = op.payload.partition(b" ")
            life = raw_life.decode()
            self.meet(peer, life)
            if membership.knows(peer, life):  # not a late beat of an old life
                membership.sample(peer, sample, self._loop.time())
        elif op.kind is OpKind.SYNC:
            if op.reason == "request":
                intro = ujson.loads(op.payload) if op.payload else {}
                rooms = intro.get("rooms")
                if rooms is not None:  # the rooms whose state it wants
                    if "life" in intro and not membership.is_dead(intro["life"]):
                        self.meet(peer, intro["life"])
                    self.tracker.answer(peer, rooms)
                elif "life" not in intro or not self.meet(peer, intro["life"], intro):
                    self.tracker.introduce(peer)
                return
            part = ujson.loads(op.payload)
            if membership.is_dead(part["life"]):
                return
            self.meet(peer, part["life"], part)
            if not membership.knows(peer, part["life"]):
                return
            if "room" in part:
                self.tracker.apply_answer(peer, part)
            elif part.get("ask"):  # it dropped ops for us: ask it again
                self.tracker.resync(peer)
        elif op.kind is OpKind.BYE and membership.knows(peer, op.payload.decode()):
            membership.drop(peer, "stopped")

    def _presence(self, op: Op) -> None:
        if op.origin == self.worker:
            return  # applied here when it happened
        if not self.tracker.follows(op.target):
            return  # a room nobody here is in (the relay brings every room's)
        batch = ujson.loads(op.payload)
        batch_life = batch.get("life", "")
        if self.membership.is_dead(batch_life):
            return  # the last words of a process already gone
        if self._loop is not None:
            self.meet(op.origin, batch_life)
        self.tracker.apply_presence(op.origin, batch)
