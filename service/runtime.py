"""The runtime: builds every resource, owns it in one ``AsyncExitStack``, drains on stop.

Start order (exit runs in reverse): command store -> HTTP session -> broker connection ->
channels and topology -> consumer. Start fails fast: an unreachable broker or store raises
before anything is consumed. Stop: stop intake, drain within ``RELAY_SHUTDOWN_GRACE_S``,
cancel what is left (unacked, so redelivered), close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection

from handlers.ports import BssApi, CommandStore
from service.bss import PartnerApi
from service.client import BssHttp, session_from
from service.consumer import Consumer
from service.credentials import CredentialCache
from service.metrics import Metrics, serve_metrics
from service.processor import Processor, RetryPolicy
from service.publisher import Publisher
from service.scheduler import FairScheduler
from service.settings import Settings
from service.store import open_store
from service.store.buckets import open_limiter
from service.topology import Topology, declare

__all__ = ["ConfigurationError", "run"]

log = structlog.get_logger(__name__)

PRUNE_EVERY_S = 3600.0


class ConfigurationError(RuntimeError):
    pass


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build_apis(settings: Settings, http: BssHttp) -> dict[str, BssApi]:
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
        with contextlib.suppress(Exception):
            removed = await store.prune(finished_before=datetime.now(UTC) - retention)
            if removed:
                log.info("store_pruned", removed=removed)
        await asyncio.sleep(PRUNE_EVERY_S)


async def _verify_consumers(
    connection: AbstractRobustConnection, queue_name: str, consumer: Consumer
) -> None:
    """After a reconnect, check the broker really has a consumer again (aio-pika#231)."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(queue_name, passive=True)
        count = queue.declaration_result.consumer_count
    finally:
        await channel.close()
    log.info("reconnected", queue=queue_name, consumers=count)
    if count == 0:
        log.warning("consumer_missing_after_reconnect_restarting")
        await consumer.start()


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    topology = Topology(settings.relay_queue_prefix)
    lease = timedelta(seconds=settings.relay_lease_s)
    owner = _owner_id()
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings.store_url))
        session = await stack.enter_async_context(session_from(settings))
        connection = await aio_pika.connect_robust(settings.amqp_url)
        stack.push_async_callback(connection.close)
        publish_channel = await connection.channel(publisher_confirms=True)
        declared = await declare(publish_channel, topology)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=settings.relay_prefetch)
        work = await consume_channel.declare_queue(topology.work_queue, durable=True)

        limiter = await stack.enter_async_context(
            open_limiter(
                store,
                settings.relay_rate_limits,
                egress=settings.relay_egress,
                guard_s=settings.relay_rate_guard_ms / 1000,
                guard_max_s=settings.relay_rate_guard_max_ms / 1000,
            )
        )
        metrics = Metrics()
        metrics.watch_rates(limiter.rates)
        scheduler = FairScheduler(limiter, hold_s=settings.relay_hold_s)
        stack.push_async_callback(scheduler.aclose)
        http = BssHttp(
            session=session,
            bss_endpoint=settings.bss_endpoint,
            iam_endpoint=settings.iam_endpoint,
            limiter=limiter,
            scheduler=scheduler,
            throttle_retries=settings.relay_throttle_retries,
            metrics=metrics,
        )
        processor = Processor(
            store=store,
            publisher=Publisher(channel=publish_channel, events=declared.events, topology=topology),
            apis=build_apis(settings, http),
            scheduler=scheduler,
            owner=owner,
            lease=lease,
            retry=RetryPolicy(
                settings.relay_max_attempts, settings.relay_retry_base_s, settings.relay_retry_max_s
            ),
            max_body_bytes=settings.relay_max_body_bytes,
            metrics=metrics,
        )
        async with asyncio.TaskGroup() as tasks:
            consumer = Consumer(
                queue=work,
                processor=processor,
                tasks=tasks,
                store=store,
                owner=owner,
                lease=lease,
            )

            async def on_reconnect(*_: Any) -> None:
                tasks.create_task(_verify_consumers(connection, topology.work_queue, consumer))

            connection.reconnect_callbacks.add(on_reconnect)
            background = [
                tasks.create_task(consumer.heartbeat()),
                tasks.create_task(
                    _prune_forever(store, timedelta(days=settings.relay_retention_days))
                ),
            ]
            await consumer.start()
            metrics.inflight.set_function(lambda: consumer.inflight)
            if settings.relay_metrics_port is not None:
                await stack.enter_async_context(
                    serve_metrics(
                        metrics,
                        host=settings.relay_metrics_host,
                        port=settings.relay_metrics_port,
                        healthy=lambda: consumer.consuming and not connection.is_closed,
                    )
                )
            if stats is not None:
                stats.update(
                    limiter=limiter, consumer=consumer, scheduler=scheduler, metrics=metrics
                )
            log.info("service_started", owner=owner, queue=topology.work_queue)
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("service_stopping")
            await consumer.stop_intake()
            await consumer.drain(settings.relay_shutdown_grace_s)
            for task in background:
                task.cancel()
    log.info("service_stopped")
