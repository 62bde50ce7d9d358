"""The servers every scenario compares, how to start them, and the load client.

A peer is one or more processes, each listening on its own port (a "node"):
several nodes stand for several machines sharing one Redis. Every server
process runs pinned to core 0 (worker processes inherit the affinity); the
Node load client runs pinned to core 1 and spreads its connections over the
nodes. Redis, when a peer uses it, is the machine's shared server and is not
pinned. Loopback only; servers are ended by PID (their process group). The
load client is Node's (``bench/loadclient.mjs``) or the native one
(``bench/loadclient.c``, built by ``bench/native.py``); so is the ceiling.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import chattext
import native

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
#: The single-process peers every scenario compares, ours included.
PEERS = ["naive", "bare", "ours", "websockets", "socketio", "node-ws", "socketify"]
#: Four workers on one core: ours over the relay, ours as two machines of two
#: workers over Redis, python-socketio's four uvicorn workers with its Redis
#: manager.
SCALED = ["ours-4w", "ours-2x2-redis", "socketio-4w-redis"]
#: ``BENCH_BEFORE=<dir>``: a checkout of an earlier commit (``git worktree
#: add <dir> <commit>``). Its ``ours`` and ``ours-4w`` then run as
#: ``ours-before`` and ``ours-4w-before`` (and ``ours-deflate-before``),
#: beside today's in the same run, for
#: a before/after comparison on one machine in one sitting.
BEFORE = os.environ.get("BENCH_BEFORE")
#: permessage-deflate on (``bench/compression.py``): the load client must offer it.
DEFLATE = ["ours-deflate", "node-ws-deflate", "ours-deflate-before"]


@dataclass(frozen=True)
class Served:
    """A running peer: the websocket URL of each node, and each node's PID."""

    urls: list[str]
    pids: list[int]
    proto: str  # "ws" (our envelope) or "socketio" (Engine.IO 4 framing)
    deflate: bool = False  # the client must offer permessage-deflate
    #: The Redis channel prefix of this run (WS_REDIS_CHANNEL, for emitters).
    channel: str = ""


def _sanic(app: str, port: int, *more: str) -> list[str]:
    return [PY, "-m", "sanic", app, "--host", "127.0.0.1", "--port", str(port),
            "--no-motd", *more]  # fmt: skip


def _uvicorn(port: int, *more: str) -> list[str]:
    return [PY, "-m", "uvicorn", "bench.servers.socketio_server:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--loop", "uvloop", "--http", "httptools", "--ws", "websockets",
            *more]  # fmt: skip


def nodes(server: str, channel: str) -> list[tuple[list[str], dict[str, str]]]:
    """``(argv with {port}, extra env)`` for each node of ``server``."""
    ours = "bench.servers.ours:app"
    emitter_app = "bench.servers.emitter_app:app"
    redis = {"SANIC_WS_BACKPLANE": REDIS, "SANIC_WS_REDIS_CHANNEL": channel}
    sio_redis = {"BENCH_REDIS": REDIS, "BENCH_CHANNEL": channel}
    server_dir = BENCH / "servers"
    every: dict[str, list[tuple[list[str], dict[str, str]]]] = {
        "ours": [(_sanic(ours, 0, "--single-process"), {})],
        "ours-deflate": [
            (_sanic(ours, 0, "--single-process"), {"SANIC_WS_COMPRESSION": "true"})
        ],
        "ours-typed": [
            (_sanic("bench.servers.ours_typed:app", 0, "--single-process"), {})
        ],
        "ours-4w": [(_sanic(ours, 0, "--workers", "4"), {})],
        "ours-2w": [(_sanic(ours, 0, "--workers", "2"), {})],
        "ours-2x2-redis": [(_sanic(ours, 0, "--workers", "2"), redis)] * 2,
        # One worker on Redis whose "go" asks an emitter (bench/emitter.py),
        # or broadcasts itself (BENCH_HANDLER_GO).
        "ours-redis-emitter": [(_sanic(emitter_app, 0, "--single-process"), redis)],
        "ours-redis-handler": [
            (
                _sanic(emitter_app, 0, "--single-process"),
                {**redis, "BENCH_HANDLER_GO": "1"},
            )
        ],
        "naive": [(_sanic("bench.servers.naive:app", 0, "--single-process"), {})],
        "bare": [(_sanic("bench.servers.bare:app", 0, "--single-process"), {})],
        "websockets": [([PY, str(server_dir / "wslib.py"), "{port}"], {})],
        "socketio": [(_uvicorn(0), {})],
        "socketio-4w-redis": [(_uvicorn(0, "--workers", "4"), sio_redis)],
        "socketio-2w-redis": [(_uvicorn(0, "--workers", "2"), sio_redis)],
        "node-ws": [(["node", str(server_dir / "node_ws.mjs"), "{port}"], {})],
        "node-ws-deflate": [
            (
                ["node", str(server_dir / "node_ws.mjs"), "{port}"],
                {"BENCH_DEFLATE": "1"},
            )
        ],
        "socketify": [([PY, str(server_dir / "socketify_server.py"), "{port}"], {})],
        "client-ceiling": [(_ceiling(), {})],
        "client-ceiling-node": [
            (["node", str(server_dir / "ceiling.mjs"), "{port}"], {})
        ],
    }
    if server.startswith("client-ceiling@"):
        # The native ceiling writing the burst in batches of N bytes, each
        # to every client before the next (bench/servers/ceiling.c): what
        # the kernel alone allows at that write size, throughput and p99.
        batch = int(server.partition("@")[2])
        if native.build("ceiling") is None:
            # Node's ceiling has no batches: its figure would be mislabelled.
            raise RuntimeError(f"{server} needs the native ceiling (a C compiler)")
        return [(_ceiling(), {"BENCH_CEILING_WRITE": str(batch)})]
    if BEFORE:
        # Run from the earlier checkout: its package first on the path.
        before = {"PYTHONPATH": BEFORE, "BENCH_CWD": BEFORE}
        every["ours-before"] = [(_sanic(ours, 0, "--single-process"), before)]
        every["ours-4w-before"] = [(_sanic(ours, 0, "--workers", "4"), before)]
        every["ours-deflate-before"] = [
            (
                _sanic(ours, 0, "--single-process"),
                {**before, "SANIC_WS_COMPRESSION": "true"},
            )
        ]
    return every[server]


