"""configure_tracing follows the standard OTEL_* variables (read by Settings), and exports
OTLP/HTTP for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider

from service.settings import Settings
from service.telemetry import tracing

Configure = Callable[[dict[str, str]], object]
OTEL_NAMES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)


@pytest.fixture(autouse=True)
def _off() -> None:
    tracing.disable()


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Configure:
    """``configure_tracing`` from exactly these OTEL_* variables in the environment, read
    the way ``serve`` reads them (through ``Settings``)."""

    def from_environment(environ: dict[str, str]) -> object:
        for name in OTEL_NAMES:
            monkeypatch.delenv(name, raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        return tracing.configure_tracing(Settings().operations.tracing)

    return from_environment


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "relay"},  # naming the service asks for no export
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
    ],
)
def test_no_tracing_unless_asked(environ: dict[str, str], configure: Configure) -> None:
    assert configure(environ) is None
    assert not tracing.enabled()


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_unsupported_exporters_are_configuration_errors(
    environ: dict[str, str], configure: Configure
) -> None:
    with pytest.raises(ValueError, match=r"OTEL_TRACES_EXPORTER|protocol"):
        configure(environ)


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """A stand-in OTLP/HTTP collector: records what is POSTed to /v1/traces."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        received.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


async def test_spans_reach_an_otlp_collector(
    collector: tuple[str, list[ExportTraceServiceRequest]], configure: Configure
) -> None:
    endpoint, received = collector
    provider = configure({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert isinstance(provider, TracerProvider)
    try:
        assert tracing.enabled()
        with tracing.client_span(
            api="renewal_resources",
            method="POST",
            url="https://bss.example.com/v2/orders/subscriptions/resources/renew?secret=x",
            template="/v2/orders/subscriptions/resources/renew",
            quota_wait_s=0.25,
        ) as span:
            span.status(200)
        # The exporter posts from its own thread; the collector answers on this loop.
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        tracing.disable()
        await asyncio.to_thread(provider.shutdown)

    [request] = received
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "bss-relay"
    [scope] = resource_spans.scope_spans
    [exported] = scope.spans
    assert exported.name == "POST /v2/orders/subscriptions/resources/renew"
    attributes = {a.key: a.value for a in exported.attributes}
    assert attributes["url.full"].string_value == (
        "https://bss.example.com/v2/orders/subscriptions/resources/renew"
    )  # never the query string
    assert attributes["server.address"].string_value == "bss.example.com"
    assert attributes["server.port"].int_value == 443
    assert attributes["http.response.status_code"].int_value == 200
