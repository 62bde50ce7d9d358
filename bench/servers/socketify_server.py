"""uWebSockets through socketify, publishing to a topic every client subscribed."""

from __future__ import annotations

import sys
import time
from typing import Any

import ujson
from socketify import App, OpCode

PAD = "x" * 40


def run(port: int) -> None:
    app = App()

    def on_open(ws: Any) -> None:
        ws.subscribe("all")

    def on_message(ws: Any, message: Any, opcode: Any) -> None:
        parsed = ujson.loads(message)
        if parsed["type"] == "chat":
            app.publish("all", message, OpCode.TEXT)
            return
        k = parsed["data"]["k"]
        for i in range(k):
            text = ujson.dumps(
                {"type": "tick", "data": {"t": time.time() * 1000, "i": i, "pad": PAD}}
            )
            app.publish("all", text, OpCode.TEXT)

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