def _ceiling() -> list[str]:
    """The native ceiling server (cheaper than any client), else the Node one."""
    binary = native.build("ceiling")
    if binary is None:
        return ["node", str(BENCH / "servers" / "ceiling.mjs"), "{port}"]
    return [str(binary), "{port}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # another process starting: poll it
    raise TimeoutError(f"nothing listening on {port}")


@contextmanager
def _node(argv: list[str], env: dict[str, str]) -> Iterator[tuple[int, int]]:
    port = free_port()
    argv = [str(port) if a == "{port}" else a for a in argv]
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *argv],
        cwd=env.get("BENCH_CWD", ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # never a pipe nobody reads
        start_new_session=True,
    )
    try:
        wait_listening(port, proc)
        yield port, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_runs = 0


@contextmanager
def serving(server: str, settle: float = 0.3) -> Iterator[Served]:
    """Run every node of ``server`` until the block exits."""
    global _runs
    _runs += 1
    # A channel of its own: runs never hear each other through the shared Redis.
    channel = f"bench-{os.getpid()}-{_runs}"
    proto = "socketio" if server.startswith("socketio") else "ws"
    path = "/socket.io/?EIO=4&transport=websocket" if proto == "socketio" else "/ws"
    with ExitStack() as stack:
        started = [stack.enter_context(_node(*n)) for n in nodes(server, channel)]
        # Let them finish starting (workers, listeners, Redis subscriptions).
        several = server in SCALED or "4w" in server or "2w" in server
        time.sleep(max(settle, 2.0) if several else settle)
        yield Served(
            urls=[f"ws://127.0.0.1:{port}{path}" for port, _ in started],
            pids=[pid for _, pid in started],
            proto=proto,
            deflate=server in DEFLATE,
            channel=channel,
        )


#: The load client samples latency on one message in this many (it counts
#: them all): reading every time stamp capped it at 2.4 M messages/s in chat,
#: below what the fastest servers send; one in 8 lifts it past 5 M.
SAMPLE_EVERY = 8


def load_client(
    served: Served, clients: int, *options: str, client: str = "node"
) -> list[str]:
    """The load client's command (``client``: node or native), pinned to core 1.

    It offers permessage-deflate when ``served`` needs it; with ``BENCH_BODY``
    set, its chat messages carry that many bytes of chat-like text."""
    program = ["node", str(BENCH / "loadclient.mjs")]
    if client == "native":
        binary = native.build("loadclient")
        if binary is None:
            raise RuntimeError("the native load client needs a C compiler (cc)")
        program = [str(binary)]
    return [
        "taskset", "-c", "1", *program,
        "--url", ",".join(served.urls), "--proto", served.proto,
        "--clients", str(clients), "--every", str(SAMPLE_EVERY), *options,
        *(["--deflate", "1"] if served.deflate else []),
        *(["--body", chattext.body(size, 0)] if (size := chattext.env_size()) else []),
    ]  # fmt: skip


def run_load(server: str, command: list[str], limit: float = 120) -> dict[str, float]:
    """Run the load client to the end; its JSON result line."""
    out = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    if not out.stdout.strip():
        raise RuntimeError(f"{server}: load client failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def fmt(values: list[float], digits: int = 0) -> str:
    """Median (min - max); "-" for none (every run of a row failed)."""
    if not values:
        return "-"
    values = sorted(values)
    mid = len(values) // 2
    med = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return f"{med:,.{digits}f} ({values[0]:,.{digits}f} - {values[-1]:,.{digits}f})"
