"""The runtime: the composition root, in named steps, owned by one ``AsyncExitStack``.

``start(settings)`` is an async context manager that yields a ``RunningService`` once the
service consumes. Each step opens one resource (an async context manager, in the manner of
aiohttp's ``cleanup_ctx``: open, yield, close) from its own group of settings, in this order:

1. ``open_backend``    the store, its rate-limit buckets, renewal locks and health probe
                       (``settings.store``; in ``service.backend``)
2. ``open_broker``     the robust connection, the publishing channel, the topology declared
                       (``settings.broker``)
3. ``open_pacing``     the limits in force, the dispatcher on the backend's buckets, the
                       parking lines, the steering poller and what the replica publishes
                       (``settings.pacing``)
4. ``open_api``        the HTTP session, the client on the dispatcher, one ``PartnerApi`` per
                       partner account (``settings.api``)
5. ``build_pipeline``  the process's ``Leases`` and the message path: read, admit or park,
                       claim, run, settle (``settings.messages``)
6. ``open_consumer``   the consumer in its task group, with the lease heartbeat, the stall
                       detector and the intake of pulled lines beside it; then the loops of
                       the store and of pacing (``_upkeep``)
7. ``open_metrics``    ``/metrics`` and ``/healthz`` when a port is set (``settings.operations``)

Leaving it stops intake, drains within ``RELAY_SHUTDOWN_GRACE_S``, cancels what is left
(unacked, so redelivered) and closes everything in reverse order. Start fails fast: an
unreachable store or broker raises before anything is consumed. ``run(settings, stop=…)`` is
``bss-relay serve``: start, wait for the signal, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from service.api.bss import PartnerApi
from service.api.client import BssHttp, Endpoints, session_from
from service.api.credentials import CredentialCache
from service.api.operations import PUBLISHED_LIMITS
from service.backend import Backend, open_backend
from service.broker.connection import connect_broker
from service.broker.topology import DELAY_LEVELS_MS, Topology, declare
from service.guardrails.gate import PolicyGate
from service.guardrails.policy import PolicyError, PolicyHolder
from service.messages.admission import Admission, WaitingRoom
from service.messages.announcer import Announcer, Published
from service.messages.claiming import Claiming
from service.messages.consumer import Consumer, ConsumerOptions, Pulled
from service.messages.delivery import ScopedApi
from service.messages.failures import Failures, RetryPolicy
from service.messages.leases import Leases
from service.messages.lines import LineHooks, LineKey, Lines
from service.messages.pipeline import Pipeline, Steps
from service.messages.publisher import Publisher
from service.messages.reading import Reader
from service.messages.running import Runner
from service.messages.settlement import Books, Settler, SettleRetry
from service.messages.whereabouts import Noted, Whereabouts
from service.ops.presence import Presence
from service.pacing.dispatcher import Dispatcher, PacingConfig
from service.pacing.limits import Limits, configured_limits
from service.pacing.steering import PauseState, SteeringPoller
from service.settings import (
    ApiSettings,
    BrokerSettings,
    MessageSettings,
    OperationsSettings,
    PacingSettings,
    Settings,
    StoreSettings,
)
from service.store.steering import SteeringStore
from service.store.types import CommandStore
from service.telemetry.metrics import Metrics, serve_metrics

__all__ = ["Broker", "ConfigurationError", "Consuming", "Parts", "RunningService", "run", "start"]

log = structlog.get_logger(__name__)

PRUNE_EVERY_S = 3600.0
SWEEP_EVERY_S = 600.0  # idle rate-limit buckets deleted (shared rows; in process it is built in)
ROOM_MIN, ROOM_MAX = 2, 256  # commands of one line a replica takes in memory at least, at most


class ConfigurationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Broker:
    """The broker as the service uses it: one robust connection, publishing with confirms."""

    connection: AbstractRobustConnection
    publisher: Publisher
    topology: Topology


@dataclass(frozen=True, slots=True)
class Pacing:
    """Where calls wait for their turn: in memory (the dispatcher) or parked (the lines), with
    the limits and pauses in force, and what the replica tells the deployment about it."""

    limits: Limits
    dispatcher: Dispatcher
    lines: Lines
    steering: SteeringPoller
    presence: Presence
    waiting: WaitingRoom
    pulled: asyncio.Queue[Pulled]  # pulled from the lines, for the consumer
    whereabouts: Whereabouts
    placed: asyncio.Queue[list[Noted]]  # parked, place settled, owed a `deferred` event


@dataclass(frozen=True, slots=True)
class Parts:
    """What the first steps opened: the message path is built from these."""

    backend: Backend
    broker: Broker
    pacing: Pacing
    apis: Mapping[str, ScopedApi]
    policy: PolicyHolder
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class RunningService:
    """What a started service is made of, for the CLI, the demo and tests to look at."""

    owner: str
    settings: Settings
    parts: Parts
    running: Consuming

    @property
    def backend(self) -> Backend:
        return self.parts.backend

    @property
    def pacing(self) -> Pacing:
        return self.parts.pacing

    @property
    def dispatcher(self) -> Dispatcher:
        return self.parts.pacing.dispatcher

    @property
    def metrics(self) -> Metrics:
        return self.parts.metrics

    @property
    def policy(self) -> PolicyHolder:
        return self.parts.policy

    @property
    def consumer(self) -> Consumer:
        return self.running.consumer

    def problems(self) -> list[str]:
        """Why the service is not healthy now (empty: it is); ``/healthz`` shows them."""
        found = list(self.consumer.problems())
        if self.backend.health is not None:
            found.extend(self.backend.health.problems())
        if self.parts.broker.connection.is_closed:
            found.append("broker connection closed; reconnecting")
        failed = self.running.background.failed
        found.extend(f"background loop {name!r} stopped" for name in failed)
        return found


class _Background:
    """The service's background work. A failure is logged and, for a loop that should run for
    ever, reported by ``/healthz`` -- it never takes the consuming task down with it."""

    def __init__(self, tasks: asyncio.TaskGroup) -> None:
        self._tasks = tasks
        self.failed: list[str] = []
        self.loops: list[asyncio.Task[None]] = []

    def loop(self, name: str, body: Awaitable[None]) -> None:
        self.loops.append(self._tasks.create_task(self._run(name, body, forever=True), name=name))

    def once(self, name: str, body: Awaitable[None]) -> None:
        self._tasks.create_task(self._run(name, body, forever=False), name=name)

    async def _run(self, name: str, body: Awaitable[None], *, forever: bool) -> None:
        try:
            await body
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_task_failed", task=name)
            if forever:
                self.failed.append(name)

    async def stop(self) -> None:
        """Cancel the loops and wait for them, cancelling again any that is still running a
        second later: on Python 3.11 a cancel that meets an inner timeout (``wait_for``, in
        aio-pika too) can be swallowed, and a loop that lost it would hold the task group
        open for ever."""
        pending = {task for task in self.loops if not task.done()}
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)


@dataclass(frozen=True, slots=True)
class Consuming:
    """What ``open_consumer`` leaves running: the consumer and the loops beside it."""

    consumer: Consumer
    background: _Background

    async def stop(self, grace_s: float) -> None:
        """Stop intake, drain within ``grace_s`` (the rest is cancelled, unacked: redelivered
        later), then cancel the loops."""
        await self.consumer.stop_intake()
        await self.consumer.drain(grace_s)
        await self.background.stop()


@contextlib.asynccontextmanager
async def start(
    settings: Settings, *, policy: PolicyHolder | None = None
) -> AsyncIterator[RunningService]:
    """``policy``: the holder ``serve`` reloads on SIGHUP; read from RELAY_POLICY_FILE if None
    (an invalid file raises ``ConfigurationError``)."""
    policy = policy if policy is not None else await _load_policy(settings.messages.policy_file)
    owner, metrics = _owner_id(), Metrics()
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        backend = await enter(open_backend(settings.store, owner=owner))
        broker = await enter(open_broker(settings.broker))
        pacing = await enter(open_pacing(settings.pacing, backend, broker, metrics, owner))
        apis = await enter(open_api(settings.api, pacing.dispatcher, metrics))
        parts = Parts(backend, broker, pacing, apis, policy, metrics)
        leases = Leases(
            backend.store, backend.locks, owner=owner, lease=settings.store.lease, metrics=metrics
        )
        pipeline = build_pipeline(settings.messages, leases, parts)
        running = await enter(open_consumer(settings.messages, pipeline, leases, parts))
        _upkeep(running.background, parts, settings.store)
        service = RunningService(owner, settings, parts, running)
        await enter(open_metrics(settings.operations, metrics, service.problems))
        log.info("service_started", owner=owner, queue=broker.topology.work_queue)
        try:
            yield service
        finally:
            log.info("service_stopping")
            await running.stop(settings.messages.shutdown_grace_s)
    log.info("service_stopped")


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    """``bss-relay serve``: run until ``stop`` is set (SIGTERM/SIGINT), then drain."""
    async with start(settings):
        await stop.wait()


# -- the steps, in the order ``start`` takes them ------------------------------------------


@contextlib.asynccontextmanager
async def open_broker(settings: BrokerSettings) -> AsyncIterator[Broker]:
    """Connect (raises at once if no node answers), then declare the topology on the
    publishing channel (raises ``TopologyMismatch`` for queues of another type)."""
    topology = Topology(settings.queue_prefix, settings.queue_type)
    connection = await connect_broker(settings.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        declared = await declare(channel, topology)
        publisher = Publisher(channel=channel, events=declared.events, topology=topology)
        yield Broker(connection, publisher, topology)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def open_pacing(
    settings: PacingSettings, backend: Backend, broker: Broker, metrics: Metrics, owner: str
) -> AsyncIterator[Pacing]:
    """The dispatcher on the backend's buckets, the parking lines it pulls as it serves, the
    live limits and pauses every replica polls, and what this replica publishes."""
    limits = Limits(configured_limits(PUBLISHED_LIMITS, settings.rate_limits))
    pauses, served, pulled = PauseState(), asyncio.Event(), asyncio.Queue[Pulled]()
    dispatcher = _dispatcher(settings, backend, limits, owner, pauses=pauses, served=served)
    whereabouts, placed = Whereabouts(), asyncio.Queue[list[Noted]]()
    steering = backend.store.steering
    hooks = LineHooks(
        _room(dispatcher, settings.hold_s), _deliver(pulled), pauses, placed.put_nowait, served
    )
    lines = _lines(broker, steering, hooks, whereabouts)
    poller = SteeringPoller(steering, limits, pauses, on_change=dispatcher.steering_changed)
    await poller.refresh()  # the limits and pauses in force before anything is consumed
    waiting = WaitingRoom(dispatcher, lines, pauses, settings.hold_s)
    presence = Presence(
        steering, dispatcher, limits, whereabouts, identity=(owner, settings.egress), parked=waiting
    )
    _watch(metrics, dispatcher, whereabouts)
    try:
        yield Pacing(
            limits, dispatcher, lines, poller, presence, waiting, pulled, whereabouts, placed
        )
    finally:
        await presence.retire()
        await dispatcher.aclose()
        await lines.aclose()


def _lines(
    broker: Broker, steering: SteeringStore, hooks: LineHooks, whereabouts: Whereabouts
) -> Lines:
    return Lines(broker.connection, broker.topology, steering, hooks=hooks, whereabouts=whereabouts)


def _watch(metrics: Metrics, dispatcher: Dispatcher, whereabouts: Whereabouts) -> None:
    """``/metrics``: the buckets' rates now, and what waits for each."""
    metrics.watch_rates(dispatcher.rates)
    metrics.watch_waiting(lambda: _waiting_by_bucket(dispatcher, whereabouts))


