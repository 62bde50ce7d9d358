"""Abuse limits: connections per client, connects per second, messages per second.

Pure bookkeeping: values in, decisions out. The clock is passed in (the
manager's monotonic ``clock``); the endpoint and the wire protocol act on the
answers. Rules this module keeps:

- Everything is per worker process. Nothing is shared between workers, so
  each limit is exact in one process and, under ``sanic --workers N``, up to
  N times as loose for the machine.
- Clients are grouped by :func:`client_key`: an IPv4 address, or the /64
  network of an IPv6 address (one subscriber is usually handed a whole /64,
  so counting single IPv6 addresses would count nothing).
- Memory is bounded. A client's open count exists only while it has open
  connections. A client's connect bucket exists only until it would be full
  again (``burst / rate`` seconds after its last connect), and never more than
  :data:`MAX_BUCKETS` of them: past that the oldest is forgotten, which hands
  that client a full bucket again rather than growing without end.
- No timers: buckets refill lazily, from the time of their last use.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict

__all__ = ["MAX_BUCKETS", "ClientLimits", "client_key", "retry_after", "take"]

#: Most connect buckets one process keeps (about 100 bytes each).
MAX_BUCKETS = 65536


def take(level: float, since: float, now: float, rate: float, burst: int) -> float:
    """A token bucket's level after taking one token at ``now``.

    The bucket held ``level`` tokens at ``since`` and refills at ``rate``
    tokens per second up to ``burst``. A negative result means the take was
    over the limit. Callers may store it as it is, a debt the refill must
    repay before the next take succeeds, so that a client that keeps going
    stays over the limit instead of slipping one message through per refill.
    """
    return min(float(burst), level + (now - since) * rate) - 1.0


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def client_key(ip: str) -> str:
    """Who a limit counts: the IPv4 address, or the /64 of an IPv6 address.

    IPv4-mapped IPv6 addresses count as their IPv4 address. Anything that is
    not an IP address (a UNIX socket's name) is its own key.
    """
    try:
        address = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ClientLimits:
    """One process's per-client bookkeeping: open connections, connect buckets.

    Methods take the client's IP as Sanic reports it (``request.client_ip``)
    and group it with :func:`client_key`. A limit that is ``None`` costs
    nothing: its method returns at once and keeps no state.
    """

    __slots__ = ("_buckets", "_max_buckets", "_open", "burst", "max_open", "rate")

    def __init__(
        self,
        *,
        max_open: int | None,
        rate: float | None,
        burst: int,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.max_open = max_open
        self.rate = rate
        self.burst = burst
        self._max_buckets = max_buckets
        self._open: dict[str, int] = {}
        # key -> (level, time of last use), least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    # -- connects per second --------------------------------------------------

    def connect_wait(self, ip: str, now: float) -> float:
        """Take a connect token for ``ip``: 0 if it may connect, else seconds to wait.

        A refused attempt takes nothing, so the wait it is told is the truth.
        """
        rate = self.rate
        if rate is None:
            return 0.0
        self._prune(now)
        key = client_key(ip)
        buckets = self._buckets
        entry = buckets.pop(key, None)
        level = take(*entry, now, rate, self.burst) if entry else self.burst - 1.0
        wait = 0.0
        if level < 0:
            wait = -level / rate
            level += 1.0  # refused: the token stays in the bucket
        buckets[key] = (level, now)
        if len(buckets) > self._max_buckets:
            buckets.popitem(last=False)
        return wait

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely: absent means full."""
        assert self.rate is not None
        horizon = now - self.burst / self.rate
        buckets = self._buckets
        while buckets:
            key, (_, since) = next(iter(buckets.items()))
            if since > horizon:
                break
            del buckets[key]

    @property
    def buckets(self) -> int:
        """How many connect buckets are held (for tests and stats)."""
        return len(self._buckets)

    # -- open connections -------------------------------------------------------

    def at_limit(self, ip: str) -> bool:
        """Whether ``ip``'s client already holds its most connections."""
        if self.max_open is None:
            return False
        return self._open.get(client_key(ip), 0) >= self.max_open

    def opened(self, ip: str) -> None:
        """Count a connection of ``ip`` (after the upgrade)."""
        if self.max_open is not None:
            key = client_key(ip)
            self._open[key] = self._open.get(key, 0) + 1

    def closed(self, ip: str) -> None:
        """Uncount a connection of ``ip`` (its socket is gone)."""
        if self.max_open is not None:
            key = client_key(ip)
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)

    def open_count(self, ip: str) -> int:
        """How many connections ``ip``'s client holds (0 when not counted)."""
        return self._open.get(client_key(ip), 0)

    @property
    def clients(self) -> int:
        """How many clients hold counted connections (for tests and stats)."""
        return len(self._open)
