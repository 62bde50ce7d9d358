"""The README's example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sanic import Sanic

from sanic_ws_ext.testing import WSTestClient, serve

README = Path(__file__).parent.parent / "README.md"


def readme_app() -> Sanic[Any, Any]:
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README lost its example"
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    app: Sanic[Any, Any] = namespace["app"]
    return app


async def test_readme_example() -> None:
    app = readme_app()
    async with serve(app) as server:
        alice = await WSTestClient.connect(server.ws_url())
        bob = await WSTestClient.connect(server.ws_url())
        await alice.send("chat.send", "hello from the README")
        for client in (alice, bob):
            message = await client.expect("chat.message")
            assert message.data == {"from": None, "text": "hello from the README"}
        await alice.close()
        await bob.close()
