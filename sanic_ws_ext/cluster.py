"""Membership of the cluster: which processes are alive, and how to reach them.

Rules this module keeps:

- Each process has a random *life*, new at every start; a worker name that
  restarts is a new life. The first 8 characters of a life are its *key*:
  connection ids begin with their process's key, so any process can route
  to a connection without knowing the connection (:meth:`Membership.route`).
- Peers announce themselves (HELLO, answered with our state), prove they are
  alive (BEAT, once per ``WS_RELAY_BEAT``; any op counts too) and leave
  (BYE). A BYE or state from a life other than the one known for that name
  comes from a process being replaced and is ignored.
- Failure detection tells slow from dead. A peer on this machine that exits
  is known to be gone at once: its pid is watched through a pidfd (Linux).
  A peer silent for ``WS_PEER_SUSPECT`` seconds is *suspect* (logged, kept);
  silent for ``WS_PEER_TIMEOUT`` it is dead and dropped with everything it
  held. While our own link cannot hear a peer, its silence does not count.
- Ops from a life that exited, stopped or was replaced are ignored, so a dead
  process's last ops, still in flight, cannot bring back what it held. A peer
  dropped only for its silence is met again when it is heard again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stats import clean_sample

__all__ = ["Membership", "Peer", "machine_id"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Lives of dropped peers remembered, to ignore their late ops.
_DEAD_LIVES = 256


def machine_id() -> str:
    """Where a pid means the same process: host, boot and pid namespace.

    Containers with the host's network share its hostname and boot id but
    not its pids: the pid namespace tells them apart.
    """
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            parts.append(boot.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)


@dataclass(slots=True)
class Peer:
    """Another process of the cluster, as this one knows it."""

    name: str
    life: str
    #: Loop time of its last op.
    seen: float
    suspect: bool = False
    pid: int = 0
    machine: str = ""
    #: A pidfd watched for its exit (same machine only), or -1.
    pidfd: int = -1
    #: Its latest counters sample (from its beat) and when it came.
    sample: dict[str, Any] | None = None
    sample_at: float = 0.0


class Membership:
    """The peers of this process, their liveness, and routes to them."""

    def __init__(
        self,
        worker: str,
        life: str,
        *,
        suspect_after: float,
        dead_after: float,
        hears: Callable[[str], bool],
        gone: Callable[[str], None],
    ) -> None:
        self.worker = worker
        self.life = life
        self.key = life[:8]
        self.machine = machine_id()
        self.suspect_after = suspect_after
        self.dead_after = dead_after
        self._hears = hears
        # Called with a peer's name once it is dropped (dead or replaced).
        self._gone = gone
        self.peers: dict[str, Peer] = {}
        #: Process key -> peer name.
        self._keys: dict[str, str] = {}
        self._dead: deque[str] = deque(maxlen=_DEAD_LIVES)
        self._dead_set: set[str] = set()
        # Lives dropped only for their silence, by name (they may come back).
        self._silenced: dict[str, str] = {}
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def stop(self) -> None:
        self._stopped = True
        for peer in self.peers.values():
            self._unwatch(peer)

    # -- what peers tell us --------------------------------------------------------

    def heard(self, name: str, now: float) -> None:
        """Any op from ``name`` is a sign of life."""
        peer = self.peers.get(name)
        if peer is not None:
            peer.seen = now
            if peer.suspect:
                peer.suspect = False
                log.info("worker %s is heard again", name)

    def is_dead(self, life: str) -> bool:
        return life in self._dead_set

    def knows(self, name: str, life: str) -> bool:
        peer = self.peers.get(name)
        return peer is not None and peer.life == life

    def meet(
        self, name: str, life: str, now: float, *, pid: int = 0, machine: str = ""
    ) -> bool:
        """Record ``name`` as living ``life``; True if that is news.

        A new life for a known name drops the old one first: what it held
        belongs to a process that is gone.
        """
        if life in self._dead_set:
            return False
        peer = self.peers.get(name)
        if self._silenced.get(name) == life and peer is not None and peer.life != life:
            # A late op of a life we dropped for silence, after its name
            # restarted: that life is over, not back.
            self._bury(life)
            return False
        if self._silenced.get(name) == life:
            del self._silenced[name]  # the frozen one, heard again
        if peer is not None and peer.life == life:
            if pid and not peer.pid:
                peer.pid, peer.machine = pid, machine
                self._watch(peer)
            return False
        if peer is not None:
            self.drop(name, "restarted")
        peer = Peer(name, life, now, pid=pid, machine=machine)
        self.peers[name] = peer
        self._keys[life[:8]] = name
        if pid:
            self._watch(peer)
        return True

    def sample(self, name: str, raw: bytes, now: float) -> None:
        peer = self.peers.get(name)
        if peer is not None and raw:
            peer.sample = clean_sample(raw)
            peer.sample_at = now

    def drop(self, name: str, why: str, *, final: bool = True) -> None:
        """Forget ``name``: dead, gone, or replaced by a new life.

        A ``final`` drop (the process exited, stopped or was replaced) also
        ignores its life's ops from now on: they can only be late. A peer
        dropped for its silence is not final: if it was only frozen, its
        next op makes it a peer again, and the two exchange their state.
        """
        peer = self.peers.pop(name, None)
        if peer is None:
            return
        if self._keys.get(peer.life[:8]) == name:
            del self._keys[peer.life[:8]]
        self._unwatch(peer)
        if final:
            self._bury(peer.life)
        else:
            self._silenced[name] = peer.life
        if why != "restarted":
            log.warning("worker %s %s: dropping what it held", name, why)
        self._gone(name)

    def _bury(self, life: str) -> None:
        """Ignore ``life``'s ops from now on (the last ``_DEAD_LIVES`` kept)."""
        if len(self._dead) == self._dead.maxlen:
            self._dead_set.discard(self._dead[0])
        self._dead.append(life)
        self._dead_set.add(life)

    # -- liveness ------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Once per beat: mark silent peers suspect, drop the dead."""
        for peer in list(self.peers.values()):
            if not self._hears(peer.name):
                # Unreachable is not dead: its silence counts from when
                # the link is back.
                peer.seen = now
                continue
            silent = now - peer.seen
            if silent > self.dead_after:
                self.drop(peer.name, f"silent for {silent:.1f}s", final=False)
            elif silent > self.suspect_after and not peer.suspect:
                peer.suspect = True
                log.warning(
                    "worker %s silent for %.1fs: suspect (dropped after %gs)",
                    peer.name,
                    silent,
                    self.dead_after,
                )

    def _watch(self, peer: Peer) -> None:
        """Watch a peer on this machine through a pidfd: its exit is instant news."""
        if (
            self._stopped
            or peer.pidfd >= 0
            or peer.machine != self.machine
            or self._loop is None
            or not hasattr(os, "pidfd_open")
        ):
            return
        try:
            fd = os.pidfd_open(peer.pid)
        except OSError:
            # Already gone (ESRCH), or not allowed: beats will tell.
            if not _alive(peer.pid):
                self._loop.call_soon(self._exited, peer.name, peer.life)
            return
        peer.pidfd = fd
        self._loop.add_reader(fd, self._exited, peer.name, peer.life)

    def _unwatch(self, peer: Peer) -> None:
        if peer.pidfd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(peer.pidfd)
            os.close(peer.pidfd)
            peer.pidfd = -1

    def _exited(self, name: str, life: str) -> None:
        peer = self.peers.get(name)
        if peer is not None and peer.life == life:
            self.drop(name, f"exited (pid {peer.pid})")

    # -- routing -------------------------------------------------------------------

    def route(self, conn_id: str) -> str | None:
        """The process holding connection ``conn_id``: ours, a peer's, or None."""
        key = conn_id[:8]
        if key == self.key:
            return self.worker
        return self._keys.get(key)

    def alive(self) -> list[str]:
        """Peers not suspect: those a cluster-wide question waits for."""
        return [p.name for p in self.peers.values() if not p.suspect]

    def samples(self, now: float) -> tuple[dict[str, Any], dict[str, float]]:
        """Each peer's latest counters sample, and its age in seconds."""
        samples = {
            p.name: p.sample for p in self.peers.values() if p.sample is not None
        }
        ages = {
            p.name: now - p.sample_at
            for p in self.peers.values()
            if p.sample is not None
        }
        return samples, ages

    def status(self) -> dict[str, Any]:
        return {
            "peers": len(self.peers),
            "suspect": sorted(p.name for p in self.peers.values() if p.suspect),
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
