"""Reading command bytes never raises; unusable input becomes a precise rejection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.commands import RenewCommand
from service.messages.intake import Rejection, read_command

GOOD = {
    "command_id": "c-1",
    "type": "renew",
    "partner_id": "p",
    "payload": {
        "customer_id": "cust",
        "resource_ids": ["r1"],
        "period_type": "month",
        "period_num": 1,
    },
}


def read(body: bytes) -> RenewCommand | Rejection:
    return read_command(body, max_bytes=1024)  # type: ignore[return-value]


def test_valid_command() -> None:
    command = read(json.dumps(GOOD).encode())
    assert isinstance(command, RenewCommand)
    assert command.customer_id == "cust"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "RELAY.INVALID_JSON"),
        (b"[1, 2]", "RELAY.INVALID_JSON"),
        (b"\xff\xfe{}", "RELAY.INVALID_JSON"),
        (b"x" * 2000, "RELAY.TOO_LARGE"),
        (json.dumps({**GOOD, "type": "explode"}).encode(), "RELAY.UNKNOWN_TYPE"),
        (json.dumps({**GOOD, "payload": {"customer_id": 1}}).encode(), "RELAY.SCHEMA"),
    ],
)
def test_rejections(body: bytes, code: str) -> None:
    result = read(body)
    assert isinstance(result, Rejection)
    assert result.code == code


def test_rejection_keeps_what_can_be_read() -> None:
    bad = {**GOOD, "payload": {**GOOD["payload"], "period_num": 12}}  # type: ignore[dict-item]
    result = read(json.dumps(bad).encode())
    assert isinstance(result, Rejection)
    assert (result.command_id, result.type, result.partner_id, result.customer_id) == (
        "c-1",
        "renew",
        "p",
        "cust",
    )
    assert "period_num" in result.message or "payload" in result.message


def test_unknown_type_is_reported_as_invalid() -> None:
    result = read(json.dumps({**GOOD, "type": "explode"}).encode())
    assert isinstance(result, Rejection)
    assert result.type == "invalid"
    assert "explode" in result.message


def test_json_number_face_value_keeps_its_digits() -> None:
    from decimal import Decimal

    from schemas.commands import IssueCouponCommand

    body = (
        b'{"command_id": "c-2", "type": "issue_coupon", "payload": {"quota_id": "q",'
        b' "customer_ids": ["a"], "face_value": 10.50}}'
    )
    command = read_command(body, max_bytes=1024)
    assert isinstance(command, IssueCouponCommand)
    assert str(command.payload.face_value) == "10.50"
    assert command.payload.face_value == Decimal("10.50")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,  # json.loads raises RecursionError on this
        b'{"type": "renew", "payload": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"type": "renew", "command_id": "c-deep", "payload": {"customer_id": "c", "x": '
        + b'{"a": ' * 5_000
        + b"1"
        + b"}" * 5_000
        + b"}}",
    ],
    ids=["array", "payload-array", "payload-object"],
)
def test_hostile_nesting_is_a_rejection_not_an_exception(body: bytes) -> None:
    result = read_command(body, max_bytes=256 * 1024)
    assert isinstance(result, Rejection)
    assert result.code in {"RELAY.INVALID_JSON", "RELAY.SCHEMA"}
    assert "nest" in result.message or result.code == "RELAY.SCHEMA"


COUPON: dict[str, Any] = {
    "command_id": "c-coupon",
    "type": "issue_coupon",
    "payload": {"quota_id": "q", "customer_ids": ["a"], "face_value": "10.00"},
}


@pytest.mark.parametrize("face_value", ["1e3", "1E3", "1e+3", " 10", "10.", ".5", "+10", "0x10"])
def test_money_strings_the_published_pattern_forbids_are_schema_errors(face_value: str) -> None:
    body = json.dumps({**COUPON, "payload": {**COUPON["payload"], "face_value": face_value}})
    result = read_command(body.encode(), max_bytes=4096)
    assert isinstance(result, Rejection)
    assert result.code == "RELAY.SCHEMA"
    assert "face_value" in result.message
