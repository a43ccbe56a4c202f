"""The AsyncAPI 3.0 document of bss-relay, generated from the message models.

The document is never written by hand: ``python -m service.ops.asyncapi -o docs/asyncapi.yaml``
regenerates it, and a unit test fails when the checked-in file differs from what the models say.

Shape of the document::

    channels    bss.commands      address command.{type}    (topic exchange)
                bss.events        address {type}.{outcome}  (topic exchange)
                bss.commands.dlq  address bss.commands.dlq  (durable queue)
    operations  publishCommand    producers  send     bss.commands
                consumeCommand    service    receive  bss.commands
                publishEvent      service    send     bss.events
                deadLetter        service    send     bss.commands.dlq
    components  schemas (from pydantic), messages, correlationIds

Commands are documented with pydantic's *validation* schema (what the service accepts) and events
with its *serialization* schema (what the service writes). pydantic's OpenAPI-style
``discriminator`` objects are reduced to the property name, which is what AsyncAPI's schema
format defines.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.commands import (
    CommandType,
    InquirePriceCommand,
    IssueCouponCommand,
    RenewCommand,
    SetAutoRenewCommand,
)
from schemas.events import (
    INVALID_TYPE,
    InquirePriceEvent,
    InvalidEvent,
    IssueCouponEvent,
    Outcome,
    RenewEvent,
    SetAutoRenewEvent,
)
from service.broker.headers import REQUESTED_BY, H
from service.broker.topology import COMMANDS_EXCHANGE, DLQ, EVENTS_EXCHANGE

__all__ = [
    "COMMAND_MODELS",
    "DOCUMENT_VERSION",
    "EVENT_MODELS",
    "build_document",
    "command_routing_keys",
    "event_routing_keys",
    "iter_refs",
    "main",
    "render_yaml",
]

# The message contract's version (not the package's): bump it when a schema changes incompatibly.
DOCUMENT_VERSION = "1.0.0"
AMQP_BINDING_VERSION = "0.3.0"
PERSISTENT = 2  # AMQP delivery_mode: every message is written to disk by the broker
JSON = "application/json"
SCHEMA_REF = "#/components/schemas/{model}"

COMMAND_MODELS: Mapping[str, type[BaseModel]] = {
    CommandType.RENEW.value: RenewCommand,
    CommandType.SET_AUTO_RENEW.value: SetAutoRenewCommand,
    CommandType.INQUIRE_PRICE.value: InquirePriceCommand,
    CommandType.ISSUE_COUPON.value: IssueCouponCommand,
}
EVENT_MODELS: Mapping[str, type[BaseModel]] = {
    CommandType.RENEW.value: RenewEvent,
    CommandType.SET_AUTO_RENEW.value: SetAutoRenewEvent,
    CommandType.INQUIRE_PRICE.value: InquirePriceEvent,
    CommandType.ISSUE_COUPON.value: IssueCouponEvent,
    INVALID_TYPE: InvalidEvent,
}

# W3C Trace Context (CONTRACT §8): optional on a command, carried on to its event.
TRACE_HEADERS: Mapping[str, dict[str, Any]] = {
    "traceparent": {
        "type": "string",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": "W3C Trace Context `traceparent`.",
        "examples": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
    },
    "tracestate": {"type": "string", "description": "W3C Trace Context `tracestate`."},
}


def _trace_headers(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": dict(TRACE_HEADERS)}


DEAD_LETTER_HEADERS: Mapping[str, dict[str, Any]] = {
    H.REASON: {
        "type": "string",
        "description": "Why the command was given up on: a RELAY.* code or the API's own code.",
        "examples": ["RELAY.SCHEMA"],
    },
    H.REASON_MESSAGE: {
        "type": "string",
        "maxLength": 1000,
        "description": "The same reason in words, for the person inspecting the queue.",
    },
    H.ATTEMPTS: {
        "type": "integer",
        "minimum": 0,
        "description": "Deliveries of the command that ended in a failure (retries so far).",
    },
    H.FIRST_FAILURE: {
        "type": "string",
        "format": "date-time",
        "description": "When the command first failed (ISO 8601, UTC).",
    },
    H.LAST_FAILURE: {
        "type": "string",
        "format": "date-time",
        "description": "When the command last failed, i.e. was dead-lettered (ISO 8601, UTC).",
    },
    H.ORIGINAL_ROUTING_KEY: {
        "type": "string",
        "description": "The routing key the producer published with (for replay).",
        "examples": ["command.renew"],
    },
}


OPTIONAL_DEAD_LETTER_HEADERS: Mapping[str, dict[str, Any]] = {
    REQUESTED_BY: {
        "type": "string",
        "description": "The broker-validated AMQP user_id of the original message, which a "
        "copy published by the service cannot carry as its own user_id (the broker refuses "
        "a user_id that is not the publisher's). Absent when the producer set none. Trusted "
        "by the service only on its own delayed copies, never on a message arriving through "
        "bss.commands (a replay included).",
        "examples": ["erp-billing"],
    },
}


def command_routing_keys() -> list[str]:
    return [f"command.{type_}" for type_ in COMMAND_MODELS]


def event_routing_keys() -> list[str]:
    keys = [f"{type_}.{outcome.value}" for type_ in COMMAND_MODELS for outcome in Outcome]
    return [*keys, f"{INVALID_TYPE}.{Outcome.REJECTED.value}"]


# --- schemas -----------------------------------------------------------------------------------


def _component_schemas() -> tuple[dict[str, str], dict[str, Any]]:
    """Model name -> ``$ref`` of its schema, and every schema under ``components/schemas``."""
    inputs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        *((model, "validation") for model in COMMAND_MODELS.values()),
        *((model, "serialization") for model in EVENT_MODELS.values()),
    ]
    refs, top = models_json_schema(inputs, ref_template=SCHEMA_REF)
    by_name = {model.__name__: ref["$ref"] for (model, _), ref in refs.items()}
    return by_name, _asyncapi_schema(top.get("$defs", {}))


def _asyncapi_schema(node: Any) -> Any:
    """Copy ``node``, turning OpenAPI discriminator objects into AsyncAPI's property name."""
    if isinstance(node, dict):
        copied = {key: _asyncapi_schema(value) for key, value in node.items()}
        discriminator = copied.get("discriminator")
        if isinstance(discriminator, dict) and "propertyName" in discriminator:
            copied["discriminator"] = discriminator["propertyName"]
        return copied
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


