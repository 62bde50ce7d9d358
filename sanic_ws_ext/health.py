"""What this process says about itself: readiness, status, and its figures.

The routes of :mod:`~sanic_ws_ext.monitoring` serve what :class:`Health`
computes; the arithmetic of figures is in :mod:`~sanic_ws_ext.stats`.

Rules this module keeps:

- Reading asks nobody: everything comes from this process's own state and
  the samples its peers sent on their beats.
- :meth:`Health.health` names no client, user or machine: it is meant to be
  public (load balancers, orchestrators).
- Ready means started, not shutting down, and every worker of this machine
  heard at least once since this process started. Once true it stays true:
  a worker restarting later does not make the others unready.
- A sample with new rates is taken once per beat (it rides on the beat);
  :meth:`Health.stats` adds this process's live sample to its peers' latest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .delivery.relay import slot_of
from .stats import DELIVERY_COUNTERS, RateMeter, cluster_stats

if TYPE_CHECKING:
    from .cluster import Membership
    from .delivery import Delivery
    from .index import LocalIndex
    from .sequencer import Sequencer
    from .stats import Counters
    from .tracker import Tracker

__all__ = ["Health"]


class Health:
    """This process's readiness, status and figures."""

    def __init__(
        self,
        counters: Counters,
        local: LocalIndex,
        membership: Membership,
        tracker: Tracker,
        sequencer: Sequencer,
        delivery: Delivery,
        *,
        worker: str,
        clock: Callable[[], float],
    ) -> None:
        self.counters = counters
        self.local = local
        self.membership = membership
        self.tracker = tracker
        self.sequencer = sequencer
        self.delivery = delivery
        self.worker = worker
        self._clock = clock
        self._rates = RateMeter()
        # Every worker of this machine was heard at least once since this
        # process started (readiness).
        self._whole = False

    @property
    def backplane_state(self) -> str | None:
        state = self.delivery.link_state
        return None if state is None else str(state.value)

    def status(self, *, closing: bool) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "closing": closing,
            "connections": len(self.local),
            "membership": self.membership.status(),
            "presence": self.tracker.status(),
            "history": self.sequencer.status(),
            "delivery": self.delivery.status(),
        }

    def health(self, *, started: bool, closing: bool) -> dict[str, Any]:
        delivery = self.delivery.status()
        machine = delivery.get("machine", delivery)
        expected = _expected(delivery)
        heard = self._heard_here()
        if not self._whole and (expected is None or heard >= expected):
            self._whole = True
        return {
            "alive": True,
            # Ready to take connections: started, not shutting down, and
            # every worker of this machine heard at least once (while some
            # still boot, the cluster-wide calls would miss them). A worker
            # restarting later does not make the others unready: they serve
            # meanwhile. A backplane outage does not either: every machine
            # sees it at once, and each still serves its own clients.
            "ready": started and not closing and self._whole,
            "delivery": delivery["name"],
            "relay": machine.get("state") if machine["name"] == "relay" else None,
            "backplane": self.backplane_state,
            "workers": 1 + len(self.membership.peers),
            # This machine's workers: how many the relay has slots for (None
            # without a relay), and how many this process hears now (itself
            # included).
            "expected": expected,
            "heard": heard,
        }

    def check_whole(self) -> None:
        """Note once every worker of this machine has been heard (readiness)."""
        if not self._whole:
            expected = _expected(self.delivery.status())
            self._whole = expected is None or self._heard_here() >= expected

    def _heard_here(self) -> int:
        """Workers of this machine this process hears now, itself included."""
        node = self.worker.rpartition("/")[0]  # "" without Redis
        slots = {slot_of(self.worker)}
        for name in self.membership.peers:
            if name.rpartition("/")[0] == node:
                slots.add(slot_of(name))
        slots.discard(None)
        return max(1, len(slots))

    # -- figures -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        samples, ages = self.membership.samples(self._clock())
        samples[self.worker] = self.sample(rates=False)
        ages[self.worker] = 0.0
        return cluster_stats(
            answered_by=self.worker,
            samples=samples,
            ages=ages,
            connections={
                name: int(s.get("connections", 0)) for name, s in samples.items()
            },
        )

    def sample(self, *, rates: bool) -> dict[str, Any]:
        """This process's counters; with ``rates``, a new rate interval starts."""
        counters = self.counters
        sample: dict[str, Any] = counters.as_dict()
        if rates:
            meter = self._rates
            meter.update(self._clock(), counters.messages_in, counters.messages_out)
        # Between beats: the rates of the last interval.
        rate_in, rate_out = self._rates.rates
        sample["messages_in_per_second"] = rate_in
        sample["messages_out_per_second"] = rate_out
        sample["connections"] = len(self.local)
        sample["rooms"] = len(self.local.rooms)
        sample["users"] = len(self.local.users)
        sample.update(_delivery_counters(self.delivery.status()))
        sample["backplane"] = self.backplane_state
        return sample


def _expected(status: Mapping[str, Any]) -> int | None:
    """This machine's worker slots, from the delivery's status; else None."""
    machine = status.get("machine", status)
    slots = machine.get("slots") if machine.get("name") == "relay" else None
    return slots if isinstance(slots, int) else None


def _delivery_counters(status: Mapping[str, Any]) -> dict[str, int]:
    """The delivery backend's fault counters, from its ``status()``."""
    machine: Mapping[str, Any] = status.get("machine", status)
    backplane = status if status.get("name") == "redis" else {}
    values = (
        machine.get("dropped", 0),
        backplane.get("reconnects", 0),
        backplane.get("lost", 0),
        backplane.get("missed", 0),
    )
    return dict(zip(DELIVERY_COUNTERS, values, strict=True))
