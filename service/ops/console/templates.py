"""The console's pages and static files, read once at start-up (no file is read while serving).

Templates are Jinja2 with autoescaping on for every template: whatever a producer or the API
wrote (bodies, ids, error messages, memos) is shown as text. Nothing in this package marks a
value safe. The one script (``static/console.js``, the overview's live refresh) is a file of
this package, served from here: no CDN, nothing fetched at run time, no inline script (the
Content-Security-Policy forbids it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

__all__ = ["Static", "Templates"]

PACKAGE = "service.ops.console"
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """``3 h 12 min``-style age of an aware datetime; ``-`` for none."""
    if moment is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def instant(moment: datetime | str | None) -> str:
    if moment is None:
        return "-"
    if isinstance(moment, str):
        return moment
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def compact_json(value: Any) -> str:
    """A value as one line of JSON: plain text, escaped by the page like any other."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def segment(value: str) -> str:
    """A value as one URL path segment (``/`` and everything else reserved escaped)."""
    return quote(value, safe="")


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


class Templates:
    def __init__(self) -> None:
        env = jinja2.Environment(
            loader=jinja2.PackageLoader(PACKAGE, "templates"),
            autoescape=True,  # every template, whatever its name
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(
            age=age, instant=instant, number=number, compact_json=compact_json, segment=segment
        )
        self._pages = {
            name: env.get_template(name) for name in env.list_templates(extensions=["html"])
        }

    def render(self, name: str, **context: Any) -> str:
        return self._pages[name].render(**context)

    def page(self, name: str, *, status: int = 200, **context: Any) -> web.Response:
        return web.Response(
            text=self.render(name, **context),
            status=status,
            content_type="text/html",
            charset="utf-8",
        )


class Static:
    """The files under ``static/``, in memory: ``GET /static/{name}``."""

    def __init__(self) -> None:
        folder = resources.files(PACKAGE).joinpath("static")
        self._files: dict[str, tuple[bytes, str]] = {}
        for entry in folder.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in STATIC_TYPES:
                self._files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])

    async def serve(self, request: web.Request) -> web.Response:
        found = self._files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8")
