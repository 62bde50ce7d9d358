"""The two heartbeats of a process: one for its clients, one for its peers.

Each is one timer for the whole process, never a timer per connection.

Rules this module keeps:

- :class:`Heartbeat` (the clients'): every ``min(WS_PING_INTERVAL,
  WS_PING_TIMEOUT, 5 s) / 5`` seconds (the timing in the configuration
  reference) it sweeps every connection, a slice per loop pass. Any frame
  received is a sign of life (the wire notes when); a connection silent
  for ``WS_PING_INTERVAL`` is pinged (the same two bytes for all), and one
  still silent ``WS_PING_TIMEOUT`` after the ping is aborted with 1011
  "ping timeout".
  A connection whose reading is paused cannot have its pong read: it is
  alive while the kernel holds more from its peer than at the last sweep.
- The same sweep keeps the expiry of connections that have one
  (``Accept(expires_at=...)``): within ``WS_AUTH_REFRESH_AHEAD`` of it
  the client is sent ``auth.refresh`` once (again after each accepted
  refresh), and at it the connection is closed with 4401 "token
  expired". Its precision is the sweep's tick, which is at most a fifth
  of ``WS_AUTH_REFRESH_AHEAD``.
- ``WS_PING_INTERVAL = None`` runs no timer, unless the app has verify or
  refresh hooks (which may give expiries): then the sweep runs for the
  expiries alone.
- :class:`PeerBeat` (the cluster's): every ``WS_RELAY_BEAT``, in one process
  too, it samples this process's counters (a new rate interval), sends the
  sample to the peers as our BEAT, and runs the checks that need no timer
  of their own: handlers past ``WS_HANDLER_TIMEOUT``, history logs idle too
  long, peers gone silent. A
  failing beat is logged and the next one still comes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .envelope import encode_envelope
from .errors import CloseCode
from .frames import data_frame
from .wire import ConnectionState

if TYPE_CHECKING:
    from .cluster import Membership
    from .config import WSConfig
    from .dispatch import Dispatcher
    from .health import Health
    from .index import LocalIndex
    from .outbox import Outbox
    from .sequencer import Sequencer
    from .wire import Wire

__all__ = ["Heartbeat", "PeerBeat"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Connections checked per loop pass by the ping sweep (about 1.5 ms).
_SWEEP_SLICE = 5000


class Heartbeat:
    """Pings silent connections of this process, and closes the dead ones."""

    def __init__(
        self,
        config: WSConfig,
        local: LocalIndex,
        *,
        clock: Callable[[], float],
        expiring: bool = False,
    ) -> None:
        self.config = config
        self.local = local
        # Whether connections may have an expiry (the app has verify or
        # refresh hooks): the sweep then runs even without pings.
        self.expiring = expiring
        # Wall-clock time, for expiries (Unix seconds; tests may replace it).
        self.wall: Callable[[], float] = time.time
        # The clock the wires note times with (tests may replace it).
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        # The connections of the sweep under way, not visited yet.
        self._todo: Iterator[Wire] = iter(())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.config.ping_interval is not None or self.expiring:
            self._timer = loop.call_later(self._tick(), self._beat)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> float:
        """Seconds between sweeps: a fifth of the tightest timing."""
        config = self.config
        tightest = 5.0
        if config.ping_interval is not None:
            tightest = min(tightest, config.ping_interval, config.ping_timeout)
        if self.expiring:
            tightest = min(tightest, config.auth_refresh_ahead)
        return tightest / 5

    def _beat(self) -> None:
        """Start a sweep over every connection of the moment."""
        self._todo = iter(list(self.local.wires.values()))
        self._step()

    def _step(self) -> None:
        """Sweep the next slice; the rest in the next loop pass, so 100,000
        connections (about 30 ms of checks, and a ping for every one that
        connected in the same storm) never hold the loop at once."""
        assert self._loop is not None
        try:
            done = self.sweep(itertools.islice(self._todo, _SWEEP_SLICE)) < _SWEEP_SLICE
        except Exception:
            log.exception("websocket heartbeat sweep failed")
            done = True
        if done:
            self._timer = self._loop.call_later(self._tick(), self._beat)
        else:
            self._timer = self._loop.call_soon(self._step)

    def sweep(self, wires: Iterable[Wire]) -> int:
        """Ping the silent, abort the dead, ask for fresh tokens and close the
        expired, among ``wires``; how many were seen."""
        now = self._clock()
        wall = self.wall()
        ahead = self.config.auth_refresh_ahead
        interval = self.config.ping_interval
        timeout = self.config.ping_timeout
        seen = 0
        for wire in wires:
            seen += 1
            if wire.state is not ConnectionState.OPEN:
                continue
            conn = wire.conn
            expires = conn.expires_at
            if expires is not None:
                if wall >= expires:
                    wire.start_close(CloseCode.UNAUTHORIZED, "token expired")
                    continue
                if not conn._refresh_asked and expires - wall <= ahead:
                    conn._refresh_asked = True
                    wire.send_frame(refresh_prompt(expires))
            if interval is None:
                continue
            if wire.reading_paused and wire.heard_while_paused():
                # Paused, its pongs cannot reach us; but the kernel holds
                # more from the peer than last time: it is alive.
                wire.last_seen = now
                wire.ping_sent = 0.0
                continue
            if wire.ping_sent:
                if now - wire.ping_sent > timeout:
                    wire.abort(CloseCode.INTERNAL_ERROR, "ping timeout")
            elif now - wire.last_seen >= interval and wire.send_ping():
                wire.ping_sent = now
        return seen


def refresh_prompt(expires_at: float) -> bytes:
    """The frame asking a client for a fresh token before ``expires_at``."""
    body = encode_envelope("auth.refresh", {"expires_at": expires_at})
    return data_frame(body, False)


class PeerBeat:
    """This process's beat to its peers, and the checks timed by it."""

    def __init__(
        self,
        config: WSConfig,
        health: Health,
        outbox: Outbox,
        dispatcher: Dispatcher,
        membership: Membership,
        sequencer: Sequencer,
    ) -> None:
        self.config = config
        self.health = health
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.membership = membership
        self.sequencer = sequencer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = loop.call_later(self.config.relay_beat, self._beat)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _beat(self) -> None:
        assert self._loop is not None
        try:
            # Each beat starts a new rate interval, in one process too.
            self.outbox.beat(self.health.sample(rates=True))
            now = self._loop.time()
            self.dispatcher.watch(now)
            self.sequencer.sweep(now)
            self.membership.check(now)
        except Exception:
            log.exception("websocket relay beat failed")
        finally:
            self._timer = self._loop.call_later(self.config.relay_beat, self._beat)