def _dispatcher(
    settings: PacingSettings,
    backend: Backend,
    limits: Limits,
    owner: str,
    *,
    pauses: PauseState,
    served: asyncio.Event,
) -> Dispatcher:
    """This replica's dispatcher: its egress and guard bounds, on the backend's buckets."""
    guard_min = max(settings.guard_s, backend.guard_min_s)
    guard_max = max(guard_min, settings.guard_max_s)
    config = PacingConfig(settings.egress, owner, guard_min, guard_max, ahead_s=backend.ahead_s)
    return Dispatcher(
        backend.buckets, limits, config=config, is_paused=pauses, on_served=served.set
    )


def _room(dispatcher: Dispatcher, hold_s: float) -> Callable[[LineKey], int]:
    """How many commands of a line this replica takes in memory: the hold window's worth of
    its customer's turns now (its own rate, or its share of the egress)."""

    def room(line: LineKey) -> int:
        interval = dispatcher.interval(*line)
        if interval <= 0:
            return ROOM_MAX
        return max(ROOM_MIN, min(ROOM_MAX, math.ceil(hold_s / interval)))

    return room


def _deliver(
    pulled: asyncio.Queue[Pulled],
) -> Callable[[AbstractIncomingMessage, Callable[[], None]], None]:
    def deliver(message: AbstractIncomingMessage, done: Callable[[], None]) -> None:
        pulled.put_nowait((message, done))

    return deliver


