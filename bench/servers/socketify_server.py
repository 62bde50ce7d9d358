"""uWebSockets through socketify, publishing to a topic every client subscribed.

Publishes run just after the message callback, in the loop (``call_soon``),
not inside it: uWS corks the socket whose message it is handling, and a
subscriber queues at most 32 publishes before uWS drains it, so the 33rd
publish made inside the callback drains every subscriber uncorked, one
send() per message per client. That cost ~10 us of server CPU per delivered
message against ~0.6 us (see docs/performance.md, "socketify measured six
times too low"); outside the callback each drain is one corked write of 32.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import ujson
from socketify import App, OpCode

PAD = "x" * 40


def run(port: int) -> None:
    app = App()
    chats: list[Any] = []  # chat messages of this loop pass, published together

    def on_open(ws: Any) -> None:
        ws.subscribe("all")

    def burst(k: int) -> None:
        for i in range(k):
            text = ujson.dumps(
                {"type": "tick", "data": {"t": time.time() * 1000, "i": i, "pad": PAD}}
            )
            app.publish("all", text, OpCode.TEXT)

    def publish_chats() -> None:
        for message in chats:
            app.publish("all", message, OpCode.TEXT)
        chats.clear()

    def on_message(ws: Any, message: Any, opcode: Any) -> None:
        parsed = ujson.loads(message)
        if parsed["type"] == "chat":
            if not chats:
                app.loop.loop.call_soon(publish_chats)
            chats.append(message)
            return
        app.loop.loop.call_soon(burst, parsed["data"]["k"])

    app.ws(
        "/ws",
        {
            "compression": 0,
            "max_payload_length": 1 << 20,
            "idle_timeout": 120,
            "open": on_open,
            "message": on_message,
        },
    )
    app.listen(port, lambda config: None)
    app.run()


if __name__ == "__main__":
    run(int(sys.argv[1]))
