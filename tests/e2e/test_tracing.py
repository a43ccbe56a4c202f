"""A command's traceparent continues through the service: one consumer span, a client span per
API and IAM call under it, a producer span for the event, whose headers carry the trace on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.broker.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE
from service.telemetry import tracing
from tests.e2e.conftest import RelayFactory, Sandbox, eventually, new_id
from tests.sandbox import demo_ids as ids

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


def renew(customer: str, resource: str) -> dict[str, Any]:
    return {
        "command_id": new_id("traced"),
        "type": "renew",
        "payload": {
            "customer_id": customer,
            "resource_ids": [resource],
            "period_type": "month",
            "period_num": 1,
        },
    }


def of(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


async def test_traceparent_continues_through_api_calls_to_the_event(
    start_relay: RelayFactory, bss: Sandbox, spans: InMemorySpanExporter
) -> None:
    relay = await start_relay()
    events: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    queue = await relay.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, routing_key="renew.*")
    await queue.consume(events.put, no_ack=True)

    command = renew(ids.ACME, "acme-ecs-01")
    await relay.publish(
        command,
        headers={
            "traceparent": f"00-{TRACE_ID}-{PRODUCER_SPAN_ID}-01",
            "tracestate": "erp=4711",
        },
        correlation_id="erp-corr-9",
    )
    message = await asyncio.wait_for(events.get(), 30)
    assert json.loads(message.body)["outcome"] == "succeeded"

    # The event carries the same trace on; its parent is the relay's publish span.
    headers = message.headers or {}
    traceparent = headers["traceparent"]
    assert isinstance(traceparent, str)
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert headers["tracestate"] == "erp=4711"

    # The command's span ends once the message is settled (acked), just after the event.
    await eventually(lambda: bool(of(tuple(spans.get_finished_spans()), SpanKind.CONSUMER)))
    finished = tuple(spans.get_finished_spans())
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}

    [consumer] = of(finished, SpanKind.CONSUMER)
    assert consumer.parent is not None
    assert consumer.parent.is_remote
    assert format(consumer.parent.span_id, "016x") == PRODUCER_SPAN_ID
    assert consumer.name == f"process {COMMANDS_EXCHANGE}"
    consumed = dict(consumer.attributes or {})
    assert isinstance(consumed.pop("messaging.rabbitmq.message.delivery_tag"), int)
    assert consumed == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": COMMANDS_EXCHANGE,
        "messaging.rabbitmq.destination.routing_key": "command.renew",
        "messaging.message.body.size": len(json.dumps(command).encode()),
        "messaging.message.id": command["command_id"],
        "messaging.message.conversation_id": "erp-corr-9",
    }

    clients = of(finished, SpanKind.CLIENT)
    by_api = {s.attributes["bss_relay.api"]: s for s in clients if s.attributes}
    # IAM for the customer's credentials, the renewal, and its reconciliation reads.
    assert {"create_temporary_access_key_by_agency", "renewal_resources"} <= set(by_api)
    for span in clients:
        assert span.parent is not None
        assert span.parent.span_id == consumer.context.span_id
        assert span.status.status_code != StatusCode.ERROR
    renewal = by_api["renewal_resources"]
    attributes = dict(renewal.attributes or {})
    assert renewal.name == "POST /v2/orders/subscriptions/resources/renew"
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.full"] == f"{bss.url}/v2/orders/subscriptions/resources/renew"
    assert attributes["server.address"] == "127.0.0.1"
    assert isinstance(attributes["server.port"], int)
    wait = attributes["bss_relay.quota_wait_s"]
    assert isinstance(wait, float)
    assert wait >= 0
    iam = dict(by_api["create_temporary_access_key_by_agency"].attributes or {})
    assert iam["http.response.status_code"] == 201

    [producer] = of(finished, SpanKind.PRODUCER)
    assert producer.parent is not None
    assert producer.parent.span_id == consumer.context.span_id
    assert format(producer.context.span_id, "016x") == parent_id
    assert producer.name == f"publish {EVENTS_EXCHANGE}"
    assert dict(producer.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": EVENTS_EXCHANGE,
        "messaging.rabbitmq.destination.routing_key": "renew.succeeded",
        "messaging.message.id": json.loads(message.body)["event_id"],
    }
    # The consumer span covers the whole command: it ends after the event's publish.
    assert consumer.end_time is not None
    assert producer.end_time is not None
    assert consumer.end_time >= producer.end_time


async def test_failed_api_call_marks_its_span(
    start_relay: RelayFactory, bss: Sandbox, spans: InMemorySpanExporter
) -> None:
    relay = await start_relay()
    await bss.put(
        "faults",
        {
            "rules": [
                {
                    "kind": "error",
                    "operations": ["renewal_resources"],
                    "status": 400,
                    "error_code": "CBC.0101",
                    "error_msg": "Invalid parameter.",
                }
            ]
        },
    )
    command = renew(ids.ACME, "acme-ecs-01")
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "failed"
    assert event["error"]["code"] == "CBC.0101"
    refused = [
        s
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.CLIENT
        and s.attributes
        and s.attributes["bss_relay.api"] == "renewal_resources"
    ]
    assert refused
    span = refused[-1]
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 400
    assert span.attributes["error.type"] == "400"
    assert span.attributes["bss_relay.error_code"] == event["error"]["code"]


async def test_without_tracing_the_event_passes_the_producers_traceparent_on(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    """CONTRACT §8 holds with tracing off (no OTEL_* variables): no span is made, and the
    event carries the producer's own trace context; a command without one gets none."""
    assert not tracing.enabled()
    relay = await start_relay()
    events: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    queue = await relay.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, routing_key="renew.*")
    await queue.consume(events.put, no_ack=True)
    traceparent = f"00-{TRACE_ID}-{PRODUCER_SPAN_ID}-01"
    await relay.publish(
        renew(ids.ACME, "acme-ecs-01"),
        headers={"traceparent": traceparent, "tracestate": "erp=1"},
    )
    message = await asyncio.wait_for(events.get(), 30)
    assert message.headers is not None
    assert message.headers["traceparent"] == traceparent
    assert message.headers["tracestate"] == "erp=1"

    await relay.publish(renew(ids.ACME, "acme-ecs-01"))
    message = await asyncio.wait_for(events.get(), 30)
    assert "traceparent" not in (message.headers or {})