# --- messages ----------------------------------------------------------------------------------


def _summary(model: type[BaseModel]) -> str:
    return (model.__doc__ or model.__name__).strip().splitlines()[0]


def _command_message(type_: str, model: type[BaseModel], ref: str) -> dict[str, Any]:
    return {
        "name": model.__name__,
        "title": f"{type_} command",
        "summary": _summary(model),
        "description": (
            f"Publish to `{COMMANDS_EXCHANGE}` with routing key `command.{type_}`. AMQP "
            "properties: `content_type: application/json`, `delivery_mode: 2`, `message_id` "
            "should equal `command_id`; optional `correlation_id` (echoed on the event) and "
            "`reply_to` (the event is also sent to that queue through the default exchange). "
            "Body: one UTF-8 JSON object of at most 256 KiB; money as decimal strings."
        ),
        "contentType": JSON,
        "correlationId": {"$ref": "#/components/correlationIds/command"},
        "headers": _trace_headers(
            "Optional. A producer's trace context: the command's event carries a "
            "`traceparent` of the same trace."
        ),
        "payload": {"$ref": ref},
    }


def _event_message(type_: str, model: type[BaseModel], ref: str) -> dict[str, Any]:
    keys = ", ".join(f"`{key}`" for key in event_routing_keys() if key.startswith(f"{type_}."))
    return {
        "name": model.__name__,
        "title": f"{type_} event",
        "summary": f"Terminal event of a command of type `{type_}`."
        if type_ != INVALID_TYPE
        else "Terminal event of a body whose type could not be read.",
        "description": (
            f"Published to `{EVENTS_EXCHANGE}` with routing key `<type>.<outcome>` ({keys}). "
            "AMQP properties: `content_type: application/json`, `delivery_mode: 2`, "
            "`message_id` = `event_id`, `correlation_id` = the command's `correlation_id`, "
            "else its `command_id`; `type` = the routing key. Every field is present, "
            "nulls included."
        ),
        "contentType": JSON,
        "correlationId": {"$ref": "#/components/correlationIds/event"},
        "headers": _trace_headers(
            "Present when the command carried a `traceparent`: the same trace, continued "
            "(with tracing exported, the parent is the service's publish span)."
        ),
        "payload": {"$ref": ref},
    }


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "deadLetter",
        "title": "Dead-lettered command",
        "summary": "A command the service gave up on or could not read, kept for inspection.",
        "description": (
            "The original message, body byte for byte and AMQP properties (`content_type`, "
            "`message_id`, `correlation_id`, `reply_to`, ...) unchanged except `user_id` "
            "(carried in `x-relay-requested-by`), with the `x-relay-*` headers below added; "
            "the original's own headers are kept."
        ),
        "headers": {
            "type": "object",
            "properties": {**DEAD_LETTER_HEADERS, **OPTIONAL_DEAD_LETTER_HEADERS},
            "required": list(DEAD_LETTER_HEADERS),
        },
        "payload": {
            "description": "The original command body, unchanged; it may not be valid JSON."
        },
    }


