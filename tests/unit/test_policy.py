"""The policy file: parsing, errors that name the line and key, the pure rules, reload."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from schemas.commands import Command, parse_command
from service.guardrails.policy import Denial, Policy, PolicyError, PolicyHolder, load_policy

FULL = """\
producers:
  erp-billing:
    types: [renew, set_auto_renew, inquire_price]
    partners: ["*"]
  erp-marketing:
    types: [issue_coupon, inquire_price]
    partners: [p-1]
    customers: [cu-1, cu-2]
renew:
  same_resource_within: 24h
  max_months: 12
issue_coupon:
  max_face_value: "500.00"
  per_customer_per_day: "1000.00"
  per_partner_per_day: "20000.00"
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def renew(period: str = '"period_type":"month","period_num":1', partner: str = "p-1") -> Command:
    return parse_command(
        b'{"command_id":"c-1","type":"renew","partner_id":"%s","payload":{"customer_id":"cu-1",'
        b'"resource_ids":["r-1"],%s}}' % (partner.encode(), period.encode())
    )


def coupon(customers: str = '["cu-1"]', face: str = "10.00", partner: str = "p-1") -> Command:
    return parse_command(
        b'{"command_id":"c-2","type":"issue_coupon","partner_id":"%s","payload":{"quota_id":"q",'
        b'"customer_ids":%s,"face_value":"%s"}}'
        % (partner.encode(), customers.encode(), face.encode())
    )


def test_the_full_example_loads_with_exact_types(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL))

    assert policy.renew.same_resource_within == timedelta(hours=24)
    assert policy.renew.max_months == 12
    assert policy.issue_coupon.max_face_value == Decimal("500.00")
    assert policy.issue_coupon.per_partner_per_day == Decimal("20000.00")
    assert policy.producers is not None
    assert policy.producers["erp-marketing"].customers == ["cu-1", "cu-2"]


def test_json_is_read_too_and_an_empty_file_imposes_nothing(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, '{"renew": {"max_months": 3}}', "p.json"))
    assert policy.renew.max_months == 3
    empty = load_policy(write(tmp_path, ""))
    assert empty.admit(renew('"period_type":"year","period_num":3'), None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "renew:\n  max_months: 12\n  same_resource_within: 24 hours\n",
            "line 3, key renew.same_resource_within",
        ),
        ("issue_coupon:\n  max_face_value: 500.5\n", "line 2, key issue_coupon.max_face_value"),
        ('issue_coupon:\n  max_face_value: "1.001"\n', "at most 2 decimal places"),
        ("renew:\n  max_month: 12\n", "line 2, key renew.max_month"),
        (
            'producers:\n  erp:\n    partners: ["*"]\n    types: [renew, refund]\n',
            "line 4, key producers.erp.types",
        ),
        ('producers:\n  erp:\n    partners: ["*"]\n', "line 2, key producers.erp.types"),
        ("renew: [\n", "line 2: invalid YAML"),
    ],
)
def test_errors_name_the_line_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, text))
    assert expected in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_json_errors_name_the_line_too(tmp_path: Path) -> None:
    text = '{\n  "renew": {\n    "max_months": 0\n  }\n}\n'
    with pytest.raises(PolicyError, match=r"line 3, key renew\.max_months"):
        load_policy(write(tmp_path, text, "p.json"))
    with pytest.raises(PolicyError, match="line 2: invalid JSON"):
        load_policy(write(tmp_path, '{\n  "renew": }', "p.json"))


def test_without_producers_anyone_and_no_one_may_send(tmp_path: Path) -> None:
    policy = Policy()
    assert policy.admit(renew(), None) is None
    assert policy.admit(renew(), "whoever") is None


@pytest.mark.parametrize(
    ("command", "user", "rule"),
    [
        (renew(), None, "producers"),
        (renew(), "stranger", "producers"),
        (renew(), "erp-marketing", "producers.erp-marketing.types"),
        (coupon(partner="p-2"), "erp-marketing", "producers.erp-marketing.partners"),
        (coupon('["cu-1","cu-9"]'), "erp-marketing", "producers.erp-marketing.customers"),
        (coupon(), "erp-billing", "producers.erp-billing.types"),
    ],
)
def test_producers_outside_their_rights_are_denied_naming_the_rule(
    tmp_path: Path, command: Command, user: str | None, rule: str
) -> None:
    policy = load_policy(write(tmp_path, FULL))

    denial = policy.admit(command, user)

    assert isinstance(denial, Denial)
    assert denial.rule == rule
    assert denial.code == "RELAY.POLICY_DENIED"
    assert rule in denial.text()


def test_producers_within_their_rights_pass(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL))
    assert policy.admit(renew(partner="p-9"), "erp-billing") is None
    assert policy.admit(coupon('["cu-1","cu-2"]'), "erp-marketing") is None


def test_the_resolved_partner_is_checked_when_the_command_names_none(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL))
    command = parse_command(
        b'{"command_id":"c","type":"inquire_price","payload":{"customer_id":"cu-1",'
        b'"mode":"renewal","resource_ids":["r"],"period_type":"month","period_num":1}}'
    )
    assert policy.admit(command, "erp-marketing", partner_id="p-1") is None
    denial = policy.admit(command, "erp-marketing", partner_id="p-2")
    assert denial is not None
    assert denial.rule == "producers.erp-marketing.partners"


def test_max_months_counts_a_year_as_twelve(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "renew:\n  max_months: 12\n"))
    assert policy.admit(renew('"period_type":"year","period_num":1'), None) is None
    assert policy.admit(renew('"period_type":"month","period_num":11'), None) is None
    denial = policy.admit(renew('"period_type":"year","period_num":2'), None)
    assert denial is not None
    assert denial.rule == "renew.max_months"


def test_max_face_value_is_per_coupon(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL))
    assert policy.admit(coupon(face="500.00"), "erp-marketing") is None
    denial = policy.admit(coupon(face="500.01"), "erp-marketing")
    assert denial is not None
    assert denial.rule == "issue_coupon.max_face_value"


async def test_reload_swaps_a_valid_file_and_keeps_the_old_policy_on_a_broken_one(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "renew:\n  max_months: 12\n")
    holder = PolicyHolder.load(path)
    first = holder.current

    path.write_text("renew:\n  max_months: 6\n")
    assert await holder.reload() is True
    assert holder.current is not None
    assert holder.current.renew.max_months == 6

    kept = holder.current
    path.write_text("renew:\n  max_months: six\n")
    assert await holder.reload() is False
    assert holder.current is kept
    assert first is not kept


def test_no_file_no_policy() -> None:
    assert PolicyHolder.load(None).current is None
