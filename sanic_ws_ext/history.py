"""History of rooms: what a room declared with ``history=`` keeps. Pure.

A room's publications are numbered by its sequencer (one process per room,
see :mod:`sanic_ws_ext.sequencer`): ``offset`` grows by one per publication,
and ``epoch`` names the run of offsets. An epoch is random and made when a
sequencer starts keeping a room, so it changes whenever the room's history was
lost (the sequencer's process restarted): offsets then start again at 1, and a
client holding an old epoch knows it cannot be brought up to date.

Values here (:class:`History`, :class:`Position`, :class:`Page`) are what apps
see; :class:`RoomLog` is one room's store inside its sequencer.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import ujson

__all__ = [
    "History",
    "Page",
    "Position",
    "RoomLog",
    "parse_since",
    "stamp",
]

#: Most publications one room may keep: a replay larger than a client's
#: backpressure limit is refused anyway, this only bounds a typo.
MAX_SIZE = 100_000
#: Longest epoch accepted from a client (ours are 12 characters).
MAX_EPOCH = 64


@dataclass(frozen=True, slots=True)
class History:
    """What a history room keeps: ``room(..., history=History(...))``.

    ``size``: publications kept; ``ttl``: seconds each is kept (None: until
    pushed out by newer ones); ``on_join``: how many of the latest a member
    joining without ``since`` gets before ``room.joined`` (the "latest value"
    of a ticker is ``History(size=1, on_join=1)``, also spelled
    ``history="latest"``).
    """

    size: int
    ttl: float | None = None
    on_join: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise TypeError(f"history size must be an int, got {self.size!r}")
        if not 1 <= self.size <= MAX_SIZE:
            raise ValueError(f"history size must be 1 to {MAX_SIZE}, got {self.size}")
        ttl = self.ttl
        if ttl is not None and (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not math.isfinite(ttl)
            or ttl <= 0
        ):
            raise ValueError(
                f"history ttl must be positive seconds or None, got {ttl!r}"
            )
        on_join = self.on_join
        if (
            not isinstance(on_join, int)
            or isinstance(on_join, bool)
            or not 0 <= on_join <= self.size
        ):
            raise ValueError(f"history on_join must be 0 to size, got {on_join!r}")

    @classmethod
    def of(cls, value: object) -> History | None:
        """A declaration's ``history=`` value: None, an int size, "latest", or one."""
        if value is None:
            return None
        if isinstance(value, History):
            return value
        if value == "latest":
            return cls(size=1, on_join=1)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(size=value)
        raise TypeError(
            f"history must be None, a size, 'latest' or a History, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class Position:
    """Where a room's stream is: the last offset, in an epoch."""

    offset: int
    epoch: str

    def as_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class Page:
    """What ``ws.history(room, since, limit)`` returns.

    ``publications`` are envelopes as clients receive them (``type``,
    ``data``, ``timestamp``, ``room``, ``offset``, ``epoch``), oldest first.
    ``recovered`` is False when ``since`` could not be continued (too old, or
    another epoch): ``publications`` are then the latest ones and the caller
    should reload its state. ``position`` is the room's current one.
    """

    position: Position
    recovered: bool
    publications: list[dict[str, Any]] = field(default_factory=list)


def parse_since(value: object) -> Position | None:
    """A ``since`` given by a client or the app; ValueError says what is wrong."""
    if value is None or isinstance(value, Position):
        return value
    if not isinstance(value, dict):
        raise ValueError('since must be an object {"offset": N, "epoch": E}')
    offset = value.get("offset")
    epoch = value.get("epoch")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError("since.offset must be an integer >= 0")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH:
        raise ValueError(f"since.epoch must be a string of 1 to {MAX_EPOCH} characters")
    return Position(offset, epoch)


def stamp(body: bytes, room: str, offset: int, epoch: str) -> bytes:
    """An encoded envelope with its position added as top-level keys.

    Spliced into the bytes, not re-encoded: the body is what
    ``encode_envelope`` made, a JSON object with other keys.
    """
    head = ujson.dumps(
        {"room": room, "offset": offset, "epoch": epoch},
        ensure_ascii=False,
        escape_forward_slashes=False,
    ).encode()
    return head[:-1] + b"," + body[1:]


class RoomLog:
    """One room's publications, at its sequencer.

    Entries are ``(offset, stored at, stamped body)``; the oldest leave when
    the room holds ``size`` or they are older than ``ttl``.
    """

    __slots__ = ("bytes", "entries", "epoch", "offset", "touched")

    def __init__(self, now: float) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self.offset = 0
        self.entries: deque[tuple[int, float, bytes]] = deque()
        self.bytes = 0
        #: When it was last written or read (loop time): idle logs go.
        self.touched = now

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)

    def append(self, room: str, body: bytes, now: float, spec: History) -> bytes:
        """Number and keep ``body``; the stamped bytes every member gets."""
        self.offset += 1
        stamped = stamp(body, room, self.offset, self.epoch)
        entries = self.entries
        entries.append((self.offset, now, stamped))
        self.bytes += len(stamped)
        while len(entries) > spec.size:
            self.bytes -= len(entries.popleft()[2])
        self.touched = now
        return stamped

    def expire(self, now: float, ttl: float | None) -> None:
        if ttl is None:
            return
        entries = self.entries
        while entries and now - entries[0][1] > ttl:
            self.bytes -= len(entries.popleft()[2])

    def after(self, since: Position) -> list[bytes] | None:
        """Every publication after ``since``, or None if some are gone.

        None also for another epoch, and for an offset this epoch has not
        reached (a client cannot be ahead of the sequencer).
        """
        if since.epoch != self.epoch or since.offset > self.offset:
            return None
        missing = self.offset - since.offset
        if missing == 0:
            return []
        if len(self.entries) < missing:
            return None  # the oldest of them were pushed out or expired
        return self.latest(missing)

    def latest(self, n: int) -> list[bytes]:
        # From the right end: a deque indexes its middle in linear time.
        newest = [entry[2] for entry in islice(reversed(self.entries), n)]
        newest.reverse()
        return newest
