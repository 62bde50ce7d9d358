"""A private `redis-server` for tests that stop or break Redis.

The machine's shared Redis (127.0.0.1:6379) is never stopped; fault tests
start their own on a free port, keep nothing on disk, and end it by PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
from types import TracebackType

import redis.asyncio as aioredis

from sanic_ws_ext.testing import time_unit

from .procs import free_port

SHARED_URL = "redis://127.0.0.1:6379/0"


class RedisServer:
    """``redis-server`` on a free port; :meth:`kill` and :meth:`start` again.

    ``options`` are more ``redis-server`` arguments; files it keeps (a
    cluster node's ``nodes.conf``) are in its own temporary directory, so a
    restart finds them.
    """

    def __init__(self, *options: str) -> None:
        self.port = free_port()
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.TemporaryDirectory()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            self._args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10 * time_unit()
        client = aioredis.Redis(port=self.port)
        try:
            while True:
                try:
                    await client.ping()
                    return
                except (aioredis.ConnectionError, OSError):
                    if loop.time() > deadline:
                        raise
                await asyncio.sleep(0.02)  # another process starting: poll it
        finally:
            await client.aclose()

    def start_sync(self) -> None:
        """:meth:`start` for a synchronous fixture (no event loop yet)."""
        import time

        import redis

        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            self._args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10 * time_unit()
        client = redis.Redis(port=self.port)
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, OSError):
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)  # another process starting: poll it
        finally:
            client.close()

    def stop_sync(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.dir.cleanup()

    def _args(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir.name,
            *self.options,
        ]  # fmt: skip

    def kill(self) -> None:
        """SIGKILL by PID: a crash, not a shutdown."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.dir.cleanup()
