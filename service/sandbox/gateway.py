"""The request pipeline for every simulated API call, in the order the real path takes:

1. route (``service.api.operations.match``) — unknown: 404 ``APIGW.0101``;
2. signature (``auth``) — refused: 401 ``APIGW.0301``;
3. throttle per (API, ParentUid) and per (API, source IP) — either full: 429 ``APIG.0308``;
4. faults (latency; then error / hang / drop_after_apply);
5. caller type — wrong: 403 ``CBC.0151`` (``IAM.0003`` for IAM);
6. the business rule, then the answer (or, for drop_after_apply, a cut connection).

Every request is logged once, when it finishes, and every answer carries ``X-Request-Id``. The
entry's ``at`` is when the request arrived and ``done_at`` when its answer was ready (or its
connection cut): together they say when the API was busy with it, e.g. whether two renewals of
one customer overlapped. ``checked_at`` (absent for requests refused before it) is when the
throttle counted it: its 1-second windows over every request, refused ones included, are the
ones the throttle judged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from service.api.operations import Caller, Operation, match
from service.sandbox.auth import Authenticator, Principal, SignedRequest
from service.sandbox.calls import Call, Handler, Reply
from service.sandbox.dispatch import BSS_HANDLERS
from service.sandbox.errors import ApiError, bad_request, denied, gateway, iam_error
from service.sandbox.faults import Decision, FaultRule
from service.sandbox.iam import TokenIssuer
from service.sandbox.ratelimit import Window
from service.sandbox.simulator import Simulator
from service.sandbox.wire import dumps, loads

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

IAM_OPERATION = "create_temporary_access_key_by_agency"
JSON_TYPE = "application/json;charset=UTF-8"
_HANG_POLL_SECONDS = 0.25
NOT_FOUND = ("APIGW.0101", "The API does not exist or has not been published in the environment")


def throttled(window: Window) -> ApiError:
    seconds = f"{window.seconds:g}"
    return gateway(
        429,
        "APIG.0308",
        "The throttling threshold has been reached: policy user over ratelimit,"
        f"limit:{window.size},time:{seconds} second",
    )


def caller_refusal(op: Operation, principal: Principal) -> ApiError | None:
    if op.caller is Caller.EITHER or (op.caller is Caller.PARTNER) == principal.is_partner:
        return None
    if op.service == "iam":
        return iam_error(403, "IAM.0003", "Only the partner's own credentials may assume a role.")
    if op.caller is Caller.PARTNER:
        return denied("This API can only be called with the partner's credentials.")
    return denied("Partners cannot call this API; use the customer's delegated credentials.")


class Gateway:
    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._auth = Authenticator(sim.state, sim.credentials)
        issuer = TokenIssuer(sim.credentials, lambda: sim.faults.token_ttl_seconds)
        self._handlers: dict[str, Handler] = {**BSS_HANDLERS, IAM_OPERATION: issuer}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry: dict[str, Any] = {
            "at": time.time(),
            "method": request.method,
            "path": request.rel_url.raw_path,
            "query": request.rel_url.raw_query_string,
            "api": None,
            "parent_uid": None,
            "source": request.remote,
            "status": None,
            "request_id": uuid.uuid4().hex,
        }
        try:
            return await self._pipeline(request, entry)
        finally:
            entry["done_at"] = time.time()
            self._sim.log.append(entry)

    async def _pipeline(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse:
        counters = self._sim.counters
        found = match(request.method, request.rel_url.raw_path)
        if found is None:
            counters.outcome(None, "not_found")
            return self._answer(entry, self._refusal(gateway(404, *NOT_FOUND), entry))
        op, params = found
        entry["api"] = op.name
        body = await request.read()
        try:
            principal = self._auth.verify(
                SignedRequest(
                    request.method,
                    request.rel_url.raw_path,
                    request.rel_url.query.items(),
                    request.headers,
                    body,
                )
            )
        except ApiError as exc:
            counters.outcome(op.name, "rejected_signature")
            return self._answer(entry, self._refusal(exc, entry))
        entry["parent_uid"] = principal.parent_uid
        entry["checked_at"] = time.time()
        window = self._sim.limiter.admit(request.remote or "", op.name, principal.parent_uid)
        if window is not None:
            counters.outcome(op.name, "throttled")
            return self._answer(entry, self._refusal(throttled(window), entry))
        counters.outcome(op.name, "accepted")
        call = (op, params, body, principal)
        return await self._backend(request, entry, call, self._sim.faults.draw(op.name))

    async def _backend(
        self,
        request: web.Request,
        entry: dict[str, Any],
        call: tuple[Operation, dict[str, str], bytes, Principal],
        decision: Decision,
    ) -> web.StreamResponse:
        for kind in decision.kinds:
            self._sim.counters.fault(kind)
        if decision.kinds:
            entry["faults"] = decision.kinds
        if decision.latency:
            await asyncio.sleep(decision.latency)
        action: FaultRule | None = decision.action
        if action is not None and action.kind == "error":
            injected = ApiError(action.status, action.error_code, action.error_msg)
            return self._answer(entry, self._refusal(injected, entry))
        if action is not None and action.kind == "hang" and not action.after_apply:
            return await self._cut(request, entry, action.seconds, hold=True)
        reply = self._perform(request, entry, call)
        if action is not None and action.kind in ("hang", "drop_after_apply"):
            entry["would_status"] = reply.status
            return await self._cut(request, entry, action.seconds, hold=action.kind == "hang")
        return self._answer(entry, reply)

    def _perform(
        self,
        request: web.Request,
        entry: dict[str, Any],
        call_parts: tuple[Operation, dict[str, str], bytes, Principal],
    ) -> Reply:
        op, params, body, principal = call_parts
        refusal = caller_refusal(op, principal)
        if refusal is not None:
            return self._refusal(refusal, entry)
        try:
            call = Call(
                state=self._sim.state,
                principal=principal,
                params=params,
                query=request.rel_url.query,
                body=self._json(body, op),
                now=self._sim.state.now(),
            )
            return self._handlers[op.name](call)
        except ApiError as exc:
            return self._refusal(exc, entry)
        except Exception:  # a sandbox bug must still answer, as Huawei's CBC.0999 does
            log.exception("sandbox business rule failed for %s", op.name)
            return self._refusal(ApiError(500, "CBC.0999", "Internal sandbox error."), entry)

    @staticmethod
    def _json(body: bytes, op: Operation) -> object:
        if not body:
            return None
        try:
            return loads(body)
        except ValueError:
            if op.service == "iam":
                raise iam_error(400, "IAM.0011", "The request body is not valid JSON.") from None
            raise bad_request("the request body is not valid JSON") from None

    @staticmethod
    def _refusal(error: ApiError, entry: dict[str, Any]) -> Reply:
        return Reply(error.status, error.body(entry["request_id"]))

    def _answer(self, entry: dict[str, Any], reply: Reply) -> web.Response:
        entry["status"] = reply.status
        self._sim.counters.answered(entry["api"], reply.status)
        headers = {"X-Request-Id": entry["request_id"]}
        if reply.body is None:
            return web.Response(status=reply.status, headers=headers)
        headers["Content-Type"] = JSON_TYPE
        return web.Response(status=reply.status, body=dumps(reply.body), headers=headers)

    async def _cut(
        self, request: web.Request, entry: dict[str, Any], seconds: float | None, *, hold: bool
    ) -> web.Response:
        """Answer nothing: optionally hold the request open, then close the connection."""
        self._sim.counters.answered(entry["api"], None)
        if hold:
            await self._hold(request, seconds)
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=204)  # never written: the transport is gone

    async def _hold(self, request: web.Request, seconds: float | None) -> None:
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        loop = asyncio.get_running_loop()
        while not self._sim.closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return  # the client gave up
            left = (
                _HANG_POLL_SECONDS
                if deadline is None
                else min(_HANG_POLL_SECONDS, deadline - loop.time())
            )
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._sim.closing.wait(), left)
            except TimeoutError:
                continue
