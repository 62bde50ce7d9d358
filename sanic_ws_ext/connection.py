"""One websocket connection, as handlers and the manager see it.

A :class:`Connection` is the handle apps hold: who the client is, what it is
in, and how to reach it. The socket itself is run by a
:class:`~sanic_ws_ext.wire.Wire` (the engine under the handle); the handle
only delegates to the wire's public methods, and the wire knows the handle
only as the thing it reports messages for.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from .envelope import message_body
from .errors import CloseCode
from .frames import data_frame
from .wire import ConnectionState, Wire, send_key

if TYPE_CHECKING:
    from .dispatch import Mailbox
    from .manager import ConnectionManager

__all__ = ["Connection", "ConnectionState"]

#: What ``rooms`` is for a connection in none.
_NO_ROOMS: frozenset[str] = frozenset()


class Connection:
    """A connected client.

    Attributes:
        id: A random string, unique across the cluster, that also names the
            process holding the socket (so any process can route to it).
        user: The identity returned by the verify hook, or ``None``.
        meta: Free-form metadata; seeded by the verify hook, yours to change.
        remote: The client's IP address as Sanic sees it.
        headers: The request headers listed in ``WS_KEEP_HEADERS``.
        worker: The name of the worker process that holds the socket.
        rooms: The rooms this connection is in: a read-only, set-like view
            (``in``, iteration, ``len``, ``&``, ``|``, ``-``); join and leave
            with the manager's :meth:`join` and :meth:`leave`.
        presence: What rooms with full presence show of it to their members
            (the verify hook's ``Accept.presence``); change it with
            :meth:`update_presence`.
        connected_at: Unix time of the upgrade.
        manager: The connection manager, the same object as ``app.ctx.ws``.
        state: A :class:`ConnectionState`: ``OPEN``, ``CLOSING`` or ``CLOSED``.
        backlog: Bytes accepted for it and not yet sent to the kernel.
        subprotocol: The ``Sec-WebSocket-Protocol`` selected at the upgrade,
            or ``None``.
        expires_at: Unix time at which the connection's credentials run out
            (``Accept(expires_at=...)``, moved on by each accepted refresh),
            or ``None``.
        close_code, close_reason: Why it closed; ``None`` while open.

    Names with a leading underscore are the library's bookkeeping, kept by
    the part named beside each: apps never touch them.
    """

    __slots__ = (
        "_asks",
        "_client_rooms",
        "_mailbox",
        "_refresh_asked",
        "_rooms",
        "_wire",
        "connected_at",
        "expires_at",
        "headers",
        "id",
        "manager",
        "meta",
        "presence",
        "remote",
        "subprotocol",
        "user",
        "worker",
    )

    def __init__(
        self,
        *,
        id: str,
        manager: ConnectionManager,
        wire: Wire,
        user: str | None,
        meta: dict[str, Any],
        remote: str,
        headers: dict[str, str],
        worker: str,
        subprotocol: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.id = id
        self.manager = manager
        self.user = user
        self.meta = meta
        self.remote = remote
        self.headers = headers
        self.worker = worker
        # Rooms this connection is in, as a dict's keys (kept by the local
        # index): a dict of strings is one object the garbage collector does
        # not track, where a set is one more it walks in every full
        # collection (issue 14); None while in none.
        self._rooms: dict[str, None] | None = None
        self.connected_at = time.time()
        # The socket engine, wire.py (apps use the methods below).
        self._wire = wire
        wire.conn = self
        # Messages waiting for this connection's handlers, while there are
        # any (kept by the dispatcher; ``None`` while idle).
        self._mailbox: Mailbox | None = None
        # Rooms it joined by its own ``room.join`` (it may leave only those;
        # kept by the dispatcher).
        self._client_rooms: set[str] | None = None
        #: What rooms with full presence show of this connection to their
        #: members (the verify hook's ``Accept.presence``; see
        #: :meth:`update_presence`).
        self.presence: dict[str, Any] = {}
        # Requests sent to it not answered yet: ref -> (the process that
        # asked, until when it waits); ``None`` while there are none (kept
        # by the requests part).
        self._asks: dict[str, tuple[str, float]] | None = None
        self.subprotocol = subprotocol
        self.expires_at = expires_at
        # The server asked this client for a fresh token (auth.refresh)
        # since its expiry last moved (kept by the heartbeat's sweep).
        self._refresh_asked = False

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r} {self.state.value}>"

    @property
    def rooms(self) -> AbstractSet[str]:
        rooms = self._rooms
        return _NO_ROOMS if rooms is None else rooms.keys()

    @property
    def state(self) -> ConnectionState:
        return self._wire.state

    @property
    def close_code(self) -> int | None:
        return self._wire.close_code

    @property
    def close_reason(self) -> str | None:
        return self._wire.close_reason

    @property
    def backlog(self) -> int:
        """Bytes accepted for this connection and not yet sent to the kernel."""
        return self._wire.backlog

    # -- sending ---------------------------------------------------------

    async def send(
        self,
        type: str | None = None,
        data: Any = None,
        *,
        raw: str | bytes | None = None,
        volatile: bool = False,
        key: str | None = None,
    ) -> None:
        """Send an envelope (``type``, ``data``), or ``raw`` as it is (``str``
        as text, ``bytes`` as binary), to this connection.

        Returns at once, unless this process queued more than its pass limit
        (2 to 8 MiB) without letting the event loop run: then it waits for
        readers that are reading (see ``WS_DRAIN_TIMEOUT``), never for this
        socket alone. ``volatile`` and ``key``: as for the manager's sends.
        """
        check = self.manager._check_out
        if check is not None:
            check(type, data)
        frame = data_frame(*message_body(type, data, raw))
        self._wire.send_frame(frame, volatile, send_key(key))
        await self._wire.pace()

    async def send_raw(self, payload: str | bytes, **options: Any) -> None:
        """Deprecated: ``send(raw=payload)``."""
        warnings.warn(
            "conn.send_raw(payload) is deprecated: use conn.send(raw=payload)",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.send(raw=payload, **options)

    async def request(
        self, type: str, data: Any = None, *, timeout: float = 10.0
    ) -> Any:
        """Send a request to this client and return the ``data`` it replies.

        The client answers with a ``reply`` envelope carrying the request's
        ``ref`` (the browser client's ``onRequest`` handlers do). Raises
        :class:`~sanic_ws_ext.errors.RequestFailed` (``code``, ``reason``)
        when it answers ``ok: false``,
        :class:`~sanic_ws_ext.errors.RequestTimeout` (a ``TimeoutError``)
        after ``timeout`` seconds without a reply, and
        :class:`~sanic_ws_ext.errors.ClientGone` as soon as the connection
        closes. A handler may await a request to its own connection: replies
        do not wait behind the connection's queued messages.
        """
        return await self.manager.request(self.id, type, data, timeout=timeout)

    # -- rooms -----------------------------------------------------------------

    async def join(self, room: str) -> None:
        """Join a room."""
        await self.manager.join(self.id, room)

    async def leave(self, room: str) -> None:
        """Leave a room."""
        await self.manager.leave(self.id, room)

    async def update_presence(self, meta: dict[str, Any]) -> None:
        """Replace what rooms with full presence show of this connection.

        Their members see a ``presence.diff`` in which the old entry leaves
        and the new one joins under the same key. ``meta`` must be a JSON-able
        dict of at most ``WS_PRESENCE_META_MAX`` bytes as JSON, without
        ``ref`` (the server's); otherwise ``ValueError`` or ``TypeError``.
        """
        self.manager._update_presence(self, meta)

    # -- closing ---------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; frames queued before it are sent first."""
        self._wire.start_close(code, reason)
