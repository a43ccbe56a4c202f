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


class Inspection:
    """The handlers, bound to one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def add_routes(self, app: web.Application) -> None:
        router = app.router
        router.add_get(f"{PREFIX}/health", self.health)
        router.add_get(f"{PREFIX}/state", self.state)
        router.add_get(f"{PREFIX}/requests", self.requests)
        router.add_post(f"{PREFIX}/reset", self.reset)
        router.add_get(f"{PREFIX}/faults", self.faults)
        router.add_put(f"{PREFIX}/faults", _setter(self._sim.set_faults, self.faults))
        router.add_get(f"{PREFIX}/limits", self.limits)
        router.add_put(f"{PREFIX}/limits", _setter(self._sim.set_limits, self.limits))
        router.add_get(f"{PREFIX}/counters", self.counters)

    async def health(self, _: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def state(self, request: web.Request) -> web.StreamResponse:
        customers = request.query.getall("customer_id", []) or None
        sections = request.query.getall("section", []) or None
        unknown = set(sections or ()) - set(self._sim.state.SECTIONS)
        if unknown:
            return _invalid(f"unknown section(s): {', '.join(sorted(unknown))}")
        snapshot = self._sim.state.snapshot(customer_ids=customers, sections=sections)
        return web.json_response(snapshot)

    async def requests(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("since")
        try:
            since = float(raw) if raw is not None else None
        except ValueError:
            return _invalid("since must be epoch seconds")
        return web.json_response(self._sim.log.since(since))

    async def reset(self, _: web.Request) -> web.StreamResponse:
        self._sim.reset()
        return web.json_response({"reset": True})

    async def faults(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self._sim.faults.describe())

    async def limits(self, _: web.Request) -> web.StreamResponse:
        limiter = self._sim.limiter
        return web.json_response({"overrides": limiter.overrides, "effective": limiter.effective()})

    async def counters(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self._sim.counters.snapshot())


def add_inspection_routes(app: web.Application, sim: Simulator) -> None:
    Inspection(sim).add_routes(app)


def _setter(apply: Callable[[object], None], show: RouteHandler) -> RouteHandler:
    """A PUT handler: parse JSON, apply it (ValueError → 400), answer with the new setting."""

    async def put(request: web.Request) -> web.StreamResponse:
        try:
            apply(json.loads(await request.read() or b"{}"))
        except ValueError as exc:
            return _invalid(str(exc))
        return await show(request)

    return put
