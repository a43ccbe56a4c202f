"""API answers are mapped onto the one error tree the way reference/bss-api.md §6 describes."""

from __future__ import annotations

import json

import pytest

from handlers.errors import (
    ApiRefused,
    ApiUnavailable,
    Disposition,
    OutcomeUnknown,
    RelayError,
    Throttled,
)
from service.api.client import map_error, parse_error_body
from service.api.operations import OPERATIONS

RENEW = OPERATIONS["renewal_resources"]
LIST_ORDERS = OPERATIONS["list_customer_orders"]


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (429, body(error_code="APIG.0308", error_msg="throttled"), Throttled),
        (400, body(error_code="APIGW.0308", error_msg="throttled"), Throttled),
        (400, body(error_code="CBC.0100", error_msg="bad param"), ApiRefused),
        (403, body(error_code="CBC.0151", error_msg="denied"), ApiRefused),
        (401, body(error_code="APIGW.0301", error_msg="bad signature"), ApiRefused),
        (400, body(error_code="CBC.99008040", error_msg="too frequent"), ApiUnavailable),
    ],
)
def test_mapping_independent_of_operation(
    status: int, payload: bytes, expected: type[RelayError]
) -> None:
    for op in (RENEW, LIST_ORDERS):
        assert type(map_error(op, status, payload, "rid")) is expected


def test_server_error_on_money_moving_call_is_outcome_unknown() -> None:
    error = map_error(RENEW, 500, body(error_code="CBC.0999", error_msg="oops"), None)
    assert isinstance(error, OutcomeUnknown)
    assert error.disposition is Disposition.RECONCILE


def test_server_error_on_read_is_retryable() -> None:
    error = map_error(LIST_ORDERS, 502, b"<html>bad gateway</html>", None)
    assert isinstance(error, ApiUnavailable)
    assert error.disposition is Disposition.RETRY
    assert error.code == "502"


def test_throttled_is_retry_never_failure() -> None:
    assert Throttled("APIG.0308", "x").disposition is Disposition.RETRY


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (body(error_code="CBC.0100", error_msg="m"), ("CBC.0100", "m", None)),
        (body(errorCode="X.1", errorMsg="m2"), ("X.1", "m2", None)),
        (body(error={"code": "IAM.0001", "message": "nested"}), ("IAM.0001", "nested", None)),
        (body(error_code="APIG.1", error_msg="g", request_id="r9"), ("APIG.1", "g", "r9")),
        (b"not json", ("418", "not json", None)),
    ],
)
def test_parse_error_body_like_the_sdk(
    payload: bytes, expected: tuple[str, str, str | None]
) -> None:
    assert parse_error_body(418, payload) == expected


def test_request_id_header_wins_over_body() -> None:
    error = map_error(RENEW, 400, body(error_code="CBC.0100", error_msg="m", request_id="b"), "h")
    assert error.request_id == "h"
    assert error.http_status == 400
