"""Helpers to test websocket handlers against a real server.

Like Channels' ``WebsocketCommunicator``, but over a real socket::

    async with serve(app) as server:
        async with await WSTestClient.connect(server.ws_url()) as client:
            await client.send("echo", {"text": "hi"})
            reply = await client.expect("echo")
            assert reply.data == {"text": "hi"}

:func:`serve` runs the app in the current event loop on an ephemeral port,
with its ``before_server_start``/``before_server_stop`` listeners, in the
same shape as ``sanic --single-process``. :class:`SanicProcess` runs a real
``sanic app:app --workers N`` instead, for what crosses workers::

    async with SanicProcess("myapp:app", "--workers", "4") as server:
        client = await WSTestClient.connect(server.ws_url())

:class:`WSTestClient` wraps the websockets library's asyncio client and
decodes envelopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ssl import SSLContext
from types import TracebackType
from typing import Any

import ujson
from sanic import Sanic
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .envelope import Envelope
from .errors import RequestFailed, RequestTimeout

__all__ = [
    "LiveServer",
    "SanicProcess",
    "WSTestClient",
    "free_port",
    "serve",
    "time_unit",
]


def time_unit() -> float:
    """Seconds in one test time unit (``SANIC_WS_TEST_TIME_UNIT``, default 1).

    Every default timeout here is a multiple of it: raise it on a slow machine
    instead of editing timeouts.
    """
    return float(os.environ.get("SANIC_WS_TEST_TIME_UNIT", "1"))


@dataclass(frozen=True)
class LiveServer:
    """A running app: where to reach it."""

    app: Sanic[Any, Any]
    host: str
    port: int
    #: Served over TLS (``serve(app, ssl=...)``): the URLs are https/wss.
    tls: bool = False

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{path}"

    def ws_url(self, path: str | None = None) -> str:
        if path is None:
            path = self.app.config.get("WS_PATH", "/ws")
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self.host}:{self.port}{path}"


@asynccontextmanager
async def serve(
    app: Sanic[Any, Any], host: str = "127.0.0.1", *, ssl: SSLContext | None = None
) -> AsyncIterator[LiveServer]:
    """Serve ``app`` on a free port in this event loop until the block exits.

    With ``ssl``, over TLS (``wss://``) with that server context.
    """
    # Several apps may start in one test process (as sanic-testing allows).
    Sanic.test_mode = True
    # Sanic reads port=0 as "default port": bind the ephemeral port ourselves.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    # create_server() awaits the listening socket: it is bound on return.
    server = await app.create_server(sock=sock, ssl=ssl, return_asyncio_server=True)
    assert server is not None and server.server is not None
    try:
        await server.startup()
        await server.before_start()
        await server.after_start()
    except BaseException:
        # A listener failed (a bad config, say): release the port, re-raise.
        server.server.close()
        await server.server.wait_closed()
        raise
    try:
        yield LiveServer(app, host, port, tls=ssl is not None)
    finally:
        await server.before_stop()
        server.server.close()
        await server.server.wait_closed()
        await server.after_stop()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def http_status(host: str, port: int, path: str, timeout: float) -> int:
    """The status of ``GET path``, on a raw socket (no HTTP client needed)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port), timeout
    )
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class SanicProcess:
    """``python -m sanic TARGET ...`` on a free port, for as long as a block runs.

    The server runs in its own session (process group) with its output in a
    file; it counts as started once ``ready_path`` answers 200 (by default
    the extension's ``/ws/health``), and is stopped with SIGTERM as a process
    manager would, then SIGKILL to the whole group if it does not exit in
    time. Leaving the block with an exception kills it at once and prints its
    log; leaving it cleanly with ``strict`` (the default) fails if a worker
    logged a traceback: an exception in a listener or handler is a bug even
    when every client got what it expected.
    """

    def __init__(
        self,
        target: str,
        *args: str,
        env: dict[str, str] | None = None,
        ready_path: str = "/ws/health",
        cwd: str | os.PathLike[str] | None = None,
        port: int | None = None,
        strict: bool = True,
    ) -> None:
        self.ready_path = ready_path
        self.cwd = cwd
        self.strict = strict
        self.port = port or free_port()
        self.args = [
            sys.executable, "-m", "sanic", target,
            "--host", "127.0.0.1", "--port", str(self.port), "--no-motd", *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed on exit)
        self.serving_since = 0.0

    @property
    def pid(self) -> int:
        """The main process's PID (workers are its children, in its group)."""
        assert self.proc is not None, "not started"
        return self.proc.pid

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
        try:
            await self.wait_serving(self.ready_path)
        except BaseException:
            self._kill()
            self.log.close()
            raise
        return self

    async def wait_serving(self, path: str | None = None) -> None:
        """Poll until ``path`` answers 200 (bounded by time units)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30 * time_unit()
        delay = 0.05
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sanic exited: {self.stderr()}")
            with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                status = await http_status(
                    "127.0.0.1", self.port, path or self.ready_path, time_unit()
                )
                if status == 200:
                    self.serving_since = loop.time()
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"sanic never served: {self.stderr()}")
            await asyncio.sleep(delay)  # another process: no event to await
            delay = min(delay * 2, 0.5)

    def stderr(self) -> str:
        """The end of what the server wrote so far."""
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
            self._kill()
            raise TimeoutError(
                f"sanic ignored SIGTERM: poll={self.proc.poll()} {self.stderr()}"
            ) from None

    def _kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.stop()
                log = self.stderr()
                assert not self.strict or "Traceback" not in log, log
            else:  # the test already failed: do not mask it with a slow stop
                self._kill()
                # Shown with the failure (pytest prints captured output).
                print(f"--- {' '.join(self.args[3:5])} log ---\n{self.stderr()}")
        finally:
            self.log.close()


class WSTestClient:
    """A websocket client that speaks envelopes, for tests."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        # Messages expect() passed over, kept for later recv()/expect() calls.
        self._skipped: list[Envelope | bytes] = []
        #: History rooms: the last position seen per room (``{"offset",
        #: "epoch"}``, from publications and ``room.joined``). Copy it into
        #: a new client to resume where this one was: ``join`` sends it.
        self.positions: dict[str, dict[str, Any]] = {}
        #: Publications of history rooms dropped as already seen, and the
        #: times an offset skipped ahead (something was missed).
        self.duplicates = 0
        self.gaps = 0
        # Replies to this client's request() calls, by ref, once received.
        self._asked: set[str] = set()
        self._replies: dict[str, dict[str, Any]] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WSTestClient:
        """Open a connection; raises websockets' ``InvalidStatus`` if refused."""
        connection = await connect(
            url,
            origin=origin,  # type: ignore[arg-type]
            additional_headers=headers,
            open_timeout=timeout or 5 * time_unit(),
            max_size=None,
            **kwargs,
        )
        return cls(connection)

    async def __aenter__(self) -> WSTestClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(
        self, type: str, data: Any = None, *, ref: str | None = None
    ) -> None:
        """Send an envelope (with a ``ref``: a request, answered by a ``reply``)."""
        message: dict[str, Any] = {"type": type, "data": data}
        if ref is not None:
            message["ref"] = ref
        await self.connection.send(ujson.dumps(message))

    async def request(
        self, type: str, data: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request and return the ``data`` of the server's reply.

        Raises :class:`~sanic_ws_ext.errors.RequestFailed` on ``ok: false``
        and :class:`~sanic_ws_ext.errors.RequestTimeout` without a reply in
        time. Messages that arrive before the reply are kept for
        :meth:`recv` and :meth:`expect`.
        """
        ref = uuid.uuid4().hex[:16]
        self._asked.add(ref)
        try:
            await self.send(type, data, ref=ref)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (timeout or 5 * time_unit())
            while ref not in self._replies:
                try:
                    message = await self._receive(max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise RequestTimeout(f"no reply to {type!r}") from None
                if not (isinstance(message, Envelope) and message.ref == ref):
                    self._skipped.append(message)
            reply = self._replies.pop(ref)
        finally:
            self._asked.discard(ref)
        if reply.get("ok") is True:
            return reply.get("data")
        error = dict(reply.get("error") or {})
        code, reason = str(error.pop("code", None)), str(error.pop("reason", None))
        raise RequestFailed(code, reason, error)

    async def reply(
        self, ref: str, data: Any = None, *, error: tuple[str, str] | None = None
    ) -> None:
        """Answer the server's request ``ref``: with ``data``, or with
        ``error`` (code, reason) as ``ok: false``."""
        message: dict[str, Any] = {"type": "reply", "ref": ref, "ok": error is None}
        if error is None:
            message["data"] = data
        else:
            message["error"] = {"code": error[0], "reason": error[1]}
        await self.connection.send(ujson.dumps(message))

    async def send_raw(self, payload: str | bytes) -> None:
        """Send a raw text or binary frame."""
        await self.connection.send(payload)

    async def recv(self, timeout: float | None = None) -> Envelope | bytes:
        """The next message: an :class:`Envelope`, or ``bytes`` for binary."""
        if self._skipped:
            return self._skipped.pop(0)
        return await self._receive(timeout)

    async def _receive(self, timeout: float | None) -> Envelope | bytes:
        """The next message, less publications of history rooms already seen."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns
            # a message that arrived as its caller was cancelled and drops
            # the cancellation, so a reader task could not be stopped while
            # messages flowed (tests/test_history_cluster.py hung on it).
            async with asyncio.timeout(timeout or 5 * time_unit()):
                raw = await self.connection.recv()
            if isinstance(raw, bytes):
                return raw
            obj = ujson.loads(raw)
            if self._seen(obj):
                self.duplicates += 1
                continue
            ref = obj.get("ref")
            if obj["type"] == "reply" and ref in self._asked:
                self._replies[ref] = obj
            return Envelope(obj["type"], obj.get("data"), obj.get("timestamp"), ref)

    def _seen(self, obj: Any) -> bool:
        """Note a history position; True for a publication already had."""
        if not isinstance(obj, dict):
            return False
        room, offset, epoch = obj.get("room"), obj.get("offset"), obj.get("epoch")
        if isinstance(room, str) and isinstance(offset, int):
            known = self.positions.get(room)
            if known is not None and known["epoch"] == epoch:
                if offset <= known["offset"]:
                    return True
                if offset > known["offset"] + 1:
                    self.gaps += 1
            self.positions[room] = {"offset": offset, "epoch": epoch}
        elif obj.get("type") == "room.joined" and isinstance(obj.get("data"), dict):
            data = obj["data"]
            if isinstance(data.get("position"), dict):
                self.positions[data["room"]] = dict(data["position"])
        return False

    async def join(
        self, room: str, *, resume: bool = True, timeout: float | None = None
    ) -> dict[str, Any]:
        """Join ``room`` (``room.join``) and return the ``room.joined`` data.

        For a history room, with ``resume`` the last position known
        (:attr:`positions`) is sent as ``since``: what was missed arrives
        before ``room.joined`` (kept for :meth:`recv`), and its
        ``recovered`` says whether it all could be.
        """
        data: dict[str, Any] = {"room": room}
        known = self.positions.get(room)
        if resume and known is not None:
            data["since"] = known
        await self.send("room.join", data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or 5 * time_unit())
        for i, message in enumerate(self._skipped):
            if _joined(message, room):
                return self._skipped.pop(i).data  # type: ignore[union-attr, no-any-return]
        while True:
            message = await self._receive(max(0.0, deadline - loop.time()))
            if _joined(message, room):
                return message.data  # type: ignore[union-attr, no-any-return]
            if isinstance(message, Envelope) and message.type == "error":
                raise AssertionError(f"room.join {room!r} refused: {message.data}")
            self._skipped.append(message)

    async def expect(self, type: str, timeout: float | None = None) -> Envelope:
        """The next envelope of ``type``.

        Messages of other types that arrive first are kept, in order, for
        later :meth:`recv` and :meth:`expect` calls.
        """
        for i, message in enumerate(self._skipped):
            if isinstance(message, Envelope) and message.type == type:
                return self._skipped.pop(i)  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or 5 * time_unit())
        while True:
            message = await self._receive(max(0.0, deadline - loop.time()))
            if isinstance(message, Envelope) and message.type == type:
                return message
            self._skipped.append(message)

    async def wait_closed(self, timeout: float | None = None) -> tuple[int | None, str]:
        """Wait until the server closes; returns its close code and reason."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout or 5 * time_unit()):
                await self._drain_until_closed()
        rcvd = self.connection.protocol.close_rcvd
        if rcvd is None:
            return None, ""
        return rcvd.code, rcvd.reason

    async def _drain_until_closed(self) -> None:
        while True:
            await self.connection.recv()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close, discarding unread messages.

        Reading goes on while closing: with many unread messages queued, the
        server's close reply would otherwise wait behind them (and the client
        stops reading once its queue is full) until the close timeout.
        """
        drain = asyncio.ensure_future(self._drain_until_closed())
        try:
            await self.connection.close(code, reason)
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await drain


def _joined(message: Envelope | bytes, room: str) -> bool:
    return (
        isinstance(message, Envelope)
        and message.type == "room.joined"
        and isinstance(message.data, dict)
        and message.data.get("room") == room
    )