def _waiting_by_bucket(
    dispatcher: Dispatcher, whereabouts: Whereabouts
) -> dict[tuple[str, str, str], tuple[int, float]]:
    """Per bucket: commands waiting for it here (held, or parked by this replica), and the
    oldest one's wait (for ``/metrics``; ``quota show`` adds up every replica's)."""
    now, found = time.time(), dict[tuple[str, str, str], tuple[int, float]]()
    since = [(w.api, w.kind, w.key, w.since) for w in dispatcher.waiting()]
    since += [
        (e.api, e.kind or "customer", e.key, e.since)
        for e in whereabouts.entries()
        if e.state != "delayed" and e.api is not None and e.key is not None
    ]
    for api, kind, key, at in since:
        count, oldest = found.get((api, kind, key), (0, 0.0))
        found[(api, kind, key)] = (count + 1, max(oldest, now - at))
    return found


@contextlib.asynccontextmanager
async def open_api(
    settings: ApiSettings, dispatcher: Dispatcher, metrics: Metrics
) -> AsyncIterator[dict[str, PartnerApi]]:
    """One HTTP session; every call waits for its turn (the dispatcher)."""
    async with session_from(settings) as session:
        http = BssHttp(
            session=session,
            endpoints=Endpoints(bss=settings.bss_endpoint, iam=settings.iam_endpoint),
            dispatcher=dispatcher,
            throttle_retries=settings.throttle_retries,
            metrics=metrics,
        )
        yield build_apis(settings, http)


