"""The runtime: builds every resource, owns it in one ``AsyncExitStack``, drains on stop.

``start(settings)`` is an async context manager that yields a ``RunningService`` once the
service consumes; leaving it stops intake, drains within ``RELAY_SHUTDOWN_GRACE_S``, cancels
what is left (unacked, so redelivered) and closes everything in reverse order of opening:
command store -> HTTP session -> broker connection -> channels and topology -> consumer.
Start fails fast: an unreachable broker or store raises before anything is consumed.
``run(settings, stop=…)`` is ``bss-relay serve``: start, wait for the signal, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from aio_pika.abc import AbstractRobustConnection

from service.api.bss import PartnerApi
from service.api.client import BssHttp, Endpoints, session_from
from service.api.credentials import CredentialCache
from service.backend import Backend, open_backend
from service.broker.connection import connect_broker
from service.broker.topology import DELAY_LEVELS_MS, Topology, declare
from service.guardrails.gate import PolicyGate
from service.guardrails.policy import PolicyError, PolicyHolder
from service.messages.admission import Admission
from service.messages.claiming import Claiming
from service.messages.consumer import Consumer, ConsumerOptions
from service.messages.delivery import ScopedApi
from service.messages.failures import Failures, RetryPolicy
from service.messages.leases import Leases
from service.messages.pipeline import Pipeline, Steps
from service.messages.publisher import Publisher
from service.messages.reading import Reader
from service.messages.running import Runner
from service.messages.settlement import Settler, SettleRetry
from service.pacing.limiter import Limiter
from service.pacing.scheduler import FairScheduler
from service.settings import Settings
from service.store.health import StoreHealth
from service.store.types import CommandStore
from service.telemetry.metrics import Metrics, serve_metrics

__all__ = ["ConfigurationError", "RunningService", "run", "start"]

log = structlog.get_logger(__name__)

PRUNE_EVERY_S = 3600.0


class ConfigurationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RunningService:
    """What a started service is made of, for the CLI, the demo and tests to look at."""

    owner: str
    settings: Settings
    topology: Topology
    store: CommandStore
    connection: AbstractRobustConnection
    consumer: Consumer
    limiter: Limiter
    scheduler: FairScheduler
    metrics: Metrics
    policy: PolicyHolder
    background: _Background
    store_health: StoreHealth | None = None  # PostgreSQL: pinged (SQLite is a local file)

    def problems(self) -> list[str]:
        """Why the service is not healthy now (empty: it is); ``/healthz`` shows them."""
        found = list(self.consumer.problems())
        if self.store_health is not None:
            found.extend(self.store_health.problems())
        if self.connection.is_closed:
            found.append("broker connection closed; reconnecting")
        found.extend(f"background loop {name!r} stopped" for name in self.background.failed)
        return found


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build_apis(settings: Settings, http: BssHttp) -> dict[str, PartnerApi]:
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
                duration_s=settings.relay_credential_duration_s,
                refresh_margin_s=settings.relay_credential_refresh_margin_s,
                max_entries=settings.relay_credential_cache_size,
            ),
        )
        for pid, partner in partners.items()
    }


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


class _Background:
    """The service's background work. A failure is logged and, for a loop that should run for
    ever, reported by ``/healthz`` -- it never takes the consuming task down with it."""

    def __init__(self, tasks: asyncio.TaskGroup) -> None:
        self._tasks = tasks
        self.failed: list[str] = []
        self.loops: list[asyncio.Task[None]] = []

    def loop(self, name: str, body: Awaitable[None]) -> None:
        self.loops.append(self._tasks.create_task(self._run(name, body, forever=True)))

    def once(self, name: str, body: Awaitable[None]) -> None:
        self._tasks.create_task(self._run(name, body, forever=False))

    async def _run(self, name: str, body: Awaitable[None], *, forever: bool) -> None:
        try:
            await body
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_task_failed", task=name)
            if forever:
                self.failed.append(name)

    def cancel(self) -> None:
        for task in self.loops:
            task.cancel()


def _watch_store(backend: Backend, background: _Background) -> None:
    """PostgreSQL is pinged, so ``/healthz`` says when it cannot be reached (no API call is
    made meanwhile); an SQLite file is part of the process and is not."""
    if backend.health is not None:
        background.loop("store-health", backend.health.watch())


def _build_pipeline(
    settings: Settings,
    backend: Backend,
    leases: Leases,
    *,
    apis: Mapping[str, ScopedApi],
    scheduler: FairScheduler,
    publisher: Publisher,
    gate: PolicyGate,
    metrics: Metrics,
) -> Pipeline:
    clock = _utc_now
    failures = Failures(
        RetryPolicy(
            settings.relay_max_attempts,
            settings.relay_retry_base_s,
            settings.relay_retry_max_s,
            settings.relay_store_retry_s,
        ),
        lease=leases.lease,
        metrics=metrics,
        clock=clock,
    )
    settler = Settler(
        store=backend.store,
        publisher=publisher,
        leases=leases,
        clock=clock,
        metrics=metrics,
        retry=SettleRetry(settings.relay_settle_retry_s, settings.relay_store_retry_s),
    )
    steps = Steps(
        read=Reader(apis, max_body_bytes=settings.relay_max_body_bytes),
        admission=Admission(
            scheduler,
            metrics=metrics,
            clock=clock,
            deferred_after_s=settings.relay_deferred_after_s,
        ),
        claim=Claiming(leases, clock=clock),
        run=Runner(
            store=backend.store,
            locks=backend.locks,
            gate=gate,
            failures=failures,
            owner=leases.owner,
            clock=clock,
        ),
    )
    return Pipeline(steps, settler=settler, leases=leases, failures=failures)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@contextlib.asynccontextmanager
async def start(
    settings: Settings, *, policy: PolicyHolder | None = None
) -> AsyncIterator[RunningService]:
    """``policy``: the holder ``serve`` reloads on SIGHUP; read from RELAY_POLICY_FILE if None
    (an invalid file raises ``ConfigurationError``)."""
    if policy is None:
        try:
            policy = await asyncio.to_thread(PolicyHolder.load, settings.relay_policy_file)
        except PolicyError as exc:
            raise ConfigurationError(str(exc)) from None
    topology = Topology(settings.relay_queue_prefix, settings.relay_queue_type)
    lease = timedelta(seconds=settings.relay_lease_s)
    owner = _owner_id()
    async with AsyncExitStack() as stack:
        backend = await stack.enter_async_context(
            open_backend(settings.store, settings.pacing, owner=owner)
        )
        store, limiter = backend.store, backend.buckets
        session = await stack.enter_async_context(session_from(settings.api))
        connection = await connect_broker(settings.amqp_url)
        stack.push_async_callback(connection.close)
        publish_channel = await connection.channel(publisher_confirms=True)
        declared = await declare(publish_channel, topology)

        metrics = Metrics()
        metrics.watch_rates(limiter.rates)
        scheduler = FairScheduler(limiter, hold_s=settings.relay_hold_s)
        stack.push_async_callback(scheduler.aclose)
        http = BssHttp(
            session=session,
            endpoints=Endpoints(bss=settings.bss_endpoint, iam=settings.iam_endpoint),
            limiter=limiter,
            scheduler=scheduler,
            throttle_retries=settings.relay_throttle_retries,
            metrics=metrics,
        )
        leases = Leases(backend.store, backend.locks, owner=owner, lease=lease, metrics=metrics)
        pipeline = _build_pipeline(
            settings,
            backend,
            leases,
            apis=build_apis(settings, http),
            scheduler=scheduler,
            publisher=Publisher(channel=publish_channel, events=declared.events, topology=topology),
            gate=PolicyGate(policy, store),
            metrics=metrics,
        )
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        consumer = Consumer(
            connection=connection,
            pipeline=pipeline,
            tasks=tasks,
            metrics=metrics,
            options=ConsumerOptions(
                topology.work_queue,
                settings.relay_prefetch,
                tuple(topology.delay_queue(ms) for ms in DELAY_LEVELS_MS),
                settings.relay_stall_s,
            ),
        )
        background = _Background(tasks)
        connection.reconnect_callbacks.add(lambda *_: background.once("verify", consumer.verify()))
        background.loop("heartbeat", leases.renew_forever())
        background.loop("watch", consumer.watch())
        retention = timedelta(days=settings.relay_retention_days)
        background.loop("prune", _prune_forever(store, retention))
        _watch_store(backend, background)
        await consumer.start()
        metrics.inflight.set_function(lambda: consumer.tasks_running)
        metrics.set_parked(lambda: consumer.waiting_in_delay_queues)
        service = RunningService(
            owner=owner,
            settings=settings,
            topology=topology,
            store=store,
            connection=connection,
            consumer=consumer,
            limiter=limiter,
            scheduler=scheduler,
            metrics=metrics,
            background=background,
            policy=policy,
            store_health=backend.health,
        )
        if settings.relay_metrics_port is not None:
            await stack.enter_async_context(
                serve_metrics(
                    metrics,
                    host=settings.relay_metrics_host,
                    port=settings.relay_metrics_port,
                    problems=service.problems,
                )
            )
        log.info("service_started", owner=owner, queue=topology.work_queue)
        try:
            yield service
        finally:
            log.info("service_stopping")
            await consumer.stop_intake()
            await consumer.drain(settings.relay_shutdown_grace_s)
            background.cancel()
    log.info("service_stopped")


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    """``bss-relay serve``: run until ``stop`` is set (SIGTERM/SIGINT), then drain."""
    async with start(settings):
        await stop.wait()
