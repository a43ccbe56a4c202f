"""The checked-in AsyncAPI document is exactly what the models generate, and it is whole.

A schema change without ``python -m service.ops.asyncapi -o docs/asyncapi.yaml`` fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.commands import CommandType
from schemas.events import Outcome
from service.ops.asyncapi import build_document, iter_refs, main, render_yaml

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document()


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref}: {key!r} is not inside an object"
        assert key in node, f"{ref}: no {key!r}"
        node = node[key]
    return node


def test_checked_in_file_is_up_to_date() -> None:
    assert CHECKED_IN.read_text(encoding="utf-8") == render_yaml(), (
        "docs/asyncapi.yaml is stale: run `python -m service.ops.asyncapi -o docs/asyncapi.yaml`"
    )


def test_yaml_reads_back_as_the_document(document: dict[str, Any]) -> None:
    assert yaml.safe_load(render_yaml()) == document


def test_is_asyncapi_3(document: dict[str, Any]) -> None:
    assert document["asyncapi"].startswith("3.0")
    assert set(document["channels"]) == {"bss.commands", "bss.events", "bss.commands.dlq"}


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    refs = list(iter_refs(document))
    assert len(refs) > 50
    for ref in refs:
        assert resolve(document, ref) is not None


def test_no_json_schema_defs_left(document: dict[str, Any]) -> None:
    text = yaml.safe_dump(document)
    assert "$defs" not in text
    assert all(not ref.startswith("#/$defs") for ref in iter_refs(document))


@pytest.mark.parametrize("command_type", [t.value for t in CommandType])
def test_every_command_type_is_published_and_consumed(
    document: dict[str, Any], command_type: str
) -> None:
    channel = document["channels"]["bss.commands"]
    assert command_type in channel["messages"]
    assert command_type in channel["parameters"]["type"]["enum"]
    publish = document["operations"]["publishCommand"]
    assert f"command.{command_type}" in publish["bindings"]["amqp"]["cc"]
    message_refs = {ref["$ref"] for ref in document["operations"]["consumeCommand"]["messages"]}
    assert f"#/channels/bss.commands/messages/{command_type}" in message_refs


@pytest.mark.parametrize(
    "key",
    [f"{t.value}.{o.value}" for t in CommandType for o in Outcome] + ["invalid.rejected"],
)
def test_every_event_routing_key_is_listed(document: dict[str, Any], key: str) -> None:
    assert key in document["operations"]["publishEvent"]["bindings"]["amqp"]["cc"]
    type_, outcome = key.split(".")
    parameters = document["channels"]["bss.events"]["parameters"]
    assert type_ in parameters["type"]["enum"]
    assert outcome in parameters["outcome"]["enum"]
    assert type_ in document["channels"]["bss.events"]["messages"]


def test_messages_are_persistent_json(document: dict[str, Any]) -> None:
    for name, message in document["components"]["messages"].items():
        if name != "DeadLetter":
            assert message["contentType"] == "application/json"
    for operation in ("publishCommand", "publishEvent", "deadLetter"):
        assert document["operations"][operation]["bindings"]["amqp"]["deliveryMode"] == 2


def test_exchanges_and_queue_are_durable(document: dict[str, Any]) -> None:
    channels = document["channels"]
    for name in ("bss.commands", "bss.events"):
        exchange = channels[name]["bindings"]["amqp"]["exchange"]
        assert (exchange["name"], exchange["type"], exchange["durable"]) == (name, "topic", True)
    queue = channels["bss.commands.dlq"]["bindings"]["amqp"]["queue"]
    assert (queue["name"], queue["durable"]) == ("bss.commands.dlq", True)


def test_dead_letter_headers_are_documented(document: dict[str, Any]) -> None:
    headers = document["components"]["messages"]["DeadLetter"]["headers"]["properties"]
    assert set(headers) >= {
        "x-relay-reason",
        "x-relay-reason-message",
        "x-relay-attempts",
        "x-relay-first-failure",
        "x-relay-last-failure",
        "x-relay-original-routing-key",
    }


def test_money_is_a_string_in_the_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["PriceResult"]["properties"]["amount"]["type"] == "string"
    face_value = schemas["IssueCouponPayload"]["properties"]["face_value"]
    assert {"type": "string"} in [{"type": s.get("type")} for s in face_value["anyOf"]]


def test_discriminators_use_the_asyncapi_form(document: dict[str, Any]) -> None:
    payload = document["components"]["schemas"]["InquirePriceCommand"]["properties"]["payload"]
    assert payload["discriminator"] == "mode"


def test_main_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.yaml"
    main(["-o", str(target)])
    assert target.read_text(encoding="utf-8") == render_yaml()


def test_main_prints(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    assert capsys.readouterr().out == render_yaml()
