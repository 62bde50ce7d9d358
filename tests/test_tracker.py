"""Presence routed by interest: the versions that order a room's ops and a
process's answers, which travel on different channels (issue 15).

Two real trackers; what one publishes is kept and handed to the other in
the order a test chooses (on a Redis Cluster a room's channel and a
process's own have no common order, and a message can be lost). Each test
checks what the follower ends up holding against what the sender holds.
The same exchanges over real Redis are in tests/test_scale.py and
tests/test_backplane.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import ujson

from sanic_ws_ext.config import WSConfig
from sanic_ws_ext.index import LocalIndex
from sanic_ws_ext.presence import PROCESS
from sanic_ws_ext.rooms import RoomPolicies, RoomSpec
from sanic_ws_ext.stats import Counters
from sanic_ws_ext.tracker import Tracker
from sanic_ws_ext.wire import Flusher

from .helpers import eventually


@dataclass
class Member:
    """What the tracker reads of a connection."""

    id: str
    user: str | None = None
    worker: str = ""
    presence: dict[str, Any] = field(default_factory=dict)
    _wire: object = field(default_factory=object)


@dataclass
class Sent:
    kind: str
    to: str | None
    room: str
    body: dict[str, Any]


class Process:
    """A tracker and what it published, not yet delivered."""

    def __init__(self, name: str, peers: tuple[str, ...] = (), **config: Any) -> None:
        self.name = name
        self.local = LocalIndex()
        self.members: dict[str, Member] = {}
        self.out: list[Sent] = []
        policies = RoomPolicies([RoomSpec("lobby", presence="full")])
        self.tracker = Tracker(
            WSConfig.from_mapping(config),
            policies,
            self.local,
            Counters(),
            worker=name,
            life=f"{name}-life",
            publish=self._publish,
            # With peers: a cluster that asks them (once the tracker runs on
            # a loop: see started()); without, it asks nobody.
            peers=lambda: peers,
            subscribed=_subscribed if peers else None,
            clustered=lambda: bool(peers),
        )

    def started(self) -> None:
        loop = asyncio.get_running_loop()
        self.tracker.start(loop, Flusher(loop))

    def _publish(self, payload: bytes, to: str | None, kind: str, room: str) -> None:
        self.out.append(Sent(kind, to, room, ujson.loads(payload)))

    def join(self, conn_id: str) -> None:
        member = self.members[conn_id] = Member(conn_id, worker=self.name)
        self.local.rooms.setdefault("lobby", set()).add(member._wire)  # type: ignore[arg-type]
        self.tracker.joined(member, "lobby")  # type: ignore[arg-type]

    def leave(self, conn_id: str) -> None:
        member = self.members.pop(conn_id)
        self.local.rooms["lobby"].discard(member._wire)
        self.tracker.left(member, "lobby")  # type: ignore[arg-type]

    def publish(self) -> list[Sent]:
        """This interval's changes, published; what went out."""
        self.tracker._publish_changes()
        return self.take()

    def take(self) -> list[Sent]:
        out, self.out = self.out, []
        return out

    def conns(self, of: str | None = None) -> set[str]:
        """The connections in the lobby this process holds (of ``of``)."""
        return {
            e[5]
            for e in self.tracker.table.entries("lobby")
            if of is None or e[PROCESS] == of
        }


async def _subscribed(room: str) -> None:
    pass  # the room's channel is heard at once here


def deliver(to: Process, sent: list[Sent], origin: str) -> None:
    for item in sent:
        if item.kind == "presence":
            to.tracker.apply_presence(origin, item.body)
        elif item.kind == "answer":
            to.tracker.apply_answer(origin, item.body)
        elif item.kind == "request":
            to.tracker.answer(origin, item.body["rooms"])


def pair(**config: Any) -> tuple[Process, Process]:
    """A with members in the lobby, B following it, in step."""
    a, b = Process("a", **config), Process("b", **config)
    a.join("a1")
    deliver(b, a.publish(), "a")
    b.join("b1")  # B follows the lobby
    a.publish()
    b.publish()
    b.tracker.resync("a")  # B asks A, as it does for a peer it meets
    deliver(a, b.take(), "b")
    deliver(b, a.take(), "a")
    assert b.conns("a") == {"a1"}
    return a, b


def test_an_answer_overtaken_by_later_ops_still_applies_them_in_order() -> None:
    a, b = Process("a"), Process("b")
    a.join("a1")
    first = a.publish()  # v1
    b.join("b1")
    b.tracker.resync("a")  # B waits for A's answer: A's ops are held
    request = b.take()
    a.join("a2")
    second = a.publish()  # v2: the answer below is at v2
    deliver(a, request, "b")
    answer = a.take()  # at v2: a1 and a2
    a.join("a3")
    third = a.publish()  # v3
    # The room's channel is faster than A's answer: v3 and v1 first.
    deliver(b, third + first, "a")
    assert b.conns("a") == set()  # held until the answer
    deliver(b, answer, "a")
    assert b.conns("a") == {"a1", "a2", "a3"}
    deliver(b, second, "a")  # late: older than the answer, dropped
    assert b.conns("a") == a.conns("a")


