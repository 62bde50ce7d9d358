"""This process's connections as they arrive, move between rooms, and go.

:class:`~sanic_ws_ext.index.LocalIndex` is the bookkeeping alone;
:class:`Sessions` does what each change means for the other parts: the
delivery's interest in a room, presence, counters and per-client limits,
and, at shutdown, waiting until every connection is gone.

Rules this module keeps:

- A connection is in the index from its upgrade until its socket is gone
  (not until its disconnect handlers end); leaving, it leaves every room.
- The delivery is told a room is wanted when the room's first member here
  joins, and no longer wanted when its last one leaves or is gone.
- A connection already closed joins no room, so it cannot be left in one.
- Shutdown is over once no connection is left and no handler runs; a client
  that does not answer its close is dropped after ``WS_CLOSE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .errors import CloseCode
from .wire import ConnectionState

if TYPE_CHECKING:
    from .config import WSConfig
    from .connection import Connection
    from .delivery import Delivery
    from .index import LocalIndex
    from .limits import ClientLimits
    from .stats import Counters
    from .tracker import Tracker

__all__ = ["Sessions"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

_SHUTDOWN = "server shutting down"


class Sessions:
    """Adds, moves and removes this process's connections, and drains them."""

    def __init__(
        self,
        config: WSConfig,
        local: LocalIndex,
        counters: Counters,
        limits: ClientLimits,
        tracker: Tracker,
        delivery: Delivery,
    ) -> None:
        self.config = config
        self.local = local
        self.counters = counters
        self.limits = limits
        self.tracker = tracker
        self.delivery = delivery
        # Set while no connection is here and no handler runs.
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, conn: Connection) -> None:
        """``conn`` was upgraded here."""
        self.local.add(conn)
        self.counters.opened += 1
        self.limits.opened(conn.remote)
        self._idle.clear()

    def lost(self, conn: Connection) -> bool:
        """``conn``'s socket is gone; False if it was gone already."""
        if not self.local.remove(conn):
            return False
        for room in conn.rooms:
            self._left(conn, room)
        self.counters.closed += 1
        self.limits.closed(conn.remote)
        log.debug(
            "websocket %s closed %s %s", conn.id, conn.close_code, conn.close_reason
        )
        return True

    def join(self, conn: Connection, room: str) -> None:
        if conn.state is ConnectionState.CLOSED or not self.local.join(conn, room):
            return
        if len(self.local.rooms[room]) == 1:
            self.delivery.interest(room, True)  # the first member here
        self.tracker.joined(conn, room)

    def leave(self, conn: Connection, room: str) -> None:
        if self.local.leave(conn, room):
            self._left(conn, room)

    def _left(self, conn: Connection, room: str) -> None:
        if room not in self.local.rooms:
            self.delivery.interest(room, False)  # the last member here
        self.tracker.left(conn, room)

    def settled(self) -> None:
        """No handler runs any more: shutdown may be over."""
        if not self.local.conns:
            self._idle.set()

    async def close_all(
        self, cancel_handlers: Callable[[float], Awaitable[None]]
    ) -> None:
        """Close every connection with 1001 and wait until all are gone.

        What was queued before the close frame is sent first. Clients that
        do not answer within ``WS_CLOSE_TIMEOUT`` are dropped; handlers
        still running after another ``WS_CLOSE_TIMEOUT`` are cancelled.
        """
        timeout = self.config.close_timeout
        for conn in list(self.local.conns.values()):
            conn._wire.start_close(CloseCode.GOING_AWAY, _SHUTDOWN)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout + 1)
        except TimeoutError:
            for conn in list(self.local.conns.values()):
                conn._wire.abort(CloseCode.GOING_AWAY, _SHUTDOWN)
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("websocket handlers still running at shutdown: cancelled")
                # Awaited, so that their ``finally`` blocks (which may
                # publish) run while delivery still works.
                await cancel_handlers(timeout)
