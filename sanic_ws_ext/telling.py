"""Telling this process's members what presence changed in their rooms.

The :class:`~sanic_ws_ext.tracker.Tracker` decides, at the end of each
``WS_PRESENCE_INTERVAL``, what each changed room's members are owed; a
:class:`Teller` sends it.

Rules this module keeps:

- A member of a changed room gets one frame per interval: ``presence.state``
  for those who joined in it (encoded once for all of them),
  ``presence.diff`` for the others, ``presence.count`` for counted rooms.
- Rooms are told one at a time, in the order the intervals ended, about
  ``_TELL_WORK`` entries and members per loop pass: a worker's death told
  all at once was one callback of 15 to 27 ms (bench/scale.py, issue 14).
- Those who joined after the interval ended are not told its diff: the
  next interval sends them the state.
- The frames are written by the flusher's passes, not in the pass that
  queues them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .envelope import encode_envelope, encode_envelope_json
from .frames import OP_TEXT, encode_frame
from .wire import fan_out

if TYPE_CHECKING:
    from .config import WSConfig
    from .index import LocalIndex
    from .presence import Counts, RoomDiff
    from .stats import Counters
    from .wire import Flusher, Wire

__all__ = ["Teller"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Entries encoded plus members told per loop pass: about 2 ms of CPU on a
#: 2-core machine. A room is told whole.
_TELL_WORK = 4000


class Teller:
    """Sends members their rooms' presence frames, a room at a time."""

    def __init__(
        self,
        config: WSConfig,
        local: LocalIndex,
        counters: Counters,
        counts: Counts,
        *,
        joined_since: Callable[[str], set[Wire] | None],
    ) -> None:
        self.config = config
        self.local = local
        self.counters = counters
        self.counts = counts
        # Who joined a room since the interval being told ended (the
        # tracker's newcomers): they get the next interval's state instead.
        self._joined_since = joined_since
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        # What is owed, a room per item, in order: (work done, frames sent).
        self._queue: deque[Callable[[], tuple[int, int]]] = deque()
        self._scheduled = False

    def start(self, loop: asyncio.AbstractEventLoop, flusher: Flusher) -> None:
        self._loop = loop
        self._flusher = flusher

    def stop(self) -> None:
        self._queue.clear()

    @property
    def busy(self) -> bool:
        """An interval is still being told."""
        return bool(self._queue)

    # -- what is owed ------------------------------------------------------------

    def diff(
        self, diff: RoomDiff, fresh: set[Wire] | None, state: bytes | None
    ) -> None:
        """``diff.room``'s members get the diff; ``fresh`` ones, who joined
        in the interval, the ``state`` instead."""
        self._queue.append(functools.partial(self._tell_diff, diff, fresh, state))

    def state(self, room: str, fresh: set[Wire], state: bytes) -> None:
        """``fresh`` members of ``room`` get its ``state``."""
        self._queue.append(functools.partial(self._tell_state, room, fresh, state))

    def count(self, room: str) -> None:
        """Every member of counted ``room`` gets its total."""
        self._queue.append(functools.partial(self._tell_count, room))

    # -- telling -----------------------------------------------------------------

    def tell(self) -> None:
        """Start telling what is queued, unless a pass is already scheduled."""
        if not self._scheduled:
            self.tell_some()

    def tell_some(self, whole: bool = False) -> None:
        """Tell rooms until about _TELL_WORK entries and members are done;
        the rest in the next pass. ``whole``: all of it now."""
        self._scheduled = False
        queue = self._queue
        done = 0
        sent = 0
        while queue and (whole or done < _TELL_WORK):
            try:
                work, told = queue.popleft()()
            except Exception:
                # One room's failure must not stop the others being told.
                log.exception("websocket presence: telling members failed")
                continue
            done += work
            sent += told
        self.counters.messages_out += sent
        if queue and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self.tell_some)

    def _members(self, room: str) -> set[Wire]:
        """``room``'s local members who are owed what is being told."""
        members = self.local.rooms.get(room)
        if not members:
            return set()
        later = self._joined_since(room)
        return members - later if later else members

    def _tell_diff(
        self, diff: RoomDiff, fresh: set[Wire] | None, state: bytes | None
    ) -> tuple[int, int]:
        members = self._members(diff.room)
        if not members:
            return 1, 0
        sent = 0
        others = members - fresh if fresh else members
        if others:
            sent += self._send(others, "presence.diff", diff.encode())
        if fresh and state is not None:
            sent += self._send(fresh & members, "presence.state", state)
        return len(diff) + len(members), sent

    def _tell_state(self, room: str, fresh: set[Wire], state: bytes) -> tuple[int, int]:
        members = self._members(room)
        return len(fresh) + 1, self._send(fresh & members, "presence.state", state)

    def _tell_count(self, room: str) -> tuple[int, int]:
        members = self.local.rooms.get(room)
        if not members:
            return 1, 0
        total = self.counts.total(room)
        data = {"room": room, "connections": total}
        return len(members), self._send(members, "presence.count", data)

    def _send(
        self, wires: Iterable[Wire], type_: str, data: dict[str, Any] | bytes
    ) -> int:
        """``data``: a dict, or JSON already encoded (diffs and states: see
        :func:`~sanic_ws_ext.presence._by_key` for why)."""
        assert self._flusher is not None
        body = (
            encode_envelope_json(type_, data)
            if isinstance(data, bytes)
            else encode_envelope(type_, data)
        )
        frame = encode_frame(OP_TEXT, body)
        # Written by the flusher's passes, not in this one: telling every
        # room's members is work enough for one loop pass.
        return fan_out(
            # A tuple, as the applier's: a room's messages after this may
            # join its run (an equal tuple of the same set, same order).
            tuple(wires),
            frame,
            (),
            self.config.max_backpressure,
            self._flusher,
            account=False,
        )
