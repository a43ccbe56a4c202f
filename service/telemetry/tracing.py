"""OpenTelemetry traces: the producer's trace continues through every API call to the event.

A command message may carry a W3C ``traceparent`` (and ``tracestate``) AMQP header (CONTRACT
§8). ``consume_span`` continues it as one CONSUMER span per command, from consume to settle;
every API and IAM call is a CLIENT span under it (``client_span``, in ``service.api.client``);
publishing the event is a PRODUCER span (``publish_span``) whose context is injected into the
event's headers, so the event carries a ``traceparent`` of the same trace on to its consumers.
Attributes follow the OpenTelemetry messaging (RabbitMQ) and HTTP client semantic conventions.

Configured by the standard variables, read by ``service.settings`` into a ``TracingConfig``:
``configure_tracing`` (called once by ``bss-relay serve``) sets up the SDK with a batching
OTLP/HTTP exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
or ``OTEL_TRACES_EXPORTER`` ask for it (``otlp``, or ``console`` to print spans), unless
``OTEL_SDK_DISABLED=true`` (protocol: ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``, http/protobuf
only; ``OTEL_SERVICE_NAME`` or a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` replaces the
default name ``bss-relay``). The exporter itself reads the
rest (headers, timeout, compression, certificates), the SDK reads ``OTEL_TRACES_SAMPLER``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_PROPAGATORS``. Without them it
creates no span: each hook costs an ``is None`` test, and a command that carries a
``traceparent`` still passes it on to its event unchanged (CONTRACT §8).

Why not the aio-pika and aiohttp-client instrumentations: they patch the libraries globally.
aio-pika's would give every publish a span and a new ``traceparent`` (our delay-queue and
dead-letter copies too, replacing the producer's context that a parked command must carry back),
and its consumer span ends when the delivery callback returns, while ours hands the message to a
task and the command settles much later. aiohttp-client's would trace the sandbox, the demo and
the test clients in the same process, add a ``traceparent`` header outside the signed headers of
every call to Huawei, and know neither the API operation nor what the relay waited for. The
spans here use the same semantic conventions, only where the relay's own work is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "TracingConfig",
    "client_span",
    "configure_tracing",
    "consume_span",
    "continued",
    "disable",
    "enable",
    "enabled",
    "inject",
    "publish_span",
    "set_attributes",
    "trace_context",
]

log = structlog.get_logger(__name__)

INSTRUMENTATION = "bss-relay"
SERVICE_NAME = "bss-relay"

_tracer: Tracer | None = None
_NOTHING: AbstractContextManager[None] = nullcontext()


def enable(provider: trace.TracerProvider) -> None:
    """Trace with ``provider`` from now on (``configure_tracing`` does this; so can a test)."""
    global _tracer  # noqa: PLW0603 - the one switch every hook reads
    _tracer = provider.get_tracer(INSTRUMENTATION)


def disable() -> None:
    global _tracer  # noqa: PLW0603
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """The ``OTEL_*`` variables tracing is set up from (``Settings.operations.tracing``)."""

    sdk_disabled: str = ""  # OTEL_SDK_DISABLED
    traces_exporter: str = ""  # OTEL_TRACES_EXPORTER
    endpoint: str | None = None  # OTEL_EXPORTER_OTLP_ENDPOINT
    traces_endpoint: str | None = None  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    protocol: str | None = None  # OTEL_EXPORTER_OTLP_PROTOCOL
    traces_protocol: str | None = None  # OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
    service_name: str | None = None  # OTEL_SERVICE_NAME
    resource_attributes: str = ""  # OTEL_RESOURCE_ATTRIBUTES

    @property
    def disabled(self) -> bool:
        return self.sdk_disabled.strip().lower() == "true"

    @property
    def service_named(self) -> bool:
        return self.service_name is not None or "service.name=" in self.resource_attributes


def _exporter(config: TracingConfig) -> SpanExporter | None:
    names = [n.strip().lower() for n in config.traces_exporter.split(",") if n.strip()]
    endpoint = config.traces_endpoint or config.endpoint
    if not names:
        names = ["otlp"] if endpoint else []
    if not names or names == ["none"]:
        return None
    if names not in (["otlp"], ["console"]):
        raise ValueError(f"OTEL_TRACES_EXPORTER={','.join(names)}: use otlp, console or none")
    # The SDK and the exporter (requests, protobuf) are imported only when tracing is on.
    if names == ["console"]:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    protocol = config.traces_protocol or (
        config.protocol if config.protocol is not None else "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ValueError(f"OTLP protocol {protocol!r}: bss-relay exports http/protobuf only")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    # The exporter reads headers, timeout, compression and certificates from the OTEL_*
    # variables itself; the endpoint is resolved here from the configuration we were given.
    traces = config.traces_endpoint
    if traces is None and endpoint:
        traces = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=traces)


def configure_tracing(config: TracingConfig) -> TracerProvider | None:
    """Set up tracing from the ``OTEL_*`` variables; None (and nothing set up) when they do
    not ask for it. The caller shuts the returned provider down at exit (flushes spans)."""
    if config.disabled:
        return None
    exporter = _exporter(config)
    if exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    attributes: dict[str, Any] = {}
    if not config.service_named:
        attributes["service.name"] = SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    enable(provider)
    log.info("tracing_enabled", exporter=type(exporter).__name__)
    return provider


def _carrier(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """AMQP header values may be bytes; the propagators want strings."""
    carrier: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if isinstance(value, bytes | bytearray):
            carrier[key] = bytes(value).decode("latin-1")
        elif isinstance(value, str):
            carrier[key] = value
    return carrier


def consume_span(message: AbstractIncomingMessage) -> AbstractContextManager[Span | None]:
    """The command's span, from consume to settle, continuing the ``traceparent`` of the
    message's headers (a new trace without one). Wrap everything done for the message in it:
    API calls and the event's publish become its children. Yields None when not tracing."""
    if _tracer is not None:
        return _consume_span(_tracer, message)
    headers = message.headers
    if headers and "traceparent" in headers:
        # Not tracing, but the contract still carries the producer's trace on to the event:
        # make its context current so that ``publish_span`` passes it through.
        return _passed_through(headers)
    return _NOTHING