def build_pipeline(settings: MessageSettings, leases: Leases, parts: Parts) -> Pipeline:
    """The message path: read, admit or park, claim, run, settle (``service.messages``)."""
    retry = RetryPolicy(
        settings.max_attempts, settings.retry_base_s, settings.retry_max_s, settings.store_retry_s
    )
    pacing = parts.pacing
    admission = Admission(pacing.waiting, clock=_utc_now)
    failures = Failures(
        retry,
        lease=leases.lease,
        metrics=parts.metrics,
        clock=_utc_now,
        parking=admission.paused,
    )
    books = Books(_utc_now, pacing.lines, pacing.whereabouts, parts.backend.store.steering)
    settler = Settler(
        store=parts.backend.store,
        publisher=parts.broker.publisher,
        leases=leases,
        books=books,
        metrics=parts.metrics,
        retry=SettleRetry(settings.settle_retry_s, settings.store_retry_s),
    )
    steps = _steps(settings, leases, failures, parts, admission)
    return Pipeline(steps, settler=settler, leases=leases, failures=failures)


def _steps(
    settings: MessageSettings,
    leases: Leases,
    failures: Failures,
    parts: Parts,
    admission: Admission,
) -> Steps:
    store = parts.backend.store
    return Steps(
        read=Reader(parts.apis, max_body_bytes=settings.max_body_bytes),
        admission=admission,
        claim=Claiming(leases, clock=_utc_now),
        run=Runner(
            store=store,
            locks=parts.backend.locks,
            gate=PolicyGate(parts.policy, store),
            failures=failures,
            owner=leases.owner,
            clock=_utc_now,
        ),
    )


@contextlib.asynccontextmanager
async def open_consumer(
    settings: MessageSettings, pipeline: Pipeline, leases: Leases, parts: Parts
) -> AsyncIterator[Consuming]:
    """The consumer, its task group (every message's task and every loop), the lease
    heartbeat and the stall detector; consuming once they run."""
    connection, topology, metrics = parts.broker.connection, parts.broker.topology, parts.metrics
    async with asyncio.TaskGroup() as tasks:
        consumer = Consumer(
            connection=connection,
            pipeline=pipeline,
            tasks=tasks,
            metrics=metrics,
            options=_consumer_options(settings, topology),
            pulled=parts.pacing.pulled,
        )
        background = _Background(tasks)
        connection.reconnect_callbacks.add(lambda *_: background.once("verify", consumer.verify()))
        background.loop("heartbeat", leases.renew_forever())
        background.loop("watch", consumer.watch())
        background.loop("pulled", consumer.take_pulled())
        background.loop("announce", _announcer(settings, parts, leases.owner).run())
        await consumer.start()
        metrics.inflight.set_function(lambda: consumer.tasks_running)
        metrics.set_parked(lambda: consumer.waiting_in_delay_queues)
        yield Consuming(consumer, background)


