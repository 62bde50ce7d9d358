"""Real `sanic` processes for tests: start, wait until serving, stop by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
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
        self,
        target: str,
        *args: str,
        env: dict[str, str] | None = None,
        ready_path: str = "/health",
        cwd: str | None = None,
        port: int | None = None,
    ) -> None:
        self.ready_path = ready_path
        self.cwd = cwd
        self.port = port or free_port()
        self.args = [
            sys.executable, "-m", "sanic", target,
            "--host", "127.0.0.1", "--port", str(self.port), "--no-motd", *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed on exit)
        self.serving_since = 0.0

    def ws_url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> SanicProcess:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            self.args,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            stdout=self.log,
            # A file, not a pipe nobody reads: a chatty server must never block.
            stderr=self.log,
        )
        await self.wait_serving(self.ready_path)
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
                        self.serving_since = loop.time()
                        return
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"sanic never served: {self.stderr()}")
                await asyncio.sleep(delay)  # polling another process: no event to await
                delay = min(delay * 2, 0.5)

    def stderr(self) -> str:
        """The end of what the server wrote to stderr so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-6000:]

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in time; the exit code."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        # Sanic's main process ignores a SIGTERM that lands while it still
        # polls for the workers' startup acks, then hangs ~30 s: give it time
        # to get past that poll. A workaround for Sanic, not a sync point.
        settle = self.serving_since + 1.5 * time_unit() - loop.time()
        if settle > 0:
            await asyncio.sleep(settle)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(None, self.proc.wait), 30 * time_unit()
            )
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise TimeoutError(
                f"sanic ignored SIGTERM: poll={self.proc.poll()} {self.stderr()}"
            ) from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.stop()
                # An exception in a worker (a listener, a handler) is a bug
                # even when every client got what it expected.
                log = self.stderr()
                assert "Traceback" not in log, log
            else:  # the test already failed: do not mask it with a slow stop
                assert self.proc is not None
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                # Shown with the failure (pytest prints captured output).
                print(f"--- {' '.join(self.args[3:5])} log ---\n{self.stderr()}")
        finally:
            self.log.close()
