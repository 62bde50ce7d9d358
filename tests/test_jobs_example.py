"""docs/examples/jobs (howto/background-jobs.md) with a real Celery worker.

The app runs as `sanic app:app --workers 2` and the worker as `celery -A
tasks worker`, both from docs/examples/jobs, on the shared Redis (a queue and
a channel of their own). A user's browser hears their job's progress from
the Celery process, on whichever worker holds it; nobody else does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from sanic_ws_ext import Envelope
from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .procs import SanicProcess
from .redisproc import SHARED_URL

JOBS = Path(__file__).resolve().parent.parent / "docs" / "examples" / "jobs"


@contextmanager
def celery_worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A tasks worker`` from the example's folder; ended by its PID."""
    celery = Path(sys.executable).with_name("celery")
    proc = subprocess.Popen(
        [str(celery), "-A", "tasks", "worker", "--pool", "threads",
         "--concurrency", "2", "--loglevel", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=JOBS,
        env={**os.environ, **env},
        start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started
            try:
                proc.wait(units(10))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def progress_of(client: WSTestClient, job: str) -> list[int]:
    """``done`` of each ``job.progress`` until ``job.done``, for ``job``."""
    seen: list[int] = []
    while True:
        frame = await client.recv(units(30))  # the first waits for Celery
        assert isinstance(frame, Envelope)
        if frame.type == "job.done":
            assert frame.data == {"job": job, "url": f"/reports/{job}.csv"}
            return seen
        if frame.type == "job.progress":
            assert frame.data["job"] == job
            seen.append(frame.data["done"])


async def test_a_celery_job_reports_progress_to_its_user() -> None:
    env = {
        "REDIS_URL": SHARED_URL,
        "WS_REDIS_CHANNEL": f"test-{uuid.uuid4().hex[:12]}",
        "JOBS_QUEUE": f"test-jobs-{uuid.uuid4().hex[:12]}",
        "PYTHONPATH": str(JOBS),
    }
    server = SanicProcess("app:app", "--workers", "2", cwd=str(JOBS), env=env)
    with celery_worker(env):
        async with server, httpx.AsyncClient() as http:
            # Alice in two tabs (likely on both workers), and Bob.
            alice = [
                await WSTestClient.connect(server.ws_url() + "?user=alice")
                for _ in range(4)
            ]
            bob = await WSTestClient.connect(server.ws_url() + "?user=bob")
            started = await http.post(server.url("/jobs?user=alice&steps=15"))
            assert started.status_code == 202
            job = started.json()["job"]
            for tab in alice:
                seen = await progress_of(tab, job)
                # Keyed: a slow tab may skip some, never goes back, ends at 15.
                assert seen == sorted(set(seen)) and seen[-1] == 15
            # Bob's job is his alone; he heard nothing of Alice's.
            mine = (await http.post(server.url("/jobs?user=bob&steps=3"))).json()
            assert await progress_of(bob, mine["job"]) == [1, 2, 3]
            for client in [*alice, bob]:
                await client.close()