def _announcer(settings: MessageSettings, parts: Parts, owner: str) -> Announcer:
    """The ``deferred`` events owed to parked commands, sent as their places settle."""
    pacing = parts.pacing
    return Announcer(
        pacing.placed,
        pacing.waiting,
        pacing.whereabouts,
        parts.broker.publisher,
        _published(parts.backend.store.steering, owner),
        deferred_after_s=settings.deferred_after_s,
    )


def _published(steering: SteeringStore, owner: str) -> Published:
    """What the replicas published of a customer's waiting calls, and their egresses."""

    async def published(
        api: str, customer: str, priorities: Sequence[str]
    ) -> tuple[list[tuple[str, datetime | None, bool]], int]:
        rows = await steering.customer_waiting(api, customer, priorities, owner=owner)
        return rows, await steering.egresses()

    return published


def _consumer_options(settings: MessageSettings, topology: Topology) -> ConsumerOptions:
    delay_queues = tuple(topology.delay_queue(ms) for ms in DELAY_LEVELS_MS)
    return ConsumerOptions(topology.work_queue, settings.prefetch, delay_queues, settings.stall_s)


def _upkeep(background: _Background, parts: Parts, settings: StoreSettings) -> None:
    """The store's loops: finished commands pruned after the retention; PostgreSQL pinged, so
    ``/healthz`` says when it cannot be reached (an SQLite file is part of the process). And
    pacing's: live limits and pauses polled, lines pulled, what the replica publishes, idle
    buckets swept."""
    backend, pacing = parts.backend, parts.pacing
    background.loop("prune", _prune_forever(backend.store, settings.retention))
    if backend.health is not None:
        background.loop("store-health", backend.health.watch())
    background.loop("steering", pacing.steering.run())
    background.loop("lines", pacing.lines.run())
    background.loop("presence", pacing.presence.run())
    background.loop("sweep", _sweep_forever(backend))


@contextlib.asynccontextmanager
async def open_metrics(
    settings: OperationsSettings, metrics: Metrics, problems: Callable[[], list[str]]
) -> AsyncIterator[None]:
    """Prometheus ``/metrics`` and ``/healthz``, when ``RELAY_METRICS_PORT`` is set."""
    if settings.metrics_port is None:
        yield
        return
    async with serve_metrics(
        metrics, host=settings.metrics_host, port=settings.metrics_port, problems=problems
    ):
        yield


# -- helpers --------------------------------------------------------------------------------


def build_apis(settings: ApiSettings, http: BssHttp) -> dict[str, PartnerApi]:
    partners = settings.partners()
    if not partners:
        raise ConfigurationError(
            "no partner account: set BSS_PARTNER_ID, BSS_ACCESS_KEY, BSS_SECRET_KEY "
            "(and BSS_AGENCY_NAME), or BSS_PARTNERS_FILE"
        )
    return {
        pid: PartnerApi(
            http=http,
            partner=partner,
            credentials=CredentialCache(
                http=http,
                partner=partner,
                duration_s=settings.credential_duration_s,
                refresh_margin_s=settings.credential_refresh_margin_s,
                max_entries=settings.credential_cache_size,
            ),
        )
        for pid, partner in partners.items()
    }


async def _load_policy(path: Path | None) -> PolicyHolder:
    try:
        return await asyncio.to_thread(PolicyHolder.load, path)
    except PolicyError as exc:
        raise ConfigurationError(str(exc)) from None


async def _prune_forever(store: CommandStore, retention: timedelta) -> None:
    while True:
        try:
            removed = await store.prune(finished_before=datetime.now(UTC) - retention)
        except Exception:  # the store may be away for a while: tried again next round
            log.exception("store_prune_failed")
        else:
            if removed:
                log.info("store_pruned", removed=removed)
        await asyncio.sleep(PRUNE_EVERY_S)


async def _sweep_forever(backend: Backend) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            swept = await backend.buckets.sweep()
        except Exception:  # the store may be away for a while: tried again next round
            log.exception("buckets_sweep_failed")
        else:
            if swept:
                log.info("buckets_swept", swept=swept)


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _utc_now() -> datetime:
    return datetime.now(UTC)
