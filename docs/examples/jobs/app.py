"""The web side of the background-jobs example (docs/howto/background-jobs.md).

``POST /jobs`` queues :func:`tasks.export_report` for the signed-in user;
the browser hears ``job.progress`` and ``job.done`` on its websocket,
whichever worker or machine holds it. Run from this folder::

    sanic app:app --workers 2
"""

from __future__ import annotations

import asyncio
import uuid

from sanic import Request, Sanic, json
from sanic.response import JSONResponse
from sanic_ext import Extend
from tasks import CHANNEL, REDIS_URL, export_report

from sanic_ws_ext import Accept, WSExtension, WSHandlers

app = Sanic("jobs")
app.config.WS_BACKPLANE = REDIS_URL  # the Redis the Celery worker sends through
app.config.WS_REDIS_CHANNEL = CHANNEL
Extend(app).register(WSExtension)
handlers = WSHandlers(app)


def signed_in(request: Request) -> str:
    """Your login here (docs/howto/auth.md); a query parameter for the demo."""
    return request.args.get("user") or "guest"


@handlers.verify
async def identify(request: Request) -> Accept:
    return Accept(user=signed_in(request))


@app.post("/jobs")
async def start_job(request: Request) -> JSONResponse:
    job = uuid.uuid4().hex[:12]
    steps = int(request.args.get("steps", "20"))
    # Queuing talks to the broker: off the event loop.
    await asyncio.to_thread(export_report.delay, signed_in(request), job, steps)
    return json({"job": job}, status=202)
