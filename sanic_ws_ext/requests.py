"""Requests to clients, and their replies routed back to whoever asked.

``await conn.request(type, data)`` or ``await ws.request(conn_id, type,
data)`` sends the client an envelope with a ``ref`` made here and returns
the ``data`` of the client's ``reply`` with that ref.

Rules this module keeps:

- A request is one ``ASK`` op to the process holding the connection (this
  one too: the delivery applies it here at once). That process sends the
  envelope and notes, on the connection, the ref and which process asked.
- The client's reply is taken as it arrives, ahead of the messages queued
  for the connection's handlers: a handler that awaits a request to its own
  connection does not wait behind itself. It goes to the asker (an
  ``ANSWER`` op, or a direct call when the asker is this process). A reply
  with a ref this connection was not asked (a late one, a duplicate, a
  forgery) is dropped.
- The asker waits at most the request's timeout; the pending request goes
  then, and an answer after it is dropped. When the connection closes (or
  is not there), each process waiting on it is told at once; when a peer
  process is dropped, requests to its connections fail at once.
- What the holder keeps is bounded: a connection's entries past their
  timeout are pruned as new ones come, and at most :data:`MAX_ASKS` are
  kept per connection (the oldest go first).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ujson

from .delivery import Op, OpKind
from .envelope import Reply, encode_request
from .errors import ClientGone, PublishTooLarge, RequestFailed, RequestTimeout
from .frames import data_frame

if TYPE_CHECKING:
    from .cluster import Membership
    from .connection import Connection
    from .index import LocalIndex
    from .outbox import Outbox

__all__ = ["MAX_ASKS", "Requests"]

log = logging.getLogger("sanic.root.sanic_ws_ext")

#: Requests outstanding per connection that its process keeps track of.
MAX_ASKS = 1024
#: Past this many outstanding on one connection, expired ones are pruned.
_PRUNE_AT = 64
#: ``ANSWER`` op codes.
_REPLIED = 0
_GONE = 1


@dataclass(slots=True)
class _Waiting:
    conn_id: str
    #: The process holding the connection when asked (None: not known yet).
    holder: str | None
    future: asyncio.Future[Any]


class Requests:
    """Asks clients, and brings their replies to the asker."""

    def __init__(
        self,
        local: LocalIndex,
        membership: Membership,
        outbox: Outbox,
        *,
        worker: str,
    ) -> None:
        self.local = local
        self.membership = membership
        self.outbox = outbox
        self.worker = worker
        self._waiting: dict[str, _Waiting] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def pending(self) -> int:
        """Requests this process waits on."""
        return len(self._waiting)

    # -- asking ------------------------------------------------------------------

    async def request(self, conn_id: str, type: str, data: Any, timeout: float) -> Any:
        """Send a request to ``conn_id``, wherever it is; the reply's data."""
        if not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number, got {timeout!r}")
        if self._loop is None:
            raise RuntimeError("request() before the manager started")
        ref = uuid.uuid4().hex
        payload = encode_request(type, data, ref)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[ref] = _Waiting(conn_id, self.membership.route(conn_id), future)
        try:
            self.outbox.address(
                OpKind.ASK,
                conn_id,
                payload=payload,
                reason=ref,
                code=min(0xFFFF, math.ceil(timeout)),
            )
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise RequestTimeout(
                    f"no reply to {type!r} from {conn_id} within {timeout:g}s"
                ) from None
        finally:
            del self._waiting[ref]

    def peer_gone(self, peer: str) -> None:
        """``peer`` was dropped: requests to its connections fail now."""
        for waiting in self._waiting.values():
            if waiting.holder == peer and not waiting.future.done():
                waiting.future.set_exception(
                    ClientGone(f"the process holding {waiting.conn_id} stopped")
                )

    def on_answer(self, op: Op) -> None:
        """A holder brings a reply (or says the connection is gone)."""
        outcome = None if op.code == _GONE else ujson.loads(op.payload)
        self._settle(op.target, op.reason, outcome)

    def _settle(self, conn_id: str, ref: str, outcome: dict[str, Any] | None) -> None:
        waiting = self._waiting.get(ref)
        if waiting is None or waiting.conn_id != conn_id or waiting.future.done():
            return  # timed out already, or not ours
        future = waiting.future
        if outcome is None:
            future.set_exception(
                ClientGone(f"connection {conn_id} closed before it replied")
            )
        elif outcome.get("ok") is True:
            future.set_result(outcome.get("data"))
        else:
            error = outcome.get("error")
            error = error if isinstance(error, dict) else {}
            future.set_exception(
                RequestFailed(str(error.get("code", "")), str(error.get("reason", "")))
            )

    # -- holding the connection ------------------------------------------------------

    def on_ask(self, op: Op) -> None:
        """Send a request to a connection of this process, and note who asked."""
        conn = self.local.conns.get(op.target)
        if conn is None:
            if self.membership.route(op.target) == self.worker:
                self._answer(op.origin, op.target, op.reason, None)  # ours, gone
            return  # another process's (sent to all): its holder answers
        assert self._loop is not None
        asks = conn._asks
        if asks is None:
            asks = conn._asks = {}
        elif len(asks) >= _PRUNE_AT:
            now = self._loop.time()
            for ref in [ref for ref, (_, until) in asks.items() if until < now]:
                del asks[ref]
            while len(asks) >= MAX_ASKS:
                del asks[next(iter(asks))]
        # A second's grace: the asker's clock runs from before the op left.
        asks[op.reason] = (op.origin, self._loop.time() + op.code + 1)
        if not conn._wire.send_frame(data_frame(op.payload, False)):
            del asks[op.reason]
            self._answer(op.origin, op.target, op.reason, None)

    def replied(self, conn: Connection, reply: Reply) -> None:
        """The client answered: bring it to the asker, if it was asked."""
        asks = conn._asks
        entry = asks.pop(reply.ref, None) if asks else None
        if entry is None:
            return  # not asked, answered already, or past its timeout
        if reply.ok:
            outcome: dict[str, Any] = {"ok": True, "data": reply.data}
        else:
            error = {"code": reply.code, "reason": reply.reason}
            outcome = {"ok": False, "error": error}
        self._answer(entry[0], conn.id, reply.ref, outcome)

    def lost(self, conn: Connection) -> None:
        """``conn`` closed: whoever waits on it is told now."""
        asks, conn._asks = conn._asks, None
        for ref, (origin, _) in (asks or {}).items():
            self._answer(origin, conn.id, ref, None)

    def _answer(
        self, origin: str, conn_id: str, ref: str, outcome: dict[str, Any] | None
    ) -> None:
        if origin == self.worker:
            self._settle(conn_id, ref, outcome)
            return
        payload = b"" if outcome is None else ujson.dumps(outcome).encode()
        code = _GONE if outcome is None else _REPLIED
        try:
            self.outbox.publish(
                OpKind.ANSWER,
                target=conn_id,
                payload=payload,
                reason=ref,
                code=code,
                to=origin,
            )
        except PublishTooLarge as exc:
            log.warning("reply from %s to %s dropped: %s", conn_id, origin, exc)
            failed = {"code": "reply_too_large", "reason": str(exc)}
            self._answer(origin, conn_id, ref, {"ok": False, "error": failed})
