"""``python -m sanic_ws_ext``: the app's websocket API, described.

::

    python -m sanic_ws_ext types server:app > src/messages.d.ts
    python -m sanic_ws_ext asyncapi server:app > asyncapi.json

``module:app`` names the Sanic app as ``sanic`` does (``module:factory()``
calls a factory). Nothing here is imported by the server itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any


def load_app(target: str) -> Any:
    """The Sanic app ``module:attribute`` (``module:factory()`` is called)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"expected module:app, got {target!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    call = attribute.endswith("()")
    app = getattr(module, attribute.removesuffix("()"))
    return app() if call else app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sanic_ws_ext",
        description="Describe an app's websocket API from its declarations.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    types = commands.add_parser("types", help="TypeScript types for client.d.ts")
    types.add_argument("app", help="module:app")
    spec = commands.add_parser("asyncapi", help="the AsyncAPI 3.0 document (JSON)")
    spec.add_argument("app", help="module:app")
    spec.add_argument("--host", help="add a server entry for this host:port")
    args = parser.parse_args(argv)
    app = load_app(args.app)
    if args.command == "types":
        from .typescript import typescript_types

        sys.stdout.write(typescript_types(app))
    else:
        from .asyncapi import asyncapi_document

        document = asyncapi_document(app, host=args.host)
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
