"""Data sets: the demo one, a --data file, and a state dump loaded back."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import service.sandbox as sandbox_package
from service.sandbox.orders import add_months
from service.sandbox.state import SandboxState, load_dataset
from service.sandbox.wire import dumps, parse_utc
from tests.sandbox import demo_ids as ids


def demo() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (Path(sandbox_package.__file__).parent / "demo-data.json").read_text()
    )
    return data


def test_demo_data_set_has_what_the_docs_promise() -> None:
    state = SandboxState(load_dataset())
    partner = state.partners[ids.PARTNER_ID]
    assert len(partner.access_key) == 20
    assert partner.access_key.isalnum()
    assert partner.access_key.upper() == partner.access_key
    assert len(partner.secret_key) == 40
    granted = [
        c for c in state.customers.values() if c.partner_id == ids.PARTNER_ID and c.agency_granted
    ]
    assert len(granted) >= 3
    assert not state.customers[ids.UMBRELLA].agency_granted
    assert state.customers[ids.STARK].partner_id == ids.OTHER_PARTNER_ID
    assert state.resources["acme-ecs-pending"].pending_order_id == "CS2601051000ACM02"
    assert state.quotas[ids.QUOTA_MAIN].balance == Decimal("10000.00")


def test_a_state_dump_loads_back(tmp_path: Path) -> None:
    state = SandboxState(load_dataset())
    state.resources["acme-ecs-01"].expire_policy = 3
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(state.snapshot()))
    again = SandboxState(load_dataset(dump))
    assert again.snapshot() | {"now": ""} == state.snapshot() | {"now": ""}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["customers"][0].update(partner_id="f" * 32), "unknown partner"),
        (lambda d: d["resources"][0].update(resource_spec_code="nope"), "no price book entry"),
        (lambda d: d["resources"].append(dict(d["resources"][0])), "share an id"),
        (lambda d: d["resources"][1].update(parent_resource_id="missing"), "attached"),
    ],
)
def test_inconsistent_data_sets_are_refused(tmp_path: Path, mutate: Any, message: str) -> None:
    data = demo()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        SandboxState(load_dataset(path))


def test_typos_in_a_data_set_are_refused(tmp_path: Path) -> None:
    data = demo()
    data["partners"][0]["agencyName"] = "x"
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="agencyName"):
        load_dataset(path)


def test_month_arithmetic() -> None:
    assert add_months(parse_utc("2027-01-31T16:00:00Z"), 1) == parse_utc("2027-02-28T16:00:00Z")
    assert add_months(parse_utc("2028-01-31T00:00:00Z"), 1) == parse_utc("2028-02-29T00:00:00Z")
    assert add_months(parse_utc("2027-11-15T00:00:00Z"), 3) == parse_utc("2028-02-15T00:00:00Z")
    assert add_months(parse_utc("2027-06-30T00:00:00Z"), 36) == parse_utc("2030-06-30T00:00:00Z")


def test_json_numbers_are_exact() -> None:
    assert dumps({"a": Decimal("0.1") + Decimal("0.2"), "b": [1, None, True, "é"]}) == (
        b'{"a":0.3,"b":[1,null,true,"\\u00e9"]}'
    )
    assert dumps(Decimal("1E+2")) == b"100"
    with pytest.raises(TypeError):
        dumps(0.1)