def _messages(refs: Mapping[str, str]) -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for type_, model in COMMAND_MODELS.items():
        messages[model.__name__] = _command_message(type_, model, refs[model.__name__])
    for type_, model in EVENT_MODELS.items():
        messages[model.__name__] = _event_message(type_, model, refs[model.__name__])
    messages["DeadLetter"] = _dead_letter_message()
    return messages


# --- channels and operations -------------------------------------------------------------------


def _exchange_binding(name: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": name, "type": "topic", "durable": True, "autoDelete": False},
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }


def _channels() -> dict[str, Any]:
    return {
        COMMANDS_EXCHANGE: {
            "address": "command.{type}",
            "title": COMMANDS_EXCHANGE,
            "description": (
                f"Durable topic exchange `{COMMANDS_EXCHANGE}`; producers publish one command "
                "per message with routing key `command.<type>`. The service reads every message "
                "published here (its work queue is bound with `#`): the body's `type` is "
                "authoritative over the routing key."
            ),
            "parameters": {
                "type": {"enum": list(COMMAND_MODELS), "description": "The command's `type`."}
            },
            "messages": {
                type_: {"$ref": f"#/components/messages/{model.__name__}"}
                for type_, model in COMMAND_MODELS.items()
            },
            "bindings": _exchange_binding(COMMANDS_EXCHANGE),
        },
        EVENTS_EXCHANGE: {
            "address": "{type}.{outcome}",
            "title": EVENTS_EXCHANGE,
            "description": (
                f"Durable topic exchange `{EVENTS_EXCHANGE}`; one terminal event per command, "
                "routing key `<type>.<outcome>` (`invalid.rejected` when the type could not be "
                "read). Bind e.g. `renew.*` or `*.unknown`. `partial` only occurs for batch "
                "calls and `unknown` only for money-moving ones (renew, issue_coupon)."
            ),
            "parameters": {
                "type": {"enum": list(EVENT_MODELS), "description": "The command's type."},
                "outcome": {"enum": [o.value for o in Outcome], "description": "The outcome."},
            },
            "messages": {
                type_: {"$ref": f"#/components/messages/{model.__name__}"}
                for type_, model in EVENT_MODELS.items()
            },
            "bindings": _exchange_binding(EVENTS_EXCHANGE),
        },
        DLQ: {
            "address": DLQ,
            "title": DLQ,
            "description": (
                f"Durable queue `{DLQ}`: commands the service gave up on or could not read, "
                "kept for inspection and replay (`bss-relay replay`)."
            ),
            "messages": {"deadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": DLQ,
                        "durable": True,
                        "exclusive": False,
                        "autoDelete": False,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        },
    }


def _message_refs(channel: str, names: Sequence[str]) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in names]


