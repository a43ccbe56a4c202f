"""The console's aiohttp application: middlewares in order (``protect`` outermost, then
``guard``), the JSON API, the pages, the static files and ``/healthz``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from service.ops.console import api, pages
from service.ops.console.guard import PRINCIPAL, guard, protect
from service.ops.console.state import CONSOLE, Console
from service.ops.console.templates import Static

__all__ = ["build_app"]

log = structlog.get_logger(__name__)

# Requests are small: forms and JSON asks. The largest is a replay of 1000 ids.
MAX_REQUEST_BYTES = 256 * 1024


async def healthz(_: web.Request) -> web.Response:
    """For probes: the console answers. Shows no data, so it needs no user."""
    return web.json_response({"ok": True})


def _access_log() -> Any:
    """One line per request: method, path, status, user, milliseconds. Never the query string
    (a ``next=`` or a filter is harmless, but nothing secret is ever let near a log line), never
    a header or a body."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        principal = request.get(PRINCIPAL)
        log.info(
            "console_request",
            method=request.method,
            path=request.path,
            status=response.status,
            user=None if principal is None else principal.user.name,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    return middleware


def build_app(console: Console) -> web.Application:
    app = web.Application(
        middlewares=[
            _access_log(),
            protect(secure=console.secure, render_error=pages.error_page),
            guard(console.users, console.sessions),
        ],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[CONSOLE] = console
    api.add_routes(app.router)
    pages.add_routes(app.router)
    app.router.add_get("/static/{name}", Static().serve)
    app.router.add_get("/healthz", healthz)
    return app
