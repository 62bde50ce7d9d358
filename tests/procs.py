"""Real `sanic` processes for tests: start, wait until serving, stop by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from types import TracebackType

import httpx

from sanic_ws_ext.testing import time_unit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SanicProcess:
    """``python -m sanic TARGET --port P ...`` in its own session."""

    def __init__(
        self, target: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.args = [
            sys.executable, "-m", "sanic", target,
            "--host", "127.0.0.1", "--port", str(self.port), "--no-motd", *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def ws_url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> SanicProcess:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            self.args,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        await self.wait_serving()
        return self

    async def wait_serving(self, path: str = "/health") -> None:
        """Poll until a real HTTP response arrives (bounded by time units)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30 * time_unit()
        delay = 0.05
        async with httpx.AsyncClient() as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sanic exited: {self.stderr()}")
                try:
                    response = await http.get(self.url(path), timeout=time_unit())
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"sanic never served: {self.stderr()}")
                await asyncio.sleep(delay)  # polling another process: no event to await
                delay = min(delay * 2, 0.5)

    def stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-4000:]

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in time; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(None, self.proc.wait), 30 * time_unit()
            )
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            err = (
                self.proc.stderr.read().decode(errors="replace")[-6000:]
                if self.proc.stderr
                else ""
            )
            raise TimeoutError(f"sanic did not stop on SIGTERM: {err}") from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.stop()
            else:  # the test already failed: do not mask it with a slow stop
                assert self.proc is not None
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        finally:
            assert self.proc is not None
            if self.proc.stderr is not None:
                self.proc.stderr.close()
