"""The audit view over the command store: filters, what is shown, table and JSON lines."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.commands import parse_command
from service.cli import main
from service.messages.fingerprint import claim_details
from service.ops.audit import AuditFilter, read_audit, render_table
from service.store import open_store
from service.store.types import CommandStore
from tests.store.conftest import START, FakeClock

LEASE = timedelta(seconds=30)


def renew(command_id: str, customer: str = "cu-1", partner: str = "p-1") -> bytes:
    return json.dumps(
        {
            "command_id": command_id,
            "type": "renew",
            "partner_id": partner,
            "payload": {
                "customer_id": customer,
                "resource_ids": ["r-1", "r-2"],
                "period_type": "year",
                "period_num": 1,
            },
        }
    ).encode()


def coupon(command_id: str, customers: list[str], partner: str = "p-1") -> bytes:
    return json.dumps(
        {
            "command_id": command_id,
            "type": "issue_coupon",
            "partner_id": partner,
            "payload": {"quota_id": "q", "customer_ids": customers, "face_value": "12.50"},
        }
    ).encode()


async def put(
    store: CommandStore, body: bytes, user: str | None, event: dict[str, object] | None = None
) -> None:
    command = parse_command(body)
    await store.claim(
        command.command_id, command.type, owner="a", lease=LEASE, **claim_details(command, user)
    )
    if event is not None:
        await store.finish(command.command_id, owner="a", event=json.dumps(event).encode())


async def fill(store: CommandStore, clock: FakeClock) -> None:
    await put(
        store,
        renew("r-1"),
        "erp-billing",
        {"type": "renew", "outcome": "succeeded", "result": {"order_ids": ["o-1"]}},
    )
    clock.advance(timedelta(hours=1))
    await put(
        store,
        coupon("c-1", ["cu-1", "cu-2"]),
        "erp-marketing",
        {
            "type": "issue_coupon",
            "outcome": "partial",
            "result": {
                "coupons": [{"customer_id": "cu-1", "coupon_id": "cp-1"}],
                "failed_customers": [{"customer_id": "cu-2", "code": "CBC.1", "message": "x"}],
            },
        },
    )
    clock.advance(timedelta(hours=1))
    await put(store, renew("r-2", customer="cu-3", partner="p-2"), "erp-billing")
    # not money-moving: never listed
    price = parse_command(
        b'{"command_id":"q-1","type":"inquire_price","payload":{"customer_id":"cu-1",'
        b'"mode":"renewal","resource_ids":["r"],"period_type":"month","period_num":1}}'
    )
    await store.claim("q-1", "inquire_price", owner="a", lease=LEASE, **claim_details(price, "x"))


async def test_the_audit_lists_who_asked_what_and_what_happened(
    store: CommandStore, clock: FakeClock
) -> None:
    await fill(store, clock)

    entries = await read_audit(store, AuditFilter())

    assert [e.command_id for e in entries] == ["r-1", "c-1", "r-2"]
    renewal, coupons, open_one = entries
    assert (renewal.requested_by, renewal.partner_id, renewal.customer_ids) == (
        "erp-billing",
        "p-1",
        ["cu-1"],
    )
    assert (renewal.period_months, renewal.outcome, renewal.order_ids) == (12, "succeeded", ["o-1"])
    assert renewal.requested_at == START
    assert str(coupons.amount) == "25.00"
    assert (coupons.outcome, coupons.coupon_ids) == ("partial", ["cp-1"])
    assert coupons.customer_ids == ["cu-1", "cu-2"]
    assert (open_one.outcome, open_one.status) == (None, "received")
    table = render_table(entries)
    assert "erp-marketing" in table
    assert "2 x 12.50 = 25.00" in table
    assert "1 year(s) of r-1, r-2" in table
    assert "none stored (received)" in table


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (AuditFilter(partners=("p-2",)), ["r-2"]),
        (AuditFilter(users=("erp-marketing",)), ["c-1"]),
        (AuditFilter(customers=("cu-2",)), ["c-1"]),
        (AuditFilter(customers=("cu-1",), limit=1), ["r-1"]),
        (AuditFilter(types=("issue_coupon",)), ["c-1"]),
        (AuditFilter(since=START + timedelta(minutes=30)), ["c-1", "r-2"]),
        (AuditFilter(until=START + timedelta(minutes=90)), ["r-1", "c-1"]),
        (AuditFilter(limit=2), ["r-1", "c-1"]),
    ],
)
async def test_filters(
    store: CommandStore, clock: FakeClock, where: AuditFilter, expected: list[str]
) -> None:
    await fill(store, clock)

    assert [e.command_id for e in await read_audit(store, where)] == expected


async def test_the_verb_prints_json_lines(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    async with open_store(url, clock=clock) as store:
        await fill(store, clock)

    # the verb runs its own event loop: off this test's loop
    code = await asyncio.to_thread(
        main, ["audit", "--store-url", url, "--json", "--user", "erp-billing"]
    )

    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["command_id"] for line in lines] == ["r-1", "r-2"]
    assert lines[0]["requested_by"] == "erp-billing"
    assert lines[0]["requested_at"] == START.isoformat()
