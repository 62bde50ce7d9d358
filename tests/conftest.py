"""Test plumbing: async tests on uvloop, one fresh app per test, time units.

``async def`` tests run in a new uvloop event loop each (no plugin needed),
bounded by ``TIMEOUT_UNITS`` test time units (see
:func:`sanic_ws_ext.testing.time_unit`).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext.testing import time_unit

TIMEOUT_UNITS = 60
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
        runner.run(asyncio.wait_for(func(**kwargs), limit))
    finally:
        # uvloop warns about sockets left open while it closes; with warnings
        # as errors that hangs the close. Record them and fail instead.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            runner.close()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, f"left open by the test: {leaks}"
    return True


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
