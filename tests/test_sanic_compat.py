"""The Sanic internals the upgrade relies on are checked at registration."""

from __future__ import annotations

import logging

import pytest

from sanic_ws_ext import ConfigError
from sanic_ws_ext.sanic_compat import check


class LacksABuffer:
    __slots__ = ("connections", "transport")


class HasAll:
    __slots__ = ("connections", "recv_buffer", "transport")


def test_a_sanic_without_what_the_upgrade_needs_is_refused() -> None:
    with pytest.raises(ConfigError, match="recv_buffer"):
        check("99.1.0", LacksABuffer)


def test_an_untested_sanic_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sanic.root.sanic_ws_ext"):
        check("26.3.0", HasAll)
    assert "not 26.3.0" in caplog.text


def test_the_installed_sanic_passes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sanic.root.sanic_ws_ext"):
        check()
    assert caplog.text == ""
