"""A plain process that sends through a SyncEmitter: `python -m tests.emit_calls`.

Arguments: the Redis URL and channel. Each line on stdin is a JSON list of
calls ``[method, args, kwargs]``; once a line's calls are made it prints
``ok`` (or ``error <text>``). No Sanic runs here.
"""

from __future__ import annotations

import sys

import ujson

from sanic_ws_ext import SyncEmitter


def main() -> None:
    url, channel = sys.argv[1:3]
    with SyncEmitter(url, channel=channel) as emitter:
        for line in sys.stdin:
            try:
                for method, args, kwargs in ujson.loads(line):
                    getattr(emitter, method)(*args, **kwargs)
            except Exception as exc:
                print("error", exc, flush=True)
            else:
                print("ok", flush=True)


if __name__ == "__main__":
    main()