def test_a_lost_op_is_asked_about_again() -> None:
    a, b = pair()
    a.join("a2")
    a.publish()  # lost on the way
    a.join("a3")
    deliver(b, a.publish(), "a")  # follows an op B never saw
    assert b.conns("a") == {"a1"}  # held, not applied past the hole
    request = b.take()
    assert [(s.kind, s.to, s.body["rooms"]) for s in request] == [
        ("request", "a", ["lobby"])
    ]
    a.leave("a3")
    leave = a.publish()
    deliver(a, request, "b")
    deliver(b, leave + a.take(), "a")  # the leave overtakes the answer
    assert b.conns("a") == a.conns("a") == {"a1", "a2"}


def test_a_lost_last_leave_is_mended_by_the_next_start() -> None:
    """A's last member leaves and that op is lost: A holds nothing in the
    room, so its next op starts anew and B drops the ghost."""
    a, b = pair()
    a.leave("a1")
    a.publish()  # lost
    assert a.conns("a") == set()
    a.join("a9")
    start = a.publish()
    assert start[0].body["p"] == 0
    deliver(b, start, "a")
    assert b.conns("a") == {"a9"}
    assert b.take() == []  # nothing to ask: a start is whole


def test_a_large_answer_comes_in_parts_and_replaces_the_senders_part() -> None:
    a, b = pair(WS_MAX_PUBLISH=8192)
    for n in range(200):
        a.join(f"x{n}")
    a.publish()  # lost: B asks again
    b.tracker.resync("a")
    deliver(a, b.take(), "b")
    answer = a.take()
    assert len(answer) > 1
    assert all(len(ujson.dumps(s.body)) < 8192 // 2 for s in answer)
    deliver(b, answer[:-1], "a")
    deliver(b, answer[-1:], "a")
    assert b.conns("a") == a.conns("a") and len(b.conns("a")) == 201
    assert b.conns("b") == {"b1"}  # its own part untouched


def test_a_stale_answer_is_ignored() -> None:
    a, b = pair()
    b.tracker.resync("a")
    deliver(a, b.take(), "b")
    old_answer = a.take()
    a.join("a2")
    newer = a.publish()
    b.tracker.resync("a")
    deliver(a, b.take(), "b")
    new_answer = a.take()
    deliver(b, new_answer, "a")
    deliver(b, newer + old_answer, "a")  # both older than what B holds
    assert b.conns("a") == {"a1", "a2"}


def test_an_answer_lists_only_what_was_published() -> None:
    """A join still pending when A answers is published first: its leave
    then reaches B (were it listed unpublished, the join and leave would
    net out and B keep a ghost)."""
    a, b = pair()
    a.join("a2")  # pending: the interval has not ended
    b.tracker.resync("a")
    deliver(a, b.take(), "b")
    sent = a.take()  # the pending join, then the answer
    assert [s.kind for s in sent] == ["presence", "answer"]
    a.leave("a2")
    deliver(b, sent + a.publish(), "a")
    assert b.conns("a") == a.conns("a") == {"a1"}


async def test_an_unanswered_request_is_sent_again() -> None:
    """A request lost on the way (or its answer) is sent again while the
    peer lives and has not answered, and the answer then applies."""
    a, b = pair(WS_QUERY_TIMEOUT=0.05)
    b.started()
    a.join("a2")
    a.publish()  # lost
    b.tracker.resync("a")
    assert [s.kind for s in b.take()] == ["request"]  # lost too

    async def asked_again() -> bool:
        return any(s.kind == "request" and s.to == "a" for s in b.out)

    await eventually(asked_again, "B asks A again")
    deliver(a, b.take(), "b")
    deliver(b, a.take(), "a")
    assert b.conns("a") == {"a1", "a2"}
    await b.tracker.stop()


async def test_a_peer_met_again_during_its_removal_keeps_what_it_answers() -> None:
    """B drops A (silent) and removes its entries a slice per loop pass; A
    is heard again before the slices are done: what A then answers must
    not be removed by the slices still to come."""
    a, b = pair()
    for n in range(5000):
        a.join(f"x{n}")
    b.tracker.resync("a")
    deliver(a, b.take(), "b")
    deliver(b, a.take(), "a")
    assert len(b.conns("a")) == 5001
    b.started()
    b.tracker.drop("a")
    await asyncio.sleep(0)  # one slice
    assert 0 < len(b.conns("a")) < 5001
    b.tracker.resync("a")  # met again
    deliver(a, b.take(), "b")
    deliver(b, a.take(), "a")
    for _ in range(5):
        await asyncio.sleep(0)  # the slices' turns, had they stayed
    assert b.conns("a") == a.conns("a")
    await b.tracker.stop()


async def test_a_lost_answer_to_the_first_request_is_asked_for_again() -> None:
    """B's first member makes it ask everyone; A's answer is lost: after
    WS_QUERY_TIMEOUT B tells its members what it has and asks A alone
    again, and A's part arrives then."""
    a = Process("a")
    b = Process("b", peers=("a",), WS_QUERY_TIMEOUT=0.05, WS_RELAY_BEAT=0.05)
    a.join("a1")
    a.publish()
    b.started()
    b.join("b1")

    async def asked(to: str | None) -> bool:
        return any(s.kind == "request" and s.to == to for s in b.out)

    await eventually(lambda: asked(None), "B asks everyone")
    deliver(a, b.take(), "b")
    a.take()  # the answer is lost
    await eventually(lambda: asked("a"), "B asks A alone")
    assert b.tracker.holds("lobby")  # members were told what B had
    deliver(a, b.take(), "b")
    deliver(b, a.take(), "a")
    assert b.conns() == {"a1", "b1"}
    await b.tracker.stop()
