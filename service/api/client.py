"""Signed, paced HTTP calls to the BSS and IAM APIs; the only module that sees aiohttp errors.

Every call: wait for the joint limiter slot, sign, send exactly the signed bytes (body and
canonical query string verbatim), then map the answer onto ``handlers.errors``. A throttling
answer (HTTP 429 / APIG.0308) is waited out here and sent again: the gateway refused it before
the API saw it, so repeating is safe even for money-moving calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from yarl import URL

from handlers.errors import (
    ApiRefused,
    ApiUnavailable,
    CallTimeout,
    CommandRejected,
    NotSent,
    OutcomeUnknown,
    RelayError,
    Throttled,
)
from service.api.operations import Operation
from service.api.signer import QueryValue, Signer, canonical_query
from service.pacing.buckets import Priority
from service.pacing.dispatcher import Dispatcher
from service.settings import ApiSettings
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import client_span

__all__ = [
    "THROTTLE_CODES",
    "BssHttp",
    "CallScope",
    "Endpoints",
    "Preflight",
    "Response",
    "connector_from",
    "map_error",
    "parse_error_body",
    "session_from",
]

log = structlog.get_logger(__name__)

MISSED_SLOTS_MAX = 5  # slots a call lets go in a row for waking up too late (see _turn)
MISSED_SLOT_S = 0.05  # a call that wakes up this late for its slot lets it go
USER_AGENT = "bss-relay/0.1"
THROTTLE_CODES = frozenset({"APIG.0308", "APIGW.0308"})
# Answers that mean "nothing happened, ask again later" even on a mutating call.
TRANSIENT_CODES = frozenset({"CBC.99008040"})
ERROR_KEY_PAIRS = (("error_code", "error_msg"), ("errorCode", "errorMsg"), ("code", "message"))


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    request_id: str | None


def _find_error(data: Any) -> tuple[str, str] | None:
    if not isinstance(data, dict):
        return None
    for code_key, msg_key in ERROR_KEY_PAIRS:
        if code_key in data and data[code_key] is not None:
            return str(data[code_key]), str(data.get(msg_key) or "")
    for value in data.values():
        found = _find_error(value)
        if found:
            return found
    return None


def parse_error_body(status: int, body: bytes) -> tuple[str, str, str | None]:
    """(code, message, request_id) the way the official SDK reads an error answer."""
    try:
        data = json.loads(body)
    except ValueError:
        return str(status), body.decode("utf-8", "replace")[:500], None
    found = _find_error(data)
    request_id = data.get("request_id") if isinstance(data, dict) else None
    if found is None:
        return str(status), body.decode("utf-8", "replace")[:500], request_id
    return found[0], found[1], request_id


def map_error(op: Operation, status: int, body: bytes, request_id: str | None) -> RelayError:
    code, message, body_request_id = parse_error_body(status, body)
    kwargs: dict[str, Any] = {"http_status": status, "request_id": request_id or body_request_id}
    if status == 429 or code in THROTTLE_CODES:
        return Throttled(code, message, **kwargs)
    if code in TRANSIENT_CODES:
        return ApiUnavailable(code, message, **kwargs)
    if status >= 500 or code == "CBC.0999":
        if op.mutating:
            return OutcomeUnknown(code, message, **kwargs)
        return ApiUnavailable(code, message, **kwargs)
    return ApiRefused(code, message, **kwargs)


def _lost(op: Operation, code: str, message: str) -> RelayError:
    if op.mutating:
        return OutcomeUnknown(code, message)
    return ApiUnavailable(code, message)


@dataclass(frozen=True, slots=True)
class Preflight:
    """What must hold right before each send of a mutating (money-moving) request, after its
    quota wait (429 re-sends included), checked in this order; each raises to stop the send:

    1. ``lock_check``: the customer's renewal lock is still held (one lost with its database
       connection is not relied on: ``StoreUnavailable``);
    2. ``record_call``: the journal writes the call to the store, which fails (``LeaseLost``)
       when this process no longer holds the command's lease, so a process that was frozen
       past its lease never makes a money-moving call for a command someone else now owns.

    Built for each command by the message path's run step and given to its ``CallScope``.
    """

    lock_check: Callable[[], None] | None = None
    record_call: Callable[[], Awaitable[None]] | None = None

    async def check(self) -> None:
        if self.lock_check is not None:
            self.lock_check()
        if self.record_call is not None:
            await self.record_call()


@dataclass(slots=True)
class CallScope:
    """One command's view of the API requests made for it, passed explicitly with each call.

    ``deadline``: the command's start deadline; it holds until the first request is sent (after
    that, what has started must be finished or reconciled, never dropped half-way).
    ``preflight``: checked right before each send of a mutating request (``Preflight``).
    ``sent``: every request sent for the command, answers of 429 that were waited out included
    (the event's ``attempts``). ``command_id``, ``priority`` and ``since``: who waits for a
    turn, which turn it takes first (the dispatcher's), and since when it waits (wall clock,
    kept across parkings: what ``why`` and ``quota show`` say of it).
    """

    deadline: datetime | None = None
    preflight: Preflight = Preflight()
    sent: int = 0
    command_id: str | None = None
    priority: int = Priority.NORMAL
    since: float | None = None

    async def sending(self, op: Operation) -> None:
        if self.deadline is not None:
            if datetime.now(UTC) >= self.deadline:
                raise CommandRejected(
                    "RELAY.DEADLINE_PASSED",
                    f"deadline {self.deadline.isoformat()} passed while the command waited "
                    "for its turn",
                )
            self.deadline = None  # started now
        if op.mutating:
            await self.preflight.check()
        self.sent += 1


def connector_from(settings: ApiSettings) -> aiohttp.TCPConnector:
    """The API connection pool: ``RELAY_HTTP_CONNECTIONS`` connections, each opened from
    ``RELAY_SOURCE_ADDRESS`` when set (any local port), so the API sees that source address."""
    source = settings.source_address
    return aiohttp.TCPConnector(
        limit=settings.http_connections,
        local_addr=(source, 0) if source is not None else None,
    )


async def _on_headers_sent(
    _session: aiohttp.ClientSession,
    context: Any,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    written = context.trace_request_ctx
    if callable(written):
        written()


def write_trace() -> aiohttp.TraceConfig:
    """Tells a request the moment its headers were written to the connection (the instant
    that counts against the API's limits, after connection set-up and the event loop's own
    delays), through the request's ``trace_request_ctx`` callable."""
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    return trace


def session_from(settings: ApiSettings) -> aiohttp.ClientSession:
    """The one HTTP session of a replica (an async context manager), built from settings."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=settings.http_timeout_s, sock_connect=settings.connect_timeout_s
        ),
        connector=connector_from(settings),
        trace_configs=[write_trace()],
    )


class _Lateness:
    """Gives a request's lateness for its slot back to the buckets (``Dispatcher.late``),
    measured when its headers were written (``written``, the session's write trace), or when
    it was handed to the session if the session has no such trace (``handed_over``)."""

    __slots__ = ("_api", "_dispatcher", "_parent_uid", "_slot", "_told")

    def __init__(
        self, dispatcher: Dispatcher, api: str, parent_uid: str, slot: float | None
    ) -> None:
        self._dispatcher = dispatcher
        self._api = api
        self._parent_uid = parent_uid
        self._slot = slot
        self._told = slot is None  # an unlimited API has no slot to be late for

    def written(self) -> None:
        self.handed_over(self._dispatcher.buckets.now())

    def handed_over(self, at: float) -> None:
        """The instant the request left, if no write was traced before (else nothing)."""
        if self._told:
            return
        self._told = True
        assert self._slot is not None
        if at > self._slot:
            self._dispatcher.late(self._api, self._parent_uid, slot=self._slot, sent_at=at)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The base URLs the client calls: ``BSS_ENDPOINT`` and ``IAM_ENDPOINT``."""

    bss: str
    iam: str


class BssHttp:
    """One aiohttp session, two base URLs (BSS and IAM); every call waits for its fair turn."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        endpoints: Endpoints,
        dispatcher: Dispatcher,
        throttle_retries: int = 5,
        metrics: Metrics | None = None,
    ) -> None:
        self._session = session
        # A call with no slot (its API unlimited) has no lateness to give back, so it needs no
        # write trace; aiohttp's trace machinery costs a Trace, its context and six awaited
        # signals per request. Such calls go through a twin session on the same connection
        # pool (the same RELAY_HTTP_CONNECTIONS), without traces. Closed with the pool.
        self._untraced = session
        if session.trace_configs:
            self._untraced = aiohttp.ClientSession(
                connector=session.connector, connector_owner=False, timeout=session.timeout
            )
        self._bases = {"bss": endpoints.bss.rstrip("/"), "iam": endpoints.iam.rstrip("/")}
        self._dispatcher = dispatcher
        self._throttle_retries = throttle_retries
        self._metrics = metrics or Metrics()

    async def call(
        self,
        op: Operation,
        signer: Signer,
        *,
        parent_uid: str,
        domain_id: str | None = None,
        path_params: Mapping[str, str] | None = None,
        query: Sequence[tuple[str, QueryValue | None]] = (),
        body: bytes | None = None,
        scope: CallScope | None = None,
    ) -> Response:
        """Send one API call; 2xx returns, anything else raises from ``handlers.errors``.
        ``scope``: the command the call is made for (IAM calls have none)."""
        path = op.render(**(path_params or {}))
        query_string = canonical_query(query)
        metrics, dispatcher = self._metrics, self._dispatcher
        for attempt in range(self._throttle_retries + 1):
            waited = time.perf_counter()
            slot = None  # an unlimited API has no turn to wait for (Dispatcher.turn)
            if dispatcher.limited(op.name):
                slot = await self._turn(op.name, parent_uid, scope)
            quota_wait_s = time.perf_counter() - waited
            metrics.observe_quota_wait(op.name, quota_wait_s)
            if scope is not None:
                await scope.sending(op)
            sent_at = self._dispatcher.buckets.now()
            late = _Lateness(self._dispatcher, op.name, parent_uid, slot)
            sent = time.perf_counter()
            try:
                response = await self._send(
                    op,
                    signer,
                    path=path,
                    query=query_string,
                    body=body,
                    domain_id=domain_id,
                    quota_wait_s=quota_wait_s,
                    written=None if slot is None else late.written,
                )
            except RelayError as exc:
                status = str(exc.http_status) if exc.http_status else exc.code
                metrics.observe_api(op.name, status, time.perf_counter() - sent)
                metrics.inc(metrics.api_requests, op.name, status)
                if not isinstance(exc, Throttled):
                    raise
                await self._dispatcher.throttled(op.name, parent_uid, sent_at=sent_at)
                log.warning("api_throttled", api=op.name, parent_uid=parent_uid, attempt=attempt)
                if attempt == self._throttle_retries:
                    raise
            else:
                status = str(response.status)
                metrics.observe_api(op.name, status, time.perf_counter() - sent)
                metrics.inc(metrics.api_requests, op.name, status)
                return response
            finally:
                late.handed_over(sent_at)  # no write was traced
        raise AssertionError("unreachable")  # pragma: no cover

    async def _turn(self, api: str, parent_uid: str, scope: CallScope | None) -> float | None:
        """The call's slot, fresh. Lateness is normally given back once the request is
        written (``Dispatcher.late``), which moves the slots reserved after it. A call that
        wakes up grossly late (``MISSED_SLOT_S``, or the tolerance if wider) lets its slot go
        and takes the next one instead: a process that busy may give the lateness back too
        late for slots reserved meanwhile (the slot is wasted, the limit kept). A machine too
        busy to wake in time ``MISSED_SLOTS_MAX`` times in a row sends anyway."""
        dispatcher = self._dispatcher
        scope = scope or CallScope()
        clock = dispatcher.buckets.now
        for _ in range(MISSED_SLOTS_MAX):
            slot = await self._wait_turn(api, parent_uid, scope)
            if slot is None or clock() - slot <= max(MISSED_SLOT_S, dispatcher.tolerance(api)):
                return slot
            self._metrics.inc(self._metrics.missed_slots, api)
            log.debug("slot_missed", api=api, late_ms=round((clock() - slot) * 1000, 1))
        return await self._wait_turn(api, parent_uid, scope)

    async def _wait_turn(self, api: str, parent_uid: str, scope: CallScope) -> float | None:
        return await self._dispatcher.turn(
            api,
            parent_uid,
            priority=scope.priority,
            command_id=scope.command_id,
            since=scope.since,
        )

    async def _send(
        self,
        op: Operation,
        signer: Signer,
        *,
        path: str,
        query: str,
        body: bytes | None,
        domain_id: str | None,
        quota_wait_s: float = 0.0,
        written: Callable[[], None] | None = None,
    ) -> Response:
        base = self._bases[op.service]
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if domain_id:
            headers["X-Domain-Id"] = domain_id
        full_path = urlsplit(base).path + path
        signed = signer.sign(
            op.method,
            urlsplit(base).netloc,
            full_path,
            query=query,
            headers=headers,
            body=body or b"",
        )
        url = URL(base + path + (f"?{query}" if query else ""), encoded=True)
        with client_span(
            api=op.name,
            method=op.method,
            url=base + path,
            template=urlsplit(base).path + op.path,
            quota_wait_s=quota_wait_s,
        ) as span:
            try:
                session = self._untraced if written is None else self._session
                async with session.request(
                    op.method,
                    url,
                    headers=signed,
                    data=body,
                    skip_auto_headers=("Content-Type",),
                    trace_request_ctx=written,
                ) as resp:
                    data = await resp.read()
                    status, request_id = resp.status, resp.headers.get("X-Request-Id")
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                raise NotSent("RELAY.CONNECT_FAILED", f"could not connect: {exc}") from exc
            except TimeoutError as exc:
                if op.mutating:
                    raise CallTimeout("RELAY.TIMEOUT", f"{op.name}: no answer in time") from exc
                raise ApiUnavailable("RELAY.TIMEOUT", f"{op.name}: no answer in time") from exc
            except aiohttp.ClientError as exc:
                raise _lost(op, "RELAY.CONNECTION_LOST", f"{op.name}: {exc!r}") from exc
            span.status(status)
            if 200 <= status < 300:
                return Response(status, data, request_id)
            raise map_error(op, status, data, request_id)
