"""What an operator sees: health, stats, metrics, the dashboard, clean logs.

Routes, next to the websocket endpoint (``WS_PATH``, ``/ws`` by default):

- ``<WS_PATH>/health`` (``WS_HEALTH``, on): liveness and readiness for load
  balancers; 200, or 503 until every worker of the machine is heard and while
  the worker shuts down. Names no client.
- ``<WS_PATH>/stats`` (JSON), ``<WS_PATH>/metrics`` (Prometheus text) and
  ``<WS_PATH>/dashboard`` (``WS_STATS``, off): cluster-wide figures, whichever
  worker answers. With ``WS_STATS_TOKEN`` set, stats and metrics need
  ``Authorization: Bearer <token>``.

A route exists only when its key is on at registration (like ``WS_PATH``,
the switches must be set before registering): a switched-off route is a 404
like any unknown path, and cannot clash with an app's own route of that name.
The token is read per request.

Logs: the extension's own lines name connections by id and never print
request headers or query strings. Sanic's access log (``ACCESS_LOG``) and
its log of unhandled exceptions print the request URL, where browser
clients put their token (``/ws?token=...``): a filter on those loggers
replaces the values of the websocket endpoint's query string with ``***``.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json, raw, text

from .stats import prometheus_text

if TYPE_CHECKING:
    from .config import WSConfig
    from .manager import ConnectionManager

__all__ = ["add_routes", "add_static_route", "redact_query_strings"]

_NO_STORE = {"cache-control": "no-store"}
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_STATIC = Path(__file__).parent / "static"


def add_routes(bp: Blueprint, base: str, config: WSConfig) -> None:
    """Add the routes ``config`` switches on, under ``base``."""
    if config.health:
        bp.add_route(serve_health, f"{base}/health", methods=["GET"], name="health")
    if config.asyncapi:
        bp.add_route(
            serve_asyncapi, f"{base}/asyncapi.json", methods=["GET"], name="asyncapi"
        )
        bp.add_route(
            serve_asyncapi_page,
            f"{base}/asyncapi",
            methods=["GET"],
            name="asyncapi_page",
        )
    if not config.stats:
        return
    bp.add_route(serve_stats, f"{base}/stats", methods=["GET"], name="stats")
    bp.add_route(serve_metrics, f"{base}/metrics", methods=["GET"], name="metrics")
    # The page holds no figures (it fetches them, with the token if any): it
    # is served without the token.
    html = "text/html; charset=utf-8"
    add_static_route(bp, base, "dashboard", html, file="dashboard.html")
    add_static_route(bp, base, "dashboard.js", "text/javascript; charset=utf-8")


async def serve_asyncapi(request: Request) -> HTTPResponse:
    """``WS_ASYNCAPI``: the AsyncAPI 3.0 document of the app's websocket API,
    with this request's host as its server."""
    from .asyncapi import asyncapi_document

    secure = request.scheme in ("https", "wss")
    document = asyncapi_document(request.app, host=request.host, secure=secure)
    return json(document, headers={"cache-control": "no-cache"})


async def serve_asyncapi_page(request: Request) -> HTTPResponse:
    """``WS_ASYNCAPI``: a page rendering the document (AsyncAPI's React
    component, from a CDN, as sanic-ext's ``/docs`` does with Redoc)."""
    from html import escape

    from .asyncapi import PAGE

    page = PAGE.format(title=escape(request.app.name), json="asyncapi.json")
    return raw(page.encode(), content_type="text/html; charset=utf-8")


def add_static_route(
    bp: Blueprint, base: str, name: str, content_type: str, file: str | None = None
) -> None:
    """Serve ``static/<file>`` (``name`` by default) at ``<base>/<name>``.

    Read once; served with the extension's version, so browsers revalidate
    and never keep a stale copy.
    """
    body = (_STATIC / (file or name)).read_bytes()

    async def serve_file(request: Request) -> HTTPResponse:
        return raw(
            body, content_type=content_type, headers={"cache-control": "no-cache"}
        )

    route = name.replace(".", "_")
    serve_file.__name__ = f"serve_{route}"
    bp.add_route(serve_file, f"{base}/{name}", methods=["GET"], name=route)


def _manager(request: Request) -> ConnectionManager:
    manager: ConnectionManager = request.app.ctx.ws
    return manager


async def serve_health(request: Request) -> HTTPResponse:
    """``<WS_PATH>/health``: 200 when ready, else 503 (booting, shutting down)."""
    body = _manager(request)._health_check()
    return json(body, status=200 if body["ready"] else 503, headers=_NO_STORE)


def _check_stats(request: Request, manager: ConnectionManager) -> HTTPResponse | None:
    """401 without the right token (when ``WS_STATS_TOKEN`` is set), else ``None``."""
    token = manager._config.stats_token
    if token is None:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Sanic decodes headers with surrogateescape: any byte may come back.
    if scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    ):
        return None
    dashboard = f"{manager._config.path.rstrip('/')}/dashboard#token=<WS_STATS_TOKEN>"
    return text(
        "Unauthorized: send Authorization: Bearer <WS_STATS_TOKEN>.\n"
        f"In a browser, open {dashboard}: the dashboard sends the token from"
        " the URL fragment, which never reaches the server or its logs.\n",
        status=401,
        headers={"www-authenticate": 'Bearer realm="sanic-ws-ext"', **_NO_STORE},
    )


async def serve_stats(request: Request) -> HTTPResponse:
    """``<WS_PATH>/stats``: the cluster's figures as JSON."""
    manager = _manager(request)
    refused = _check_stats(request, manager)
    if refused is not None:
        return refused
    return json(manager._cluster_stats(), headers=_NO_STORE)


async def serve_metrics(request: Request) -> HTTPResponse:
    """``<WS_PATH>/metrics``: the same figures in Prometheus' text format."""
    manager = _manager(request)
    refused = _check_stats(request, manager)
    if refused is not None:
        return refused
    return raw(
        prometheus_text(manager._cluster_stats()).encode(),
        content_type=_PROMETHEUS,
        headers=_NO_STORE,
    )


# -- logs ------------------------------------------------------------------


class _RedactQuery(logging.Filter):
    """Replace query values in URLs of the websocket endpoint with ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self._paths: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, path: str) -> None:
        if path in self._paths:
            return
        self._paths.add(path)
        alternatives = "|".join(
            re.escape(p) for p in sorted(self._paths, key=len, reverse=True)
        )
        self._pattern = re.compile(rf"(?:{alternatives})\?[^\s'\"#]*")

    def redact(self, value: str) -> str:
        if self._pattern is None or "?" not in value:
            return value
        return self._pattern.sub(_hide_values, value)

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if isinstance(request, str):  # Sanic's access log: "GET <url>"
            record.__dict__["request"] = self.redact(request)
        if isinstance(record.msg, str) and (record.args or "?" in record.msg):
            message = record.getMessage()
            redacted = self.redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def _hide_values(match: re.Match[str]) -> str:
    path, _, query = match.group(0).partition("?")
    params = (part.partition("=") for part in query.split("&") if part)
    # A part without "=" may be a bare token: hidden whole.
    return path + "?" + "&".join(k + "=***" if eq else "***" for k, eq, _ in params)


_REDACTOR = _RedactQuery()
#: Sanic's loggers that print request URLs.
_URL_LOGGERS = ("sanic.access", "sanic.error")


def redact_query_strings(paths: Iterable[str]) -> None:
    """Hide query values of requests to ``paths`` in Sanic's logs (idempotent)."""
    for path in paths:
        _REDACTOR.add(path)
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)