def _publish_binding(routing_keys: Sequence[str] | None) -> dict[str, Any]:
    binding: dict[str, Any] = {"deliveryMode": PERSISTENT}
    if routing_keys is not None:
        binding["cc"] = list(routing_keys)
    binding["bindingVersion"] = AMQP_BINDING_VERSION
    return {"amqp": binding}


def _operations() -> dict[str, Any]:
    return {
        "publishCommand": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{COMMANDS_EXCHANGE}"},
            "title": "Producers publish a command",
            "description": (
                "Done by the partner's systems (e.g. an ERP). Publish persistently with "
                "publisher confirms; re-publishing the same `command_id` is safe: it is carried "
                "out at most once and its result re-announced with `duplicate: true`."
            ),
            "messages": _message_refs(COMMANDS_EXCHANGE, list(COMMAND_MODELS)),
            "bindings": _publish_binding(command_routing_keys()),
        },
        "consumeCommand": {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{COMMANDS_EXCHANGE}"},
            "title": "The service carries out a command",
            "description": (
                "Acknowledged only after the command's terminal event is confirmed by the "
                "broker; a crash or restart delivers it again."
            ),
            "messages": _message_refs(COMMANDS_EXCHANGE, list(COMMAND_MODELS)),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        },
        "publishEvent": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{EVENTS_EXCHANGE}"},
            "title": "The service announces a command's outcome",
            "description": (
                "Exactly one terminal event per `command_id` (re-announcements carry "
                "`duplicate: true`), published persistently with publisher confirms. When the "
                "command had `reply_to`, the same message also goes to that queue through the "
                "default exchange."
            ),
            "messages": _message_refs(EVENTS_EXCHANGE, list(EVENT_MODELS)),
            "bindings": _publish_binding(event_routing_keys()),
        },
        "deadLetter": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{DLQ}"},
            "title": "The service keeps an unusable or abandoned command",
            "description": "Published through the default exchange with the queue's name.",
            "messages": _message_refs(DLQ, ["deadLetter"]),
            "bindings": _publish_binding(None),
        },
    }


# --- document ----------------------------------------------------------------------------------

_CORRELATION_IDS = {
    "command": {
        "description": "The producer's `command_id`; the resulting event carries it too. The "
        "optional AMQP `correlation_id` property is echoed on the event.",
        "location": "$message.payload#/command_id",
    },
    "event": {
        "description": "The command's `command_id` (null only for an unreadable body). The "
        "event's AMQP `correlation_id` is the command's `correlation_id`, else its `command_id`.",
        "location": "$message.payload#/command_id",
    },
}


def build_document() -> dict[str, Any]:
    """The whole AsyncAPI 3.0 document as plain data, in a stable order."""
    refs, schemas = _component_schemas()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "bss-relay",
            "version": DOCUMENT_VERSION,
            "description": (
                "Carries out commands published to RabbitMQ against the Huawei Cloud BSS "
                "partner API, within its rate limits, and publishes one result event per "
                "command. Generated from the service's pydantic models; do not edit by hand."
            ),
        },
        "defaultContentType": JSON,
        "servers": {
            "broker": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker named by `AMQP_URL` "
                "(default `amqp://guest:guest@localhost:5672/`).",
            }
        },
        "channels": _channels(),
        "operations": _operations(),
        "components": {
            "schemas": schemas,
            "messages": _messages(refs),
            "correlationIds": _CORRELATION_IDS,
        },
    }


def iter_refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value in ``node`` (used by the tests to prove they all resolve)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from iter_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_refs(item)


_HEADER = (
    "# Generated from the pydantic models by "
    "`python -m service.ops.asyncapi -o docs/asyncapi.yaml`.\n"
)


def render_yaml() -> str:
    """The document as YAML, headed by a note that it is generated."""
    body = yaml.safe_dump(build_document(), sort_keys=False, allow_unicode=True, width=100)
    return _HEADER + body


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print bss-relay's AsyncAPI document (YAML).")
    parser.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render_yaml()
    if args.output is None:
        print(text, end="")
    else:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
