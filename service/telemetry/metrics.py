"""Prometheus metrics and the health endpoint, served by aiohttp on the service's event loop.

Counters and histograms are updated where things happen (settlement, client, scheduler)
through the small typed methods of ``Metrics``; gauges whose truth lives elsewhere (the
limiter's current rates, commands in flight, parked commands, health) are read at scrape time
from a callback. The limiter's rates show a key only while throttling
has lowered it below its configured limit (bounded by the keys the API is throttling now).

Every name here is listed in README.md ("Metrics"); deploy/grafana-dashboard.json and
deploy/prometheus-rules.yaml use them, and tests/e2e/test_observability.py checks that each
name they use is exposed by a running service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "age_s", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# One API call: milliseconds on a good day, up to RELAY_HTTP_TIMEOUT_S (30 s) on a bad one.
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Producer to event: tens of milliseconds when idle, hours for a backlog paced by quota.
COMMAND_BUCKETS = (
    *(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    *(1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0),
)
# Waiting in memory for a fair turn: up to RELAY_HOLD_S (2 s, at most 60 s) by design.
QUOTA_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def age_s(start: datetime, now: datetime | None = None) -> float:
    """Seconds from ``start`` (timezone-aware) to ``now`` (default: the wall clock), never
    negative: a producer's clock ahead of ours must not make a latency negative."""
    return max(0.0, ((now or datetime.now(UTC)) - start).total_seconds())


class _RateCollector(Collector):
    def __init__(self, rates: Callable[[], dict[str, float]]) -> None:
        self._rates = rates

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "bss_relay_rate_current",
            "Requests/s a throttled key is paced at now (only keys below their limit)",
            labels=["api", "dimension", "key"],
        )
        for name, rate in self._rates().items():
            api, dimension, key = name.split("/", 2)
            family.add_metric([api, dimension, key], rate)
        yield family


WaitingByBucket = Callable[[], dict[tuple[str, str, str], tuple[int, float]]]


class _WaitingCollector(Collector):
    """Commands this replica knows to wait per bucket (held for a slot, or parked in a line by
    it), and how long the oldest has waited: ``(api, kind, key) -> (count, oldest_s)``."""

    def __init__(self, waiting: WaitingByBucket) -> None:
        self._waiting = waiting

    def collect(self) -> Iterable[GaugeMetricFamily]:
        count = GaugeMetricFamily(
            "bss_relay_bucket_waiting",
            "Commands waiting for a rate-limit bucket, held here or parked by this replica",
            labels=["api", "kind", "key"],
        )
        oldest = GaugeMetricFamily(
            "bss_relay_bucket_oldest_wait_seconds",
            "How long the oldest command waiting for the bucket has waited",
            labels=["api", "kind", "key"],
        )
        for (api, kind, key), (n, age) in self._waiting().items():
            count.add_metric([api, kind, key], n)
            oldest.add_metric([api, kind, key], age)
        yield count
        yield oldest


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.commands = Counter(
            "bss_relay_commands",
            "Terminal events published",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "bss_relay_api_requests",
            "API answers received",
            ["api", "status"],
            registry=self.registry,
        )
        self.parked = Counter(
            "bss_relay_commands_parked",
            "Commands parked on the broker for pacing",
            ["api"],
            registry=self.registry,
        )
        self.missed_slots = Counter(
            "bss_relay_missed_slots",
            "Rate-limit slots let go because the call woke up too late for them",
            ["api"],
            registry=self.registry,
        )
        self.settlements = Counter(
            "bss_relay_settlements",
            "How deliveries ended: settled, abandoned (channel closed first: redelivered), "
            "stuck (broker unreachable in time), last_resort (raw copy dead-lettered)",
            ["result"],
            registry=self.registry,
        )
        self.delayed = Counter(
            "bss_relay_commands_delayed",
            "Commands sent back through a delay queue, by why (retry, park, busy, wait, crash)",
            ["why"],
            registry=self.registry,
        )
        self.oldest_unsettled = Gauge(
            "bss_relay_oldest_unsettled_seconds",
            "Age of the oldest delivered message not settled yet (0 when none)",
            registry=self.registry,
        )
        self.inflight = Gauge(
            "bss_relay_commands_inflight", "Commands being processed", registry=self.registry
        )
        self.api_latency = Histogram(
            "bss_relay_api_request_duration_seconds",
            "API call latency, from sending the signed request to the end of its answer",
            ["api", "status"],
            buckets=API_BUCKETS,
            registry=self.registry,
        )
        self.command_latency = Histogram(
            "bss_relay_command_duration_seconds",
            "From the command's message timestamp (or issued_at) to its terminal event",
            ["type", "outcome"],
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.quota_wait = Histogram(
            "bss_relay_quota_wait_seconds",
            "Time an API call waited in memory for its fair turn within the rate limits",
            ["api"],
            buckets=QUOTA_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "bss_relay_store_errors",
            "Command store operations that failed (the command waited and was tried again)",
            registry=self.registry,
        )
        self.parked_now = Gauge(
            "bss_relay_commands_parked_now",
            "Commands waiting in the delay queues now (parked, retrying, waiting), all replicas",
            registry=self.registry,
        )
        self.healthy = Gauge(
            "bss_relay_healthy",
            "1 while /healthz answers 200 (consuming, broker connected, settling), else 0",
            registry=self.registry,
        )

        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, looked up once: the label sets are few (types x
        outcomes, APIs x statuses), the calls are per command."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def inc(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()``."""
        self._child(counter, labels).inc()

    def observe_api(self, api: str, status: str, seconds: float) -> None:
        """One API answer (or failure: ``status`` is then the error code) after ``seconds``."""
        self._child(self.api_latency, (api, status)).observe(seconds)

    def observe_command(self, type_: str, outcome: str, seconds: float) -> None:
        """A terminal event published ``seconds`` after the command was issued (``age_s``)."""
        self._child(self.command_latency, (type_, outcome)).observe(seconds)

    def observe_quota_wait(self, api: str, seconds: float) -> None:
        """An API call that waited ``seconds`` for its turn (``FairScheduler.turn``)."""
        self._child(self.quota_wait, (api,)).observe(seconds)

    def store_error(self) -> None:
        """A command store operation failed."""
        self.store_errors.inc()

    def set_parked(self, parked: Callable[[], float]) -> None:
        """Read the number of commands parked now from ``parked`` at each scrape."""
        self.parked_now.set_function(parked)

    def watch_rates(self, rates: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_RateCollector(rates))

    def watch_waiting(self, waiting: WaitingByBucket) -> None:
        self.registry.register(_WaitingCollector(waiting))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@asynccontextmanager
async def serve_metrics(
    metrics: Metrics, *, host: str, port: int, problems: Callable[[], list[str]]
) -> AsyncIterator[web.AppRunner]:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz``: 200 ``{"ok": true}`` while
    ``problems()`` is empty, else 503 with them (``{"ok": false, "problems": [...]}``); the
    gauge ``bss_relay_healthy`` says the same to Prometheus."""
    metrics.healthy.set_function(lambda: 0.0 if problems() else 1.0)

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def health(_: web.Request) -> web.Response:
        found = problems()
        body = {"ok": not found, "problems": found}
        return web.json_response(body, status=503 if found else 200)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield runner
    finally:
        await runner.cleanup()
