"""sanic-ws-ext with a typed chat handler: `sanic bench.servers.ours_typed:app`.

ours.py's chat, but each ``chat`` message is validated against a dataclass
before the handler runs, and the handler broadcasts the typed object
(serialized once per message, as any send). Outgoing checks are off, as in
production. ``bench/chat.py --typed`` compares its chat throughput with ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import Connection, Envelope, WSExtension, WSHandlers

app = Sanic("bench_ours_typed")
app.config.MOTD = False
app.config.WS_VALIDATE_OUTGOING = False
Extend(app).register(WSExtension)
handlers = WSHandlers(app)


@dataclass
class Chat:
    """What the load client sends: its send time, in ms."""

    t: float


handlers.sends("chat", Chat)


@handlers.on("chat")
async def chat(conn: Connection, msg: Envelope[Chat]) -> None:
    await conn.manager.broadcast("chat", msg.data)
