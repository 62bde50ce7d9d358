"""sanic-ws-ext: real-time WebSockets for any Sanic app.

::

    from sanic import Sanic
    from sanic_ext import Extend
    from sanic_ws_ext import WSExtension

    app = Sanic("chat")
    Extend(app).register(WSExtension)

serves WebSockets at ``/ws`` and puts the connection manager on ``app.ctx.ws``.
"""

from __future__ import annotations

from .config import DEFAULTS, WSConfig
from .connection import Connection, ConnectionState
from .emitter import Emitter, SyncEmitter
from .endpoint import bearer_token
from .envelope import Envelope
from .errors import (
    ClientGone,
    CloseCode,
    ConfigError,
    EmitFailed,
    ErrorCode,
    MessageError,
    PublishTooLarge,
    Reject,
    RequestError,
    RequestFailed,
    RequestTimeout,
    SequencerUnavailable,
    WSError,
)
from .extension import WSExtension
from .handlers import Accept, WSHandlers
from .history import History, Page, Position
from .manager import ConnectionManager
from .schemas import InvalidData, InvalidOutgoing

__all__ = [
    "DEFAULTS",
    "Accept",
    "ClientGone",
    "CloseCode",
    "ConfigError",
    "Connection",
    "ConnectionManager",
    "ConnectionState",
    "EmitFailed",
    "Emitter",
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
    "SyncEmitter",
    "WSConfig",
    "WSError",
    "WSExtension",
    "WSHandlers",
    "bearer_token",
]

__version__ = "0.1.0"
