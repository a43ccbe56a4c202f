"""The unsigned inspection and control routes, all under ``/_sandbox/`` (never an API path).

| route                       | does                                                           |
|-----------------------------|----------------------------------------------------------------|
| GET  /_sandbox/health       | ``{"status": "ok"}`` once the server listens                   |
| GET  /_sandbox/state        | the state (money as decimal strings); loadable by --data;      |
|                             | ``?customer_id=`` / ``?section=`` (repeatable) narrow it       |
| GET  /_sandbox/requests     | request log, oldest first; ``?since=<epoch seconds>`` filters  |
| POST /_sandbox/reset        | data set, limits and faults as at start; log and counters empty |
| GET/PUT /_sandbox/faults    | fault rules (format in ``faults.py`` / ``docs/sandbox.md``)     |
| GET/PUT /_sandbox/limits    | rate-limit overrides; GET also shows the effective table       |
| GET  /_sandbox/counters     | accepted / throttled / rejected_signature / ... and per API    |

A bad PUT body is HTTP 400 ``{"error": "<why>"}`` and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from service.sandbox.simulator import Simulator

__all__ = ["PREFIX", "add_inspection_routes"]

PREFIX = "/_sandbox"
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _invalid(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


def add_inspection_routes(app: web.Application, sim: Simulator) -> None:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def state(request: web.Request) -> web.Response:
        customers = request.query.getall("customer_id", []) or None
        sections = request.query.getall("section", []) or None
        unknown = set(sections or ()) - set(sim.state.SECTIONS)
        if unknown:
            return _invalid(f"unknown section(s): {', '.join(sorted(unknown))}")
        return web.json_response(sim.state.snapshot(customer_ids=customers, sections=sections))

    async def requests(request: web.Request) -> web.Response:
        raw = request.query.get("since")
        try:
            since = float(raw) if raw is not None else None
        except ValueError:
            return _invalid("since must be epoch seconds")
        return web.json_response(sim.log.since(since))

    async def reset(_: web.Request) -> web.Response:
        sim.reset()
        return web.json_response({"reset": True})

    async def get_faults(_: web.Request) -> web.Response:
        return web.json_response(sim.faults.describe())

    async def get_limits(_: web.Request) -> web.Response:
        return web.json_response(
            {"overrides": sim.limiter.overrides, "effective": sim.limiter.effective()}
        )

    async def counters(_: web.Request) -> web.Response:
        return web.json_response(sim.counters.snapshot())

    router = app.router
    router.add_get(f"{PREFIX}/health", health)
    router.add_get(f"{PREFIX}/state", state)
    router.add_get(f"{PREFIX}/requests", requests)
    router.add_post(f"{PREFIX}/reset", reset)
    router.add_get(f"{PREFIX}/faults", get_faults)
    router.add_put(f"{PREFIX}/faults", _setter(sim.set_faults, get_faults))
    router.add_get(f"{PREFIX}/limits", get_limits)
    router.add_put(f"{PREFIX}/limits", _setter(sim.set_limits, get_limits))
    router.add_get(f"{PREFIX}/counters", counters)


def _setter(apply: Callable[[object], None], show: RouteHandler) -> RouteHandler:
    """A PUT handler: parse JSON, apply it (ValueError → 400), answer with the new setting."""

    async def put(request: web.Request) -> web.StreamResponse:
        try:
            apply(json.loads(await request.read() or b"{}"))
        except ValueError as exc:
            return _invalid(str(exc))
        return await show(request)

    return put
