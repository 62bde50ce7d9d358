"""Test plumbing: async tests on uvloop, one fresh app per test, time units.

``async def`` tests run in a new uvloop event loop each (no plugin needed),
bounded by ``TIMEOUT_UNITS`` test time units (see
:func:`sanic_ws_ext.testing.time_unit`). A test past its bound prints every
task's stack (where it waits is the diagnosis), is cancelled, and fails.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext.testing import time_unit

TIMEOUT_UNITS = 60
#: Units a timed-out test gets to end after its cancellation.
CANCEL_UNITS = 10
# Many apps start in one process; Sanic allows that only in test mode.
Sanic.test_mode = True


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    limit = TIMEOUT_UNITS * time_unit()
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    try:
        runner.run(_bounded(func(**kwargs), limit))
    finally:
        # uvloop warns about sockets left open while it closes; with warnings
        # as errors that hangs the close. Record them and fail instead.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            runner.close()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, f"left open by the test: {leaks}"
    return True


async def _bounded(test: Any, limit: float) -> None:
    """Run ``test`` for at most ``limit`` seconds, then show where it waits.

    ``asyncio.wait_for`` waits without bound for a cancelled task to end, and
    pytest-timeout cannot interrupt uvloop: a hung test hung the whole run.
    """
    task = asyncio.ensure_future(test)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if done:
        task.result()
        return
    print(f"\n--- test ran past {limit:.0f} s; its tasks:", file=sys.stderr)
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task():
            other.print_stack(limit=12, file=sys.stderr)
    task.cancel()
    await asyncio.wait({task}, timeout=CANCEL_UNITS * time_unit())
    raise TimeoutError(f"test ran past {limit:.0f} s (stacks above)")


@pytest.fixture
def make_app(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Sanic[Any, Any]]]:
    """Build uniquely named apps; Sanic's registry and sanic-ext's are reset after."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    made: list[Sanic[Any, Any]] = []

    def make(**config: Any) -> Sanic[Any, Any]:
        app: Sanic[Any, Any] = Sanic(f"{base}_{len(made)}")
        app.config.update(config)
        made.append(app)
        return app

    yield make
    Sanic._app_registry.clear()
    Extend.reset()


def units(n: float) -> float:
    """``n`` test time units, in seconds."""
    return n * time_unit()
