"""Cluster-wide questions: who is in a room, which rooms and users exist.

Membership of rooms without presence, and users, are known only to the
process holding the connections: nothing about them is replicated, so the
cluster is asked when an app wants them.

Rules this module keeps:

- A question is one ``QUERY`` op to every process; each answers for its own
  connections with one ``REPLY`` to the asker, and the asker answers for
  itself without publishing.
- The asker waits for live (not suspect) peers only, at most
  ``WS_QUERY_TIMEOUT``, then answers with what it has (and logs who was
  silent): one stuck process cannot hang a call. A peer dropped meanwhile is
  no longer waited for (:meth:`Queries.forget`); a late reply is ignored.
- Rooms with full presence are answered from this process's presence table
  at once, without asking anyone, where this process follows the room
  (it has members of it); elsewhere they are asked too, and each process
  answers with its own entries.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ujson

from .delivery import Op, OpKind
from .presence import PROCESS, Entry
from .tracker import chunks

if TYPE_CHECKING:
    from .cluster import Membership
    from .config import WSConfig
    from .index import LocalIndex
    from .outbox import Outbox
    from .tracker import Tracker

__all__ = ["Member", "Queries"]

log = logging.getLogger("sanic.root.sanic_ws_ext")


@dataclass(frozen=True, slots=True)
class Member:
    """One connection in a room, as :meth:`ConnectionManager.members` lists it.

    ``presence`` is the metadata members of rooms with full presence see
    (empty for other rooms).
    """

    id: str
    user: str | None
    worker: str
    presence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "worker": self.worker,
            "presence": self.presence,
        }


class Queries:
    """Asks the cluster, and answers its questions for this process."""

    def __init__(
        self,
        config: WSConfig,
        local: LocalIndex,
        membership: Membership,
        tracker: Tracker,
        outbox: Outbox,
        *,
        worker: str,
    ) -> None:
        self.config = config
        self.local = local
        self.membership = membership
        self.tracker = tracker
        self.outbox = outbox
        self.worker = worker
        # Questions awaiting answers: id -> (answers, expected, all answered).
        self._waiting: dict[str, tuple[dict[str, Any], set[str], asyncio.Event]] = {}

    # -- asking ----------------------------------------------------------------

    async def members(self, room: str) -> list[Member]:
        """The members of ``room``, cluster-wide."""
        if self.tracker.full(room) and self.tracker.holds(room):
            return [_present(entry) for entry in self.tracker.table.entries(room)]
        answers = await self.ask({"q": "members", "room": room})
        return [
            Member(m["id"], m["user"], m["worker"], m.get("presence") or {})
            for found in answers.values()
            for m in found or ()
        ]

    async def rooms(self) -> dict[str, int]:
        """Every room with a member, and its size."""
        return _sum_sizes(await self.ask({"q": "rooms"}))

    async def users(self) -> dict[str, int]:
        """Every connected user, and their number of connections."""
        return _sum_sizes(await self.ask({"q": "users"}))

    async def ask(self, question: dict[str, Any]) -> dict[str, Any]:
        """Ask every live process (this one included); their answers by name."""
        answers: dict[str, Any] = {self.worker: self.answer(question)}
        expected = set(self.membership.alive())
        if not expected or not self.outbox.clustered:
            return answers
        qid = uuid.uuid4().hex
        done = asyncio.Event()
        self._waiting[qid] = (answers, expected, done)
        try:
            self.outbox.publish(
                OpKind.QUERY, payload=ujson.dumps({"id": qid, **question}).encode()
            )
            try:
                await asyncio.wait_for(done.wait(), self.config.query_timeout)
            except TimeoutError:
                log.warning(
                    "cluster question %r: no answer from %s within %gs",
                    question.get("q"),
                    ", ".join(sorted(expected)),
                    self.config.query_timeout,
                )
        finally:
            del self._waiting[qid]
        return answers

    def forget(self, peer: str) -> None:
        """``peer`` was dropped: no question waits for it any more."""
        for _, expected, done in self._waiting.values():
            expected.discard(peer)
            if not expected:
                done.set()

    # -- answering ---------------------------------------------------------------

    def answer(self, question: dict[str, Any]) -> Any:
        """This process's part of a cluster-wide question."""
        kind = question.get("q")
        if kind == "members":
            room = str(question.get("room"))
            if self.tracker.full(room):  # with each one's presence
                return [
                    _present(entry).as_dict()
                    for entry in self.tracker.table.entries(room)
                    if entry[PROCESS] == self.worker
                ]
            wires = self.local.rooms.get(room, ())
            return [
                {"id": w.conn.id, "user": w.conn.user, "worker": self.worker}
                for w in wires
            ]
        if kind == "rooms":
            return {room: len(wires) for room, wires in self.local.rooms.items()}
        if kind == "users":
            return {user: len(wires) for user, wires in self.local.users.items()}
        return None

    def on_query(self, op: Op) -> None:
        """A peer asks: answer it alone, in parts if the answer is large (a
        room of 100,000, or members with their presence)."""
        if op.origin == self.worker:
            return
        question = ujson.loads(op.payload)
        qid = question.get("id")
        answer = self.answer(question)
        if isinstance(answer, list):
            items = [ujson.dumps(item).encode() for item in answer]
            opening, closing = b"[", b"]"
        elif isinstance(answer, dict):
            items = [b"%s:%s" % (_json(k), _json(v)) for k, v in answer.items()]
            opening, closing = b"{", b"}"
        else:
            items, opening, closing = [], b"", b""
        budget = self.config.max_publish // 2 - 512
        parts = list(chunks(items, budget)) if items else []
        if not parts:
            body = ujson.dumps({"id": qid, "answer": answer}).encode()
            self.outbox.publish(OpKind.REPLY, payload=body, to=op.origin)
            return
        for index, part in enumerate(parts):
            more = b"true" if index < len(parts) - 1 else b"false"
            body = b'{"id":%s,"more":%s,"answer":%s%s%s}' % (
                _json(qid),
                more,
                opening,
                b",".join(part),
                closing,
            )
            self.outbox.publish(OpKind.REPLY, payload=body, to=op.origin)

    def on_reply(self, op: Op) -> None:
        """A peer answered one of our questions (or sent a part of it)."""
        reply = ujson.loads(op.payload)
        waiting = self._waiting.get(reply.get("id"))
        if waiting is None:
            return  # too late: the question timed out
        answers, expected, done = waiting
        part = reply.get("answer")
        so_far = answers.get(op.origin)
        if isinstance(so_far, list) and isinstance(part, list):
            so_far.extend(part)
        elif isinstance(so_far, dict) and isinstance(part, dict):
            so_far.update(part)
        else:
            answers[op.origin] = part
        if reply.get("more"):
            return
        expected.discard(op.origin)
        if not expected:
            done.set()


def _json(value: Any) -> bytes:
    return ujson.dumps(value).encode()


def _present(entry: Entry) -> Member:
    """A member of a room with full presence, from its entry."""
    _, key, _, meta, process, conn = entry
    return Member(
        id=conn,
        user=None if key.startswith("~") else key,
        worker=process,
        presence={k: v for k, v in ujson.loads(meta).items() if k != "ref"},
    )


def _sum_sizes(answers: dict[str, Any]) -> dict[str, int]:
    """Each process's ``{name: size}`` answer, summed over processes."""
    totals: dict[str, int] = {}
    for found in answers.values():
        for name, size in found.items():
            totals[name] = totals.get(name, 0) + size
    return totals
