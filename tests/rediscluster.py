"""A private Redis Cluster for tests: masters (and replicas) on free ports.

Every node is a :class:`~tests.redisproc.RedisServer` (nothing on disk but
its ``nodes.conf``, in its own temporary directory), started, killed and
restarted by PID; the shared Redis at 127.0.0.1:6379 is never touched. The
cluster is made with ``redis-cli --cluster create``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from sanic_ws_ext.testing import time_unit

from .procs import free_port
from .redisproc import RedisServer

SLOTS = 16384


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, all on 127.0.0.1.

    ``node_timeout`` (ms) is long enough that a busy machine does not look
    like a failed node: failovers in tests are asked for (:meth:`failover`).
    """

    def __init__(
        self, masters: int = 3, replicas: int = 0, node_timeout: int = 5000
    ) -> None:
        self.masters = masters
        self.replicas = replicas
        options = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout),
            # A shard that is down stops its own slots only.
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip
        self.nodes = [
            RedisServer(*options, "--cluster-port", str(free_port()))
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The first node's URL: what a user would give ``WS_BACKPLANE``."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        create = await asyncio.create_subprocess_exec(
            "redis-cli", "--cluster", "create",
            *(f"127.0.0.1:{n.port}" for n in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await create.communicate()
        assert create.returncode == 0, out.decode(errors="replace")
        await self.settled()

    async def settled(self) -> None:
        """Wait until every running node serves the same complete slot map."""

        async def agreed() -> bool:
            views = []
            for node in self.running():
                info = await self.command(node.port, "CLUSTER", "INFO")
                fields = dict(
                    line.split(":", 1) for line in info.decode().split() if ":" in line
                )
                if fields.get("cluster_state") != "ok":
                    return False
                views.append(await self.slot_map(node.port))
            if not all(v == views[0] for v in views):
                return False
            if sum(hi - lo + 1 for lo, hi, _, _ in views[0]) != SLOTS:
                return False
            # Every master has its replicas, and their links are up.
            for _, _, _, replicas in views[0]:
                if len(replicas) != self.replicas:
                    return False
                for port in replicas:
                    info = await self.command(port, "INFO", "replication")
                    if info.get("master_link_status") != "up":  # parsed by redis-py
                        return False
            return True

        await _until(agreed, "the cluster never settled")

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    async def command(self, port: int, *args: Any) -> Any:
        client = aioredis.Redis(port=port)
        try:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    async def slot_map(
        self, port: int | None = None
    ) -> list[tuple[int, int, int, list[int]]]:
        """(first slot, last slot, master's port, replicas' ports), per one node."""
        port = port if port is not None else self.running()[0].port
        reply = await self.command(port, "CLUSTER", "SLOTS")
        return sorted(
            (int(e[0]), int(e[1]), int(e[2][1]), sorted(int(r[1]) for r in e[3:]))
            for e in reply
        )

    async def owner(self, channel: str) -> int:
        """The port of the master whose shard carries ``channel``."""
        slot = key_slot(channel.encode())
        for lo, hi, master, _ in await self.slot_map():
            if lo <= slot <= hi:
                return master
        raise AssertionError(f"slot {slot} is not served")

    async def replica_of(self, master: int) -> int:
        for _, _, port, replicas in await self.slot_map():
            if port == master and replicas:
                return replicas[0]
        raise AssertionError(f"{master} has no replica")

    async def one_room_per_shard(self, room_prefix: str) -> dict[int, str]:
        """A room name for each master, whose channel that master's shard carries."""
        masters = {master for _, _, master, _ in await self.slot_map()}
        rooms: dict[int, str] = {}
        i = 0
        while len(rooms) < len(masters):
            room = f"room{i}"
            rooms.setdefault(await self.owner(room_prefix + room), room)
            i += 1
        return rooms

    async def shard_subscribers(self, channel: str) -> int:
        """``PUBSUB SHARDNUMSUB`` on the master that owns ``channel``."""
        reply = await self.command(
            await self.owner(channel), "PUBSUB", "SHARDNUMSUB", channel
        )
        return int(reply[1])

    async def plain_subscribers(self, channel: str) -> int:
        """``PUBSUB NUMSUB``, summed over the nodes (each counts its own)."""
        total = 0
        for node in self.running():
            reply = await self.command(node.port, "PUBSUB", "NUMSUB", channel)
            total += int(reply[1])
        return total

    async def failover(self, replica: int) -> None:
        """``CLUSTER FAILOVER`` on ``replica``; returns once all nodes agree."""
        await self.command(replica, "CLUSTER", "FAILOVER")

        async def promoted() -> bool:
            for node in self.running():
                masters = {m for _, _, m, _ in await self.slot_map(node.port)}
                if replica not in masters:
                    return False
            return True

        await _until(promoted, f"{replica} was never promoted")
        await self.settled()

    async def __aenter__(self) -> RedisCluster:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.kill()
            node.dir.cleanup()


async def _until(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = 60
) -> None:
    """Poll other processes' state (no event to await), bounded in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds * time_unit()
    while True:
        try:
            if await check():
                return
        except (aioredis.ConnectionError, aioredis.ResponseError, OSError):
            pass  # a node starting, or between roles: ask again
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)
