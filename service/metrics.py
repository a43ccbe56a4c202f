"""Prometheus metrics and the health endpoint, served by aiohttp on the service's event loop.

Counters are incremented where things happen (processor, client, scheduler); the limiter's
current rates are read at scrape time, so a key shows up only while throttling has lowered
it below its configured limit (bounded by the keys the API is throttling right now).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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

        self._children: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    def inc(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()``, with the labelled child looked up once: the
        label sets are few (types x outcomes, APIs x statuses), the calls are per command."""
        child = self._children.get((counter, labels))
        if child is None:
            child = self._children[(counter, labels)] = counter.labels(*labels)
        child.inc()

    def watch_rates(self, rates: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_RateCollector(rates))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@asynccontextmanager
async def serve_metrics(
    metrics: Metrics, *, host: str, port: int, problems: Callable[[], list[str]]
) -> AsyncIterator[web.AppRunner]:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz``: 200 ``{"ok": true}`` while
    ``problems()`` is empty, else 503 with them (``{"ok": false, "problems": [...]}``)."""

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
