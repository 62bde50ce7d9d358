"""One load client run, with the servers' own CPU time over the measured burst.

The load client (Node or native) runs with ``--sync 1``: once connected and
settled it prints ``{"phase": "ready"}`` and waits for a line on stdin; when
the last message has arrived it prints ``{"phase": "done"}``, then its result.
At those two points this reads utime + stime (``/proc/<pid>/stat``) of every
server process and all of its descendants (Sanic's workers), so the figure
covers the burst alone, idle time and start-up excluded, and does not depend
on the client. The counters tick ``SC_CLK_TCK`` times a second (10 ms here):
a burst of under ~0.2 s of server CPU reads coarse.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ticks(pid: int, kernel_only: bool = False) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    rest = raw[raw.rindex(b")") + 2 :].split()  # the name may hold spaces
    if kernel_only:
        return int(rest[12])  # stime
    return int(rest[11]) + int(rest[12])  # utime, stime: all of its threads


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(roots: Iterable[int], kernel_only: bool = False) -> float:
    """CPU time (user + system) of ``roots`` and all their descendants
    (``kernel_only``: the system part alone)."""
    ticks, todo, seen = 0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            ticks += _ticks(pid, kernel_only)
            todo += _children(pid)
        except (OSError, ValueError):
            continue  # it exited meanwhile
    return ticks / CLK_TCK


def quiet(
    roots: Iterable[int], share: float = 0.05, window: float = 0.5, limit: float = 30
) -> float:
    """Wait until ``roots`` (and their descendants) use less than ``share`` of
    a core over ``window`` seconds: a multi-worker server still starting its
    workers after its port opened (seconds of CPU on a loaded machine) must
    not count in what a run measures. Polls, at most ``limit`` seconds;
    returns how long it waited."""
    roots = list(roots)
    start = time.monotonic()
    before = cpu_seconds(roots)
    while time.monotonic() - start < limit:
        time.sleep(window)  # a sampling window: what is measured, not a wait
        now = cpu_seconds(roots)
        if now - before < share * window:
            break
        before = now
    return time.monotonic() - start


def run_load(
    server: str, command: list[str], pids: Iterable[int], limit: float = 240
) -> dict[str, Any]:
    """Run the load client to the end: its JSON result, plus ``server_cpu_s``
    (the servers' CPU over the burst) and ``cpu_us`` (per delivered message).
    """
    roots = list(pids)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [*command, "--sync", "1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,  # a file: never a pipe nobody reads
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        watchdog = threading.Timer(limit, proc.kill)
        watchdog.start()
        result: dict[str, Any] | None = None
        cpu0 = cpu1 = None
        sys0 = sys1 = 0.0
        try:
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                message = json.loads(line)
                phase = message.get("phase")
                if phase == "ready":
                    cpu0 = cpu_seconds(roots)
                    sys0 = cpu_seconds(roots, kernel_only=True)
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                elif phase == "done":
                    cpu1 = cpu_seconds(roots)
                    sys1 = cpu_seconds(roots, kernel_only=True)
                else:
                    result = message
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if result is None or cpu0 is None:
            err.seek(0)
            raise RuntimeError(f"{server}: load client failed: {err.read()[-2000:]}")
    if cpu1 is None:
        cpu1 = cpu_seconds(roots)
        sys1 = cpu_seconds(roots, kernel_only=True)
    used = cpu1 - cpu0
    result["server_cpu_s"] = used
    received = result["received"]
    result["cpu_us"] = used / received * 1e6 if received else float("nan")
    # The kernel's part (system time: on loopback, the TCP path of both ends
    # runs in the sender's send()); what a server's own code cannot go below.
    result["sys_us"] = (sys1 - sys0) / received * 1e6 if received else float("nan")
    return result
