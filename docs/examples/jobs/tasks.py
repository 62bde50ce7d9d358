"""A Celery job that reports its progress to the browser of whoever started it.

docs/howto/background-jobs.md explains it. Run from this folder, next to the
app (``sanic app:app``)::

    celery -A tasks worker --pool threads

The worker is no Sanic process: a :class:`~sanic_ws_ext.SyncEmitter` sends
through the Redis that the app's workers use as their backplane.
tests/test_jobs_example.py runs both with a real Celery worker.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from sanic_ws_ext import SyncEmitter

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: The app's WS_REDIS_CHANNEL: the emitter must use the workers' channel.
CHANNEL = os.environ.get("WS_REDIS_CHANNEL", "sanic-ws-ext")

celery = Celery("jobs", broker=REDIS_URL)
celery.conf.task_default_queue = os.environ.get("JOBS_QUEUE", "jobs")

# One per worker process, shared by its threads; it connects on first use.
ws = SyncEmitter(REDIS_URL, channel=CHANNEL)


@celery.task
def export_report(user: str, job: str, steps: int) -> None:
    """Build a report in ``steps`` steps, telling ``user``'s browser each one."""
    for done in range(1, steps + 1):
        time.sleep(0.02)  # a step of the real work
        # key=: a newer progress replaces one still waiting for a slow
        # browser; only the latest matters.
        progress = {"job": job, "done": done, "of": steps}
        ws.send_user(user, "job.progress", progress, key=f"job:{job}")
    ws.send_user(user, "job.done", {"job": job, "url": f"/reports/{job}.csv"})
