"""Reading a dead letter never raises, and the filter's fields combine as documented."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.broker.headers import H
from service.ops.replay import REPLAY_COUNT, REPLAYED_AT, DeadLetter, Filter
from tests.replay.conftest import command

AT = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)


def letter(body: bytes = b"{}", headers: dict[str, object] | None = None) -> DeadLetter:
    return DeadLetter.read(body, headers or {}, message_id="m")


@pytest.mark.parametrize("body", [b"", b"\xff\xfe", b"[1, 2]", b"null", b"[" * 100_000])
def test_unreadable_bodies_give_an_anonymous_invalid_letter(body: bytes) -> None:
    read = letter(body)
    assert (read.command_id, read.type, read.partner_id, read.customer_ids) == (
        None,
        "invalid",
        None,
        (),
    )
    assert read.routing_key == "command.invalid"


def test_fields_of_the_wrong_kind_are_ignored() -> None:
    body = {"command_id": 7, "type": "reboot", "partner_id": ["p"], "payload": {"customer_id": 1}}
    read = letter(json.dumps(body).encode())
    assert (read.command_id, read.type, read.partner_id, read.customer_ids) == (
        None,
        "invalid",
        None,
        (),
    )


def test_coupon_customers_are_all_kept() -> None:
    body = command("c", kind="issue_coupon")
    body["payload"]["customer_ids"] = ["a", "b", 3]
    assert letter(json.dumps(body).encode()).customer_ids == ("a", "b")


def test_headers_are_typed_whatever_their_wire_form() -> None:
    read = letter(
        headers={
            H.REASON: b"RELAY.SCHEMA",
            H.ATTEMPTS: "3",
            H.LAST_FAILURE: "2026-01-15T09:30:00",  # no offset: read as UTC
            H.FIRST_FAILURE: "yesterday",
            REPLAY_COUNT: "²",  # a digit to str.isdigit, not to int()
            REPLAYED_AT: "2026-01-15T17:30:00+08:00",
        }
    )
    assert (read.reason, read.attempts, read.last_failure, read.first_failure) == (
        "RELAY.SCHEMA",
        3,
        AT,
        None,
    )
    assert (read.replay_count, read.replayed_at) == (0, AT)


def test_as_json_is_json() -> None:
    read = letter(json.dumps(command("x")).encode(), headers={H.LAST_FAILURE: AT.isoformat()})
    data = json.loads(json.dumps(read.as_json()))
    assert data["last_failure"] == AT.isoformat()
    assert (data["customer_ids"], data["routing_key"]) == (["c-1"], "command.renew")


def test_time_window_is_half_open_and_needs_a_time() -> None:
    at = letter(headers={H.LAST_FAILURE: AT.isoformat()})
    assert Filter(since=AT).matches(at)
    assert not Filter(until=AT).matches(at)
    assert Filter(since=AT, until=AT + timedelta(seconds=1)).matches(at)
    assert Filter(until=AT.astimezone(timezone(timedelta(hours=8))) + timedelta(seconds=1)).matches(
        at
    )
    assert not Filter(since=AT).matches(letter())
    assert Filter().matches(letter())


def test_filter_refuses_naive_bounds() -> None:
    with pytest.raises(ValueError, match="offset"):
        Filter(since=datetime(2026, 1, 1))
