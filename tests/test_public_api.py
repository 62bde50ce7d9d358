"""The public surface is small and pinned: changing it is a decision."""

from __future__ import annotations

import sanic_ws_ext


def test_all_is_pinned() -> None:
    assert sorted(sanic_ws_ext.__all__) == sorted(
        [
            "DEFAULTS",
            "Accept",
            "ClientGone",
            "CloseCode",
            "ConfigError",
            "Connection",
            "ConnectionManager",
            "ConnectionState",
            "Envelope",
            "ErrorCode",
            "History",
            "InvalidData",
            "InvalidOutgoing",
            "MessageError",
            "Page",
            "Position",
            "PublishTooLarge",
            "Reject",
            "RequestError",
            "RequestFailed",
            "RequestTimeout",
            "SequencerUnavailable",
            "WSConfig",
            "WSError",
            "WSExtension",
            "WSHandlers",
        ]
    )
    for name in sanic_ws_ext.__all__:
        assert getattr(sanic_ws_ext, name) is not None


def test_exceptions_share_one_root() -> None:
    for exc in (
        sanic_ws_ext.ConfigError,
        sanic_ws_ext.Reject,
        sanic_ws_ext.MessageError,
        sanic_ws_ext.PublishTooLarge,
        sanic_ws_ext.SequencerUnavailable,
        sanic_ws_ext.RequestFailed,
        sanic_ws_ext.RequestTimeout,
        sanic_ws_ext.ClientGone,
    ):
        assert issubclass(exc, sanic_ws_ext.WSError)