TRACE_HEADERS = ("traceparent", "tracestate")


def trace_context(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The W3C trace context a message carries (``traceparent``, ``tracestate``), as text: what
    ``continued`` needs to publish on its behalf later, outside its span."""
    return {k: v for k, v in _carrier(headers).items() if k in TRACE_HEADERS}


def continued(trace: Mapping[str, str]) -> AbstractContextManager[None]:
    """Make a message's trace context (``trace_context``) current: an event published inside
    it (``publish_span``) belongs to that trace, as one published while it was processed."""
    return _passed_through(trace) if trace else _NOTHING


@contextmanager
def _passed_through(headers: Mapping[str, Any]) -> Iterator[None]:
    token = context.attach(propagate.extract(_carrier(headers)))
    try:
        yield None
    finally:
        context.detach(token)


@contextmanager
def _consume_span(tracer: Tracer, message: AbstractIncomingMessage) -> Iterator[Span | None]:
    destination = message.exchange or ""
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": destination,
        "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
        "messaging.message.body.size": len(message.body),
    }
    if message.message_id:
        attributes["messaging.message.id"] = message.message_id
    if message.correlation_id:
        attributes["messaging.message.conversation_id"] = message.correlation_id
    if message.delivery_tag is not None:
        attributes["messaging.rabbitmq.message.delivery_tag"] = message.delivery_tag
    parent = propagate.extract(_carrier(message.headers))
    with tracer.start_as_current_span(
        f"process {destination}".strip(),
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span (the command's, inside ``consume_span``), e.g.
    ``{"bss_relay.command.type": "renew", "bss_relay.outcome": "succeeded"}``."""
    if _tracer is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(dict(attributes))


def inject(headers: MutableMapping[str, Any]) -> None:
    """Write the current trace context (``traceparent``, ``tracestate``) into ``headers``:
    the current span's, or when not tracing the producer's as ``consume_span`` found it."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


def publish_span(
    *, destination: str, routing_key: str, message_id: str | None
) -> AbstractContextManager[dict[str, Any]]:
    """A PRODUCER span for one publish; yields the headers to give the message (its
    ``traceparent`` names this span). When not tracing there is no span, and the headers
    pass on the producer's ``traceparent`` if the command had one (else they are empty)."""
    if _tracer is not None:
        return _publish_span(_tracer, destination, routing_key, message_id)
    headers: dict[str, Any] = {}
    if context.get_current():  # only ``consume_span``'s pass-through sets a context then
        inject(headers)
    return nullcontext(headers)


@contextmanager
def _publish_span(
    tracer: Tracer, destination: str, routing_key: str, message_id: str | None
) -> Iterator[dict[str, Any]]:
    headers: dict[str, Any] = {}
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": destination,
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    with tracer.start_as_current_span(
        f"publish {destination}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        propagate.inject(headers)
        yield headers


class ClientSpan:
    """What ``client_span`` yields: record the answer's status on the span."""

    __slots__ = ("answered", "span")

    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.answered = False

    def status(self, code: int) -> None:
        if self.span is None:
            return
        self.answered = True
        self.span.set_attribute("http.response.status_code", code)
        if code >= 400:
            self.span.set_attribute("error.type", str(code))
            self.span.set_status(Status(StatusCode.ERROR))


_NO_SPAN = ClientSpan(None)
# Not tracing: shared context managers, nothing allocated per call.
_NO_CLIENT_SPAN = nullcontext(_NO_SPAN)


def client_span(
    *, api: str, method: str, url: str, template: str, quota_wait_s: float
) -> AbstractContextManager[ClientSpan]:
    """A CLIENT span around one HTTP call to the BSS or IAM API. ``url`` is the request URL;
    only scheme, host, port and path are recorded (never the query string). An exception
    leaving the block marks the span as an error with the exception's type."""
    if _tracer is None:
        return _NO_CLIENT_SPAN
    return _client_span(
        _tracer, api=api, method=method, url=url, template=template, quota_wait_s=quota_wait_s
    )


@contextmanager
def _client_span(
    tracer: Tracer, *, api: str, method: str, url: str, template: str, quota_wait_s: float
) -> Iterator[ClientSpan]:
    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": f"{parts.scheme}://{parts.netloc}{parts.path}",
        "url.template": template,
        "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        "bss_relay.api": api,
        "bss_relay.quota_wait_s": quota_wait_s,
    }
    with tracer.start_as_current_span(
        f"{method} {template}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        recorder = ClientSpan(span)
        try:
            yield recorder
        except BaseException as exc:
            code = getattr(exc, "code", None)  # handlers.errors: the API's or RELAY.* code
            if code:
                span.set_attribute("bss_relay.error_code", str(code))
            if not recorder.answered:  # no HTTP answer: timeout, connection refused or lost
                span.set_attribute("error.type", str(code) if code else type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            raise
