"""Workers that boot slowly: `sanic tests.apps.slow_boot:app --workers 4`.

Every worker but the first (slot 0) sleeps ``SLOW_BOOT_SECONDS`` while its
app module is imported, before it serves, as a worker with slow imports or
a slow machine would. ``/up`` answers as soon as any worker serves.
"""

from __future__ import annotations

import os
import time

from sanic import Request, Sanic
from sanic.response import HTTPResponse, text
from sanic_ext import Extend

from sanic_ws_ext import WSExtension
from sanic_ws_ext.delivery.relay import slot_of

_slot = slot_of(os.environ.get("SANIC_WORKER_NAME", ""))
if _slot:  # a worker other than the first (not the main process: None)
    time.sleep(float(os.environ.get("SLOW_BOOT_SECONDS", "0")))

app = Sanic("slow_boot")
Extend(app).register(WSExtension)


@app.get("/up")
async def up(request: Request) -> HTTPResponse:
    return text("up")
