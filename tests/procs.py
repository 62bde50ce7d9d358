"""Real `sanic` processes for tests: the library's own helper, as users get it."""

from __future__ import annotations

from sanic_ws_ext.testing import SanicProcess, free_port

__all__ = ["SanicProcess", "free_port"]
