"""Every field rule of the public messages, good and bad, plus the wire encodings.

Commands are built as plain dicts and read through ``parse_command`` (the production path), so
each case exercises exactly what a producer's JSON would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.bss import (
    AssumeRoleReq,
    AutoRenewalResourcesReq,
    CreatePartnerCouponsReq,
    CreatePartnerCouponsResp,
    DemandProductInfo,
    ListOnDemandResourceRatingsResp,
    ListRenewRateOnPeriodResp,
    RenewalResourcesReq,
    RenewalResourcesResp,
    TemporaryCredentialResp,
    parse_wire,
    wire_json,
)
from schemas.commands import (
    COMMAND_ADAPTER,
    CommandBase,
    CommandType,
    InquirePriceCommand,
    IssueCouponCommand,
    RenewCommand,
    SetAutoRenewCommand,
    parse_command,
)
from schemas.common import FailedResource
from schemas.coupon import IssueCouponResult, IssuedCoupon
from schemas.events import (
    EVENT_ADAPTER,
    ErrorInfo,
    InquirePriceEvent,
    InvalidEvent,
    Outcome,
    RenewEvent,
    routing_key,
)
from schemas.price import OnDemandInquiry, PriceItem, PriceResult
from schemas.renew import RenewResult

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)

# --- builders ----------------------------------------------------------------------------------


def envelope(type_: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"command_id": "cmd-1", "type": type_, "payload": payload, **extra}


def renew_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "customer_id": "cust-1",
        "resource_ids": ["ecs-1"],
        "period_type": "month",
        "period_num": 1,
    }
    return {**payload, **changes}


def auto_renew_payload(**changes: Any) -> dict[str, Any]:
    return {"customer_id": "cust-1", "resource_id": "ecs-1", "enabled": True, **changes}


def product(index: int = 0, /, **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": f"p{index}",
        "cloud_service_type": "hws.service.type.ebs",
        "resource_type": "hws.resource.type.volume",
        "resource_spec": "SSD",
        "region": "cn-north-4",
    }
    return {**item, **changes}


def on_demand_product(index: int = 0, /, **changes: Any) -> dict[str, Any]:
    usage = {"usage_factor": "Duration", "usage_value": "1", "usage_measure_id": 4}
    return product(index, **{**usage, **changes})


def period_product(index: int = 0, /, **changes: Any) -> dict[str, Any]:
    return product(index, **{"period_type": "month", "period_num": 1, **changes})


def on_demand_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "customer_id": "cust-1",
        "mode": "on_demand",
        "project_id": "proj-1",
        "products": [on_demand_product()],
    }
    return {**payload, **changes}


def period_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "customer_id": "cust-1",
        "mode": "period",
        "project_id": "proj-1",
        "products": [period_product()],
    }
    return {**payload, **changes}


def renewal_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "customer_id": "cust-1",
        "mode": "renewal",
        "resource_ids": ["ecs-1"],
        "period_type": "year",
        "period_num": 1,
    }
    return {**payload, **changes}


def coupon_payload(**changes: Any) -> dict[str, Any]:
    payload = {"quota_id": "quota-1", "customer_ids": ["cust-1"], "face_value": "10.50"}
    return {**payload, **changes}


def parse(command: dict[str, Any]) -> Any:
    return parse_command(json.dumps(command).encode())


def rejects(command: dict[str, Any], fragment: str = "") -> str:
    with pytest.raises(ValidationError) as info:
        parse(command)
    text = str(info.value)
    assert fragment in text
    return text


# --- envelope ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command_id", ["a", "A-z_0.9:x", "x" * 128, "order:2026-11-24.001", "0123456789"]
)
def test_command_id_accepted(command_id: str) -> None:
    assert parse(envelope("renew", renew_payload(), command_id=command_id)).command_id == command_id


@pytest.mark.parametrize(
    "command_id", ["", "x" * 129, "has space", "slash/no", "ümlaut", "semi;colon", "tab\t"]
)
def test_command_id_rejected(command_id: str) -> None:
    rejects(envelope("renew", renew_payload(), command_id=command_id), "command_id")


def test_command_id_must_be_a_string() -> None:
    rejects(envelope("renew", renew_payload(), command_id=12), "command_id")


@pytest.mark.parametrize(
    ("type_", "payload", "cls"),
    [
        ("renew", renew_payload(), RenewCommand),
        ("set_auto_renew", auto_renew_payload(), SetAutoRenewCommand),
        ("inquire_price", on_demand_payload(), InquirePriceCommand),
        ("issue_coupon", coupon_payload(), IssueCouponCommand),
    ],
)
def test_each_type_selects_its_class(
    type_: str, payload: dict[str, Any], cls: type[CommandBase]
) -> None:
    command = parse(envelope(type_, payload))
    assert isinstance(command, cls)
    assert command.type == CommandType(type_)


@pytest.mark.parametrize("type_", ["renewal", "RENEW", "", None, 3])
def test_unknown_type_rejected(type_: object) -> None:
    rejects(envelope("renew", renew_payload(), type=type_), "type")


def test_missing_type_rejected() -> None:
    command = envelope("renew", renew_payload())
    del command["type"]
    rejects(command, "type")


def test_priority_is_high_normal_or_low_and_normal_by_default() -> None:
    assert (
        parse_command(json.dumps(envelope("renew", renew_payload())).encode()).priority == "normal"
    )
    for value in ("high", "normal", "low"):
        body = json.dumps(envelope("renew", renew_payload(), priority=value)).encode()
        assert parse_command(body).priority == value
    rejects(envelope("renew", renew_payload(), priority="urgent"), "priority")
    rejects(envelope("renew", renew_payload(), priority=1), "priority")


def test_payload_of_another_type_rejected() -> None:
    rejects(envelope("renew", coupon_payload()), "customer_id")


@pytest.mark.parametrize(
    "command",
    [
        envelope("renew", renew_payload(), urgency=1),
        envelope("renew", renew_payload(auto_pay=True, autopay=False)),
        envelope("issue_coupon", coupon_payload(face_vaule="10")),
        envelope("inquire_price", on_demand_payload(products=[on_demand_product(colour="red")])),
    ],
)
def test_extra_fields_rejected(command: dict[str, Any]) -> None:
    rejects(command, "Extra inputs are not permitted")


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"[]", b"null", b'"renew"', b'{"a": NaN}'])
def test_unreadable_bodies_raise_validation_error(body: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_command(body)


def test_optional_envelope_fields() -> None:
    command = parse(envelope("renew", renew_payload(), partner_id="partner-1"))
    assert (command.partner_id, command.deadline, command.issued_at) == ("partner-1", None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T08:00:00Z", NOW),
        ("2026-11-24T16:00:00+08:00", NOW),
        ("2026-11-24T03:00:00-05:00", NOW),
    ],
)
def test_deadline_normalised_to_utc(text: str, expected: datetime) -> None:
    command = parse(envelope("renew", renew_payload(), deadline=text, issued_at=text))
    assert command.deadline == expected
    assert command.deadline.tzinfo is UTC
    assert command.issued_at == expected


@pytest.mark.parametrize("text", ["2026-11-24T08:00:00", "2026-11-24", "tomorrow", ""])
def test_deadline_without_offset_rejected(text: str) -> None:
    rejects(envelope("renew", renew_payload(), deadline=text), "deadline")


def test_timestamps_serialise_with_z() -> None:
    command = parse(envelope("renew", renew_payload(), deadline="2026-11-24T16:00:00.5+08:00"))
    assert (
        json.loads(COMMAND_ADAPTER.dump_json(command))["deadline"] == "2026-11-24T08:00:00.500000Z"
    )


def test_commands_are_immutable() -> None:
    command = parse(envelope("renew", renew_payload()))
    with pytest.raises(ValidationError):
        command.command_id = "other"


def test_type_defaults_in_python_but_is_required_in_the_schema() -> None:
    command = RenewCommand.model_validate({"command_id": "c", "payload": renew_payload()})
    assert command.type == "renew"
    assert "type" in RenewCommand.model_json_schema()["required"]


# --- renew -------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 10])
def test_renew_resource_count_accepted(count: int) -> None:
    ids = [f"ecs-{i}" for i in range(count)]
    assert parse(envelope("renew", renew_payload(resource_ids=ids))).payload.resource_ids == ids


@pytest.mark.parametrize(
    ("resource_ids", "fragment"),
    [
        ([], "at least 1 item"),
        ([f"ecs-{i}" for i in range(11)], "at most 10 items"),
        (["ecs-1", "ecs-1"], "'ecs-1' is listed twice"),
        ([""], "at least 1 character"),
        (["x" * 65], "at most 64 characters"),
        ("ecs-1", "valid list"),
    ],
)
def test_renew_resource_ids_rejected(resource_ids: object, fragment: str) -> None:
    rejects(envelope("renew", renew_payload(resource_ids=resource_ids)), fragment)


@pytest.mark.parametrize(
    ("period_type", "period_num"),
    [("month", 1), ("month", 11), ("year", 1), ("year", 3)],
)
def test_renew_period_accepted(period_type: str, period_num: int) -> None:
    payload = renew_payload(period_type=period_type, period_num=period_num)
    assert parse(envelope("renew", payload)).payload.period_num == period_num


@pytest.mark.parametrize(
    ("period_type", "period_num", "fragment"),
    [
        ("month", 0, "greater than or equal to 1"),
        ("month", 12, "period_type 'month' must be between 1 and 11, got 12"),
        ("year", 0, "greater than or equal to 1"),
        ("year", 4, "period_type 'year' must be between 1 and 3, got 4"),
        ("week", 1, "period_type"),
        ("month", "3", "valid integer"),
        ("month", 1.5, "valid integer"),
        ("month", True, "valid integer"),
    ],
)
def test_renew_period_rejected(period_type: str, period_num: object, fragment: str) -> None:
    payload = renew_payload(period_type=period_type, period_num=period_num)
    rejects(envelope("renew", payload), fragment)


def test_renew_auto_pay_defaults_to_true_and_must_be_a_bool() -> None:
    assert parse(envelope("renew", renew_payload())).payload.auto_pay is True
    assert parse(envelope("renew", renew_payload(auto_pay=False))).payload.auto_pay is False
    rejects(envelope("renew", renew_payload(auto_pay="false")), "valid boolean")


@pytest.mark.parametrize("customer_id", ["", "x" * 65])
def test_customer_id_length_rejected(customer_id: str) -> None:
    rejects(envelope("renew", renew_payload(customer_id=customer_id)), "customer_id")


def test_customer_id_property() -> None:
    assert parse(envelope("renew", renew_payload())).customer_id == "cust-1"
    assert parse(envelope("set_auto_renew", auto_renew_payload())).customer_id == "cust-1"
    assert parse(envelope("inquire_price", renewal_payload())).customer_id == "cust-1"


# --- set_auto_renew ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"times": 0},
        {"times": 99},
        {"period_type": "year", "times": 5},
        {"enabled": False},
        {"enabled": False, "period_type": "month"},
    ],
)
def test_auto_renew_accepted(changes: dict[str, Any]) -> None:
    payload = parse(envelope("set_auto_renew", auto_renew_payload(**changes))).payload
    assert payload.times == changes.get("times")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"times": -1}, "greater than or equal to 0"),
        ({"times": 100}, "less than or equal to 99"),
        ({"enabled": False, "times": 0}, "times is only allowed with enabled: true"),
        ({"enabled": "yes"}, "valid boolean"),
        ({"period_type": "MONTH"}, "period_type"),
        ({"resource_id": "x" * 65}, "at most 64 characters"),
    ],
)
def test_auto_renew_rejected(changes: dict[str, Any], fragment: str) -> None:
    rejects(envelope("set_auto_renew", auto_renew_payload(**changes)), fragment)


# --- inquire_price -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_fn", "make"),
    [(on_demand_payload, on_demand_product), (period_payload, period_product)],
)
@pytest.mark.parametrize("count", [1, 100])
def test_product_count_accepted(payload_fn: Any, make: Any, count: int) -> None:
    products = [make(i) for i in range(count)]
    command = parse(envelope("inquire_price", payload_fn(products=products)))
    assert len(command.payload.products) == count


@pytest.mark.parametrize(
    ("payload_fn", "make"),
    [(on_demand_payload, on_demand_product), (period_payload, period_product)],
)
@pytest.mark.parametrize(
    ("count", "fragment"), [(0, "at least 1 item"), (101, "at most 100 items")]
)
def test_product_count_rejected(payload_fn: Any, make: Any, count: int, fragment: str) -> None:
    products = [make(i) for i in range(count)]
    rejects(envelope("inquire_price", payload_fn(products=products)), fragment)


def test_product_ids_must_be_unique() -> None:
    products = [on_demand_product(1), on_demand_product(2), on_demand_product(1)]
    rejects(envelope("inquire_price", on_demand_payload(products=products)), "'p1' is used twice")


@pytest.mark.parametrize(
    ("size", "unit", "ok"),
    [(None, None, True), (40, 17, True), (40, None, False), (None, 17, False), (0, 17, False)],
)
def test_resource_size_needs_its_unit(size: int | None, unit: int | None, ok: bool) -> None:
    extra = {k: v for k, v in (("resource_size", size), ("size_measure_id", unit)) if v is not None}
    command = envelope("inquire_price", period_payload(products=[period_product(**extra)]))
    if ok:
        assert parse(command).payload.products[0].resource_size == size
    else:
        rejects(command, "resource_size")


@pytest.mark.parametrize(
    "field", ["id", "cloud_service_type", "resource_type", "resource_spec", "region"]
)
def test_product_required_strings(field: str) -> None:
    rejects(envelope("inquire_price", period_payload(products=[period_product(**{field: ""})])))
    missing = period_product()
    del missing[field]
    rejects(envelope("inquire_price", period_payload(products=[missing])), "Field required")


def test_subscription_num_defaults_to_one_and_must_be_positive() -> None:
    command = parse(envelope("inquire_price", period_payload()))
    assert command.payload.products[0].subscription_num == 1
    bad = period_payload(products=[period_product(subscription_num=0)])
    rejects(envelope("inquire_price", bad), "subscription_num")


@pytest.mark.parametrize("value", ["0", "-1", 0, "NaN", "abc", "1.0000000000000001"])
def test_usage_value_rejected(value: object) -> None:
    bad = on_demand_payload(products=[on_demand_product(usage_value=value)])
    rejects(envelope("inquire_price", bad), "usage_value")


def test_usage_value_json_number_keeps_its_digits() -> None:
    body = json.dumps(envelope("inquire_price", on_demand_payload())).replace('"1"', "0.10")
    payload = parse_command(body.encode()).payload
    assert isinstance(payload, OnDemandInquiry)
    product_ = payload.products[0]
    assert str(product_.usage_value) == "0.10"
    assert json.loads(product_.model_dump_json())["usage_value"] == "0.10"


@pytest.mark.parametrize("period_type", ["day", "month", "year", "hour"])
def test_period_product_period_types(period_type: str) -> None:
    products = [period_product(period_type=period_type, period_num=24)]
    assert parse(envelope("inquire_price", period_payload(products=products)))


@pytest.mark.parametrize(
    "changes", [{"period_type": "week"}, {"period_num": 0}, {"period_type": 2}]
)
def test_period_product_rejected(changes: dict[str, Any]) -> None:
    products = [period_product(**changes)]
    rejects(envelope("inquire_price", period_payload(products=products)), "products")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"period_type": "month", "period_num": 12}, "between 1 and 11"),
        ({"period_type": "year", "period_num": 4}, "between 1 and 3"),
        ({"resource_ids": []}, "at least 1 item"),
        ({"resource_ids": [f"r{i}" for i in range(11)]}, "at most 10 items"),
        ({"resource_ids": ["r", "r"]}, "listed twice"),
        ({"include_related": "yes"}, "valid boolean"),
        ({"project_id": "proj-1"}, "Extra inputs"),
    ],
)
def test_renewal_inquiry_rejected(changes: dict[str, Any], fragment: str) -> None:
    rejects(envelope("inquire_price", renewal_payload(**changes)), fragment)


def test_renewal_inquiry_defaults() -> None:
    payload = parse(envelope("inquire_price", renewal_payload())).payload
    assert payload.include_related is False


@pytest.mark.parametrize("mode", ["spot", "", None])
def test_unknown_inquiry_mode_rejected(mode: object) -> None:
    rejects(envelope("inquire_price", on_demand_payload(mode=mode)), "mode")


def test_inquiry_mode_selects_its_fields() -> None:
    payload = parse(envelope("inquire_price", on_demand_payload())).payload
    assert isinstance(payload, OnDemandInquiry)
    rejects(envelope("inquire_price", on_demand_payload(products=[period_product()])), "usage")


# --- issue_coupon ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 100])
def test_coupon_customer_count_accepted(count: int) -> None:
    ids = [f"c{i}" for i in range(count)]
    command = parse(envelope("issue_coupon", coupon_payload(customer_ids=ids)))
    assert command.customer_id == ("c0" if count == 1 else None)


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        ([], "at least 1 item"),
        ([f"c{i}" for i in range(101)], "at most 100 items"),
        (["a", "b", "a"], "'a' is listed twice"),
    ],
)
def test_coupon_customers_rejected(ids: list[str], fragment: str) -> None:
    rejects(envelope("issue_coupon", coupon_payload(customer_ids=ids)), fragment)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"10.50"', "10.50"),
        ('"0.01"', "0.01"),
        ('"100"', "100"),
        ("10.5", "10.5"),
        ("10.10", "10.10"),
        ("7", "7"),
        ('"1234567890123.45"', "1234567890123.45"),
        ('"10.500"', "10.500"),
    ],
)
def test_face_value_accepted(raw: str, expected: str) -> None:
    body = json.dumps(envelope("issue_coupon", coupon_payload(face_value="X"))).replace('"X"', raw)
    command = parse_command(body.encode())
    assert isinstance(command, IssueCouponCommand)
    assert str(command.payload.face_value) == expected
    assert json.loads(COMMAND_ADAPTER.dump_json(command))["payload"]["face_value"] == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "greater than 0"),
        ("-5", "greater than 0"),
        ("10.123", "at most 2 decimal places"),
        ("0.001", "at most 2 decimal places"),
        ("12345678901234.56", "at most 15 significant digits"),
        ("Infinity", "finite"),
        ("ten", "valid decimal"),
    ],
)
def test_face_value_rejected(value: str, fragment: str) -> None:
    rejects(envelope("issue_coupon", coupon_payload(face_value=value)), fragment)


@pytest.mark.parametrize("field", ["cloud_service_types", "product_ids"])
def test_coupon_restriction_lists_at_most_ten(field: str) -> None:
    ten = [f"v{i}" for i in range(10)]
    assert getattr(parse(envelope("issue_coupon", coupon_payload(**{field: ten}))).payload, field)
    rejects(envelope("issue_coupon", coupon_payload(**{field: [*ten, "v10"]})), "at most 10 items")


@pytest.mark.parametrize(("length", "ok"), [(0, True), (200, True), (201, False)])
def test_memo_length(length: int, ok: bool) -> None:
    command = envelope("issue_coupon", coupon_payload(memo="m" * length))
    if ok:
        assert parse(command).payload.memo == "m" * length
    else:
        rejects(command, "at most 200 characters")


@pytest.mark.parametrize(
    ("valid", "expire", "ok"),
    [
        ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", True),
        ("2026-12-01T08:00:00+08:00", "2026-12-01T00:00:01Z", True),
        ("2027-01-01T00:00:00Z", "2027-01-01T00:00:00Z", False),
        ("2027-01-02T00:00:00Z", "2027-01-01T00:00:00Z", False),
    ],
)
def test_coupon_validity_window(valid: str, expire: str, ok: bool) -> None:
    command = envelope("issue_coupon", coupon_payload(valid_time=valid, expire_time=expire))
    if ok:
        assert parse(command).payload.valid_time.tzinfo is UTC
    else:
        rejects(command, "valid_time must be earlier than expire_time")


def test_coupon_expire_time_needs_an_offset() -> None:
    rejects(envelope("issue_coupon", coupon_payload(expire_time="2027-01-01T00:00:00")))


def test_quota_id_length() -> None:
    rejects(envelope("issue_coupon", coupon_payload(quota_id="q" * 65)), "quota_id")


# --- money -------------------------------------------------------------------------------------


def price_result(amount: object = "10.50") -> PriceResult:
    return PriceResult.model_validate(
        {
            "currency": "CNY",
            "amount": amount,
            "official_amount": "12.00",
            "discount_amount": "1.50",
            "items": [{"id": "p0", "amount": amount}],
        }
    )


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("10.50", "10.50"),
        (Decimal("10.50"), "10.50"),
        (Decimal("1E+2"), "100"),
        ("0.000001", "0.000001"),
        (7, "7"),
    ],
)
def test_money_round_trips_as_string(amount: object, text: str) -> None:
    dumped = price_result(amount).model_dump_json()
    assert json.loads(dumped)["amount"] == text
    assert f'"amount":"{text}"' in dumped
    again = PriceResult.model_validate_json(dumped)
    assert again.amount == Decimal(text)
    assert isinstance(again.amount, Decimal)


def test_money_is_decimal_in_python_mode() -> None:
    assert price_result().model_dump()["amount"] == Decimal("10.50")


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "ten"])
def test_money_rejects_non_numbers(amount: str) -> None:
    with pytest.raises(ValidationError):
        price_result(amount)


def test_money_schema_is_a_decimal_string() -> None:
    schema = PriceResult.model_json_schema(mode="serialization")["properties"]["amount"]
    assert schema["type"] == "string"
    assert "pattern" in schema


# --- BSS wire bodies ---------------------------------------------------------------------------


def test_coupon_request_sends_face_value_as_a_number() -> None:
    request = CreatePartnerCouponsReq(
        quota_id="q", customer_ids=["c1"], face_value=Decimal("10.50"), memo="relay:cmd-1"
    )
    body = wire_json(request)
    assert b'"face_value":10.5' in body
    assert b"null" not in body
    assert b" " not in body
    assert json.loads(body, parse_float=Decimal)["face_value"] == Decimal("10.50")


@pytest.mark.parametrize("value", ["0.01", "1234567890123.45", "99999999999.99", "0.1"])
def test_wire_decimal_is_exact(value: str) -> None:
    request = CreatePartnerCouponsReq(quota_id="q", customer_ids=["c"], face_value=Decimal(value))
    sent = json.loads(wire_json(request), parse_float=Decimal)["face_value"]
    assert sent == Decimal(value)


def test_wire_decimal_refuses_what_a_double_cannot_carry() -> None:
    with pytest.raises(ValidationError, match="at most 15 significant digits"):
        DemandProductInfo(
            id="p",
            cloud_service_type="s",
            resource_type="r",
            resource_spec="x",
            region="cn-north-4",
            usage_factor="Duration",
            usage_value=Decimal("0.1234567890123456"),
            usage_measure_id=4,
            subscription_num=1,
        )


def test_renewal_request_body() -> None:
    body = RenewalResourcesReq(
        resource_ids=["ecs-0001"], period_type=2, period_num=1, is_auto_pay=1
    )
    assert (
        wire_json(body)
        == b'{"resource_ids":["ecs-0001"],"period_type":2,"period_num":1,"is_auto_pay":1}'
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: RenewalResourcesReq(resource_ids=["r"], period_type=1, period_num=1),
        lambda: AutoRenewalResourcesReq(auto_renew_times=100),
        lambda: RenewalResourcesReq.model_validate(
            {"resource_ids": ["r"], "period_type": 2, "period_num": 1, "expire_policy": 0}
        ),
    ],
)
def test_request_bodies_validate(build: Any) -> None:
    with pytest.raises(ValidationError):
        build()


def test_empty_auto_renew_body_is_an_empty_object() -> None:
    assert wire_json(AutoRenewalResourcesReq()) == b"{}"


def test_parse_wire_keeps_decimals_exact() -> None:
    body = (
        b'{"amount": 0.1000000000000000055511151231257827, "discount_amount": 1.10,'
        b' "official_website_amount": "3.30", "measure_id": 1, "currency": "CNY",'
        b' "product_rating_results": [{"id": "p0", "amount": 12.345678}], "new_field": true}'
    )
    answer = parse_wire(ListOnDemandResourceRatingsResp, body)
    assert answer.amount == Decimal("0.1000000000000000055511151231257827")
    assert str(answer.discount_amount) == "1.10"
    assert answer.official_website_amount == Decimal("3.30")
    assert answer.product_rating_results[0].amount == Decimal("12.345678")


def test_renewal_quote_amounts_are_strings() -> None:
    body = (
        b'{"currency": "CNY", "renew_inquiry_results": [{"resource_id": "r", "amount": "8.80"}],'
        b' "official_website_rating_result": {"official_website_amount": "10.00"},'
        b' "optional_discount_rating_results": [{"amount": "8.80", "best_offer": 1}]}'
    )
    answer = parse_wire(ListRenewRateOnPeriodResp, body)
    assert answer.renew_inquiry_results[0].amount == Decimal("8.80")
    assert answer.optional_discount_rating_results[0].amount == Decimal("8.80")


@pytest.mark.parametrize("body", [b"", b"  ", b"{}"])
def test_minimal_answers_parse(body: bytes) -> None:
    assert parse_wire(RenewalResourcesResp, body) == RenewalResourcesResp()
    assert parse_wire(CreatePartnerCouponsResp, body).coupon_infos == []


def test_partial_coupon_answer() -> None:
    body = (
        b'{"coupon_infos": [{"id": "c1", "coupon_id": "CP1"}],'
        b' "error_details": [{"error_code": "CBC.99000013", "id": "c2"}]}'
    )
    answer = parse_wire(CreatePartnerCouponsResp, body)
    assert answer.coupon_infos[0].coupon_id == "CP1"
    assert (answer.error_details[0].error_code, answer.error_details[0].error_msg) == (
        "CBC.99000013",
        "",
    )


def test_assume_role_body() -> None:
    body = AssumeRoleReq.build(
        agency_name="partner-agency", domain_id="cust-1", duration_seconds=3600
    )
    assert json.loads(wire_json(body)) == {
        "auth": {
            "identity": {
                "methods": ["assume_role"],
                "assume_role": {
                    "agency_name": "partner-agency",
                    "domain_id": "cust-1",
                    "duration_seconds": 3600,
                },
            }
        }
    }


def test_temporary_credential_parses_and_hides_secrets() -> None:
    body = (
        b'{"credential": {"access": "AK", "secret": "SK-SECRET", "securitytoken": "TOKEN-X",'
        b' "expires_at": "2026-11-24T09:00:00.000000Z"}}'
    )
    credential = parse_wire(TemporaryCredentialResp, body).credential
    assert credential.expires_at == datetime(2026, 11, 24, 9, tzinfo=UTC)
    assert "SK-SECRET" not in repr(credential)
    assert "TOKEN-X" not in str(credential)


# --- events ------------------------------------------------------------------------------------

ERROR = ErrorInfo(code="CBC.0100", message="parameter error", retryable=False, http_status=400)
RESULT = RenewResult(order_ids=["o1"])


def renew_event(outcome: Outcome, **changes: Any) -> RenewEvent:
    fields: dict[str, Any] = {
        "event_id": "ev-1",
        "command_id": "cmd-1",
        "outcome": outcome,
        "occurred_at": NOW,
        "attempts": 1,
        **changes,
    }
    return RenewEvent.model_validate(fields)


@pytest.mark.parametrize(
    ("outcome", "result", "error"),
    [
        (Outcome.SUCCEEDED, RESULT, None),
        (Outcome.PARTIAL, RESULT, None),
        (Outcome.FAILED, None, ERROR),
        (Outcome.REJECTED, None, ERROR),
        (Outcome.UNKNOWN, None, ERROR),
    ],
)
def test_event_outcome_rules_accept(
    outcome: Outcome, result: BaseModel | None, error: ErrorInfo | None
) -> None:
    event = renew_event(outcome, result=result, error=error)
    assert routing_key(event) == f"renew.{outcome.value}"


@pytest.mark.parametrize(
    ("outcome", "result", "error", "fragment"),
    [
        (Outcome.SUCCEEDED, None, None, "result is required"),
        (Outcome.PARTIAL, None, None, "result is required"),
        (Outcome.SUCCEEDED, RESULT, ERROR, "error is not allowed"),
        (Outcome.FAILED, None, None, "error is required"),
        (Outcome.REJECTED, None, None, "error is required"),
        (Outcome.UNKNOWN, None, None, "error is required"),
        (Outcome.FAILED, RESULT, ERROR, "result is not allowed"),
        (Outcome.UNKNOWN, RESULT, ERROR, "result is not allowed"),
    ],
)
def test_event_outcome_rules_reject(
    outcome: Outcome, result: BaseModel | None, error: ErrorInfo | None, fragment: str
) -> None:
    with pytest.raises(ValidationError, match=fragment):
        renew_event(outcome, result=result, error=error)


def test_event_attempts_not_negative() -> None:
    with pytest.raises(ValidationError, match="attempts"):
        renew_event(Outcome.FAILED, error=ERROR, attempts=-1)


def test_event_result_is_typed_per_type() -> None:
    with pytest.raises(ValidationError):
        renew_event(Outcome.SUCCEEDED, result=IssueCouponResult(coupons=[]))


def test_invalid_event_is_always_rejected() -> None:
    event = InvalidEvent(event_id="e", command_id=None, occurred_at=NOW, attempts=0, error=ERROR)
    assert routing_key(event) == "invalid.rejected"
    with pytest.raises(ValidationError):
        InvalidEvent.model_validate(
            {
                "event_id": "e",
                "command_id": None,
                "outcome": "failed",
                "occurred_at": NOW,
                "attempts": 0,
                "error": ERROR,
            }
        )


def test_event_round_trip_through_json() -> None:
    event = InquirePriceEvent(
        event_id="ev-2",
        command_id="cmd-2",
        outcome=Outcome.PARTIAL,
        occurred_at=NOW,
        attempts=2,
        duplicate=True,
        customer_id="cust-1",
        result=PriceResult(
            currency="CNY",
            amount=Decimal("8.80"),
            official_amount=Decimal("10.00"),
            discount_amount=Decimal("1.20"),
            items=[PriceItem(id="r1", amount=Decimal("8.80"))],
            failed_resources=[FailedResource(resource_id="r2", code="CBC.30050009", message="x")],
        ),
    )
    wire = json.loads(event.model_dump_json())
    assert wire["result"]["amount"] == "8.80"
    assert wire["occurred_at"] == "2026-11-24T08:00:00Z"
    assert wire["error"] is None
    assert wire["partner_id"] is None
    assert EVENT_ADAPTER.validate_json(event.model_dump_json()) == event


def test_events_are_immutable() -> None:
    event = renew_event(Outcome.SUCCEEDED, result=RESULT)
    with pytest.raises(ValidationError):
        event.outcome = Outcome.FAILED  # type: ignore[misc]  # frozen: the point of the test


def test_event_adapter_picks_the_class_by_type() -> None:
    event = EVENT_ADAPTER.validate_python(
        {
            "event_id": "e",
            "command_id": "c",
            "type": "issue_coupon",
            "outcome": "succeeded",
            "occurred_at": "2026-11-24T08:00:00Z",
            "attempts": 1,
            "result": {"coupons": [{"customer_id": "a", "coupon_id": "b"}]},
        }
    )
    assert event.result == IssueCouponResult(coupons=[IssuedCoupon(customer_id="a", coupon_id="b")])
    assert routing_key(event) == "issue_coupon.succeeded"
