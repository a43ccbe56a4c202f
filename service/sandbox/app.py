"""The aiohttp application: inspection routes under ``/_sandbox/``, all else to the gateway."""

from __future__ import annotations

import uuid

from aiohttp import web

from service.sandbox.gateway import Gateway
from service.sandbox.inspection import add_inspection_routes
from service.sandbox.simulator import Simulator

__all__ = ["build_app"]

MAX_BODY_BYTES = 12 * 1024 * 1024  # the AK/SK signing method's documented body limit


async def _request_id(_: web.Request, response: web.StreamResponse) -> None:
    # The gateway sets its own ids (they appear in the log); this covers inspection routes.
    response.headers.setdefault("X-Request-Id", uuid.uuid4().hex)


def build_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    add_inspection_routes(app, sim)
    app.router.add_route("*", "/{tail:.*}", Gateway(sim).handle)
    app.on_response_prepare.append(_request_id)
    return app
