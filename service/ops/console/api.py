"""The console's JSON API (CONTRACT §10). Reads are open to every user; ``POST`` routes act and
are for operators (``guard`` checks the role and, with the session cookie, the anti-forgery
token before any handler here runs).

=====================================  ========  =============================================
route                                  role      answer
=====================================  ========  =============================================
``GET /api/quota``                     viewer    the rows of ``quota show --json``, a list
``POST /api/quota``                    operator  ``{"api", "rate", "customer"|"egress"}``;
                                                 ``"rate": null`` resets
``GET /api/commands/{command_id}``     viewer    ``why --json``'s object
``GET /api/dead-letters?limit=N``      viewer    newest first (default 100)
``POST /api/dead-letters/replay``      operator  ``{"command_ids": [...], "dry_run": bool}`` →
                                                 ``{"results": [{command_id, action, detail}]}``
``GET /api/audit?command_id=&…``       viewer    audit entries, newest first
``POST /api/pause``, ``/api/resume``   operator  ``{"customer", "api" (optional)}``
=====================================  ========  =============================================
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.ops.console import actions
from service.ops.console.asks import (
    AuditAsk,
    PauseAsk,
    QuotaAsk,
    ReplayAsk,
    bounded_limit,
    parse,
)
from service.ops.console.guard import Refusal, principal_of
from service.ops.console.letters import ReplayFailed
from service.ops.console.state import console_of

__all__ = ["add_routes"]

MAX_DEAD_LETTERS = 10_000


async def _body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise Refusal(415, "send the body as application/json")
    try:
        return await request.json()
    except ValueError:
        raise Refusal(400, "invalid request: the body is not JSON") from None


async def get_quota(request: web.Request) -> web.Response:
    rows = await console_of(request).deployment.quota()
    return web.json_response([row.as_json() for row in rows])


async def post_quota(request: web.Request) -> web.Response:
    ask = parse(QuotaAsk, await _body(request))
    done = await actions.change_quota(console_of(request), ask, principal_of(request).user)
    return web.json_response(done)


async def get_command(request: web.Request) -> web.Response:
    command_id = request.match_info["command_id"]
    return web.json_response(await actions.whereabouts(console_of(request), command_id))


async def get_dead_letters(request: web.Request) -> web.Response:
    limit = bounded_limit(request.query.get("limit"), default=100, most=MAX_DEAD_LETTERS)
    letters = await console_of(request).letters.newest(limit)
    return web.json_response([letter.as_json() for letter in letters])


async def post_replay(request: web.Request) -> web.Response:
    ask = parse(ReplayAsk, await _body(request))
    try:
        answers = await actions.replay(console_of(request), ask, principal_of(request).user)
    except ReplayFailed as failed:
        done = [a.as_json() for a in failed.answers]
        return web.json_response({"error": str(failed), "results": done}, status=503)
    return web.json_response({"results": [a.as_json() for a in answers]})


async def get_audit(request: web.Request) -> web.Response:
    query = {k: v for k, v in request.query.items() if v != ""}
    ask = parse(AuditAsk, query)
    rows = await console_of(request).deployment.audit(
        command_id=ask.command_id, customer_id=ask.customer_id, limit=ask.limit
    )
    return web.json_response([row.as_json() for row in rows])


async def post_pause(request: web.Request) -> web.Response:
    ask = parse(PauseAsk, await _body(request))
    user = principal_of(request).user
    return web.json_response(await actions.steer_pause(console_of(request), ask, user, pause=True))


async def post_resume(request: web.Request) -> web.Response:
    ask = parse(PauseAsk, await _body(request))
    user = principal_of(request).user
    done = await actions.steer_pause(console_of(request), ask, user, pause=False)
    return web.json_response(done)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/quota", get_quota)
    router.add_post("/api/quota", post_quota)
    router.add_get("/api/commands/{command_id:.+}", get_command)
    router.add_get("/api/dead-letters", get_dead_letters)
    router.add_post("/api/dead-letters/replay", post_replay)
    router.add_get("/api/audit", get_audit)
    router.add_post("/api/pause", post_pause)
    router.add_post("/api/resume", post_resume)
