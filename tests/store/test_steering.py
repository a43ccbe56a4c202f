"""The steering tables (``service.store.steering``) on both backends, with the same statements."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from service.store import open_store
from service.store.steering import (
    AuditRecord,
    BucketReport,
    LineDelta,
    Publication,
    WaitingEntry,
)
from service.store.types import CommandStore

T0 = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[CommandStore]:
    """On the system clock: ``:now`` is the server's clock on PostgreSQL, whatever a test
    injects, and rows are compared with it."""
    async with open_store(store_url) as opened:
        yield opened


def entry(
    command_id: str, *, since: datetime, priority: str = "normal", **kw: object
) -> WaitingEntry:
    fields: dict[str, object] = {
        "state": "waiting",
        "api": "list_rate_on_period_detail",
        "kind": "customer",
        "key": "c-1",
        "priority": priority,
        "expected_at": None,
        "until": datetime.now(UTC) + timedelta(minutes=5),
    }
    fields.update(kw)
    return WaitingEntry(command_id=command_id, since=since, **fields)  # type: ignore[arg-type]


def publication(owner: str, **kw: object) -> Publication:
    return Publication(
        owner=owner,
        egress="default",
        started_at=T0,
        renew_until=datetime.now(UTC) + timedelta(seconds=10),
        **kw,  # type: ignore[arg-type]
    )


async def test_a_limit_and_its_audit_entry_are_written_together(store: CommandStore) -> None:
    steering = store.steering
    await steering.set_limit("renewal_resources", "customer", "c-1", 2.5, actor="alice")
    await steering.set_limit("renewal_resources", "customer", "c-1", 3.0, actor="bob")
    await steering.set_limit("list_rate_on_period_detail", "all", "", 7.0, actor="alice")

    limits = await steering.limits()
    assert [(r["api"], r["kind"], r["key"], r["rate"], r["set_by"]) for r in limits] == [
        ("list_rate_on_period_detail", "all", "", 7.0, "alice"),
        ("renewal_resources", "customer", "c-1", 3.0, "bob"),
    ]
    assert all(r["set_at"].tzinfo is not None for r in limits)

    await steering.reset_limit("renewal_resources", "customer", "c-1", actor="carol")
    assert [r["api"] for r in await steering.limits()] == ["list_rate_on_period_detail"]

    audit = await steering.audit(command_id=None, customer_id=None, limit=10)
    assert [(r["actor"], r["action"]) for r in audit] == [
        ("carol", "quota_reset"),
        ("alice", "quota_set"),
        ("bob", "quota_set"),
        ("alice", "quota_set"),
    ]
    assert json.loads(audit[0]["detail"]) == {
        "api": "renewal_resources",
        "customer": "c-1",
        "rate": None,
    }
    assert json.loads(audit[1]["detail"]) == {"api": "list_rate_on_period_detail", "rate": 7.0}
    by_customer = await steering.audit(command_id=None, customer_id="c-1", limit=10)
    assert [r["actor"] for r in by_customer] == ["carol", "bob", "alice"]


async def test_pauses_per_customer_and_operation(store: CommandStore) -> None:
    steering = store.steering
    await steering.pause("c-1", None, actor="alice")
    await steering.pause("c-2", "renewal_resources", actor="bob")
    await steering.pause("c-2", "renewal_resources", actor="bob")  # idempotent

    assert [(r["customer"], r["api"], r["set_by"]) for r in await steering.pauses()] == [
        ("c-1", "", "alice"),
        ("c-2", "renewal_resources", "bob"),
    ]
    await steering.resume("c-1", None, actor="carol")
    assert [r["customer"] for r in await steering.pauses()] == ["c-2"]
    actions = [
        r["action"] for r in await steering.audit(command_id=None, customer_id=None, limit=9)
    ]
    assert actions == ["resume", "pause", "pause", "pause"]


async def test_the_audit_filters_by_command_and_keeps_the_detail(store: CommandStore) -> None:
    await store.steering.record(
        AuditRecord("replay", "alice", command_id="cmd-1", customer_id="c-1", detail={"n": 1})
    )
    await store.steering.record(AuditRecord("replay", "alice", command_id="cmd-2"))
    rows = await store.steering.audit(command_id="cmd-1", customer_id=None, limit=10)
    assert [(r["command_id"], json.loads(r["detail"])) for r in rows] == [("cmd-1", {"n": 1})]


async def test_published_waiting_rows_give_a_position_by_priority_then_age(
    store: CommandStore,
) -> None:
    steering = store.steering
    await steering.publish(
        publication(
            "r-1",
            waiting=[
                entry("a", since=T0),
                entry("b", since=T0 + timedelta(seconds=1)),
                entry("other-bucket", since=T0, key="c-2"),
            ],
        )
    )
    await steering.publish(
        publication(
            "r-2",
            waiting=[
                entry("c", since=T0 + timedelta(seconds=2), priority="high"),
                entry("d", since=T0 - timedelta(seconds=5), priority="low"),
            ],
        )
    )
    ahead = {cid: (await steering.waiting_for(cid) or {}).get("ahead") for cid in "abcd"}
    assert ahead == {"c": 0, "a": 1, "b": 2, "d": 3}
    assert len(await steering.waiting()) == 5
    assert await steering.waiting_for("unknown") is None

    # gone from r-1; r-2 cannot remove r-1's rows
    await steering.publish(publication("r-2", gone=["a"]))
    assert await steering.waiting_for("a") is not None
    await steering.publish(publication("r-1", gone=["a"]))
    assert await steering.waiting_for("a") is None


async def test_stale_rows_are_not_read_and_a_replica_that_stops_takes_its_rows(
    store: CommandStore,
) -> None:
    steering = store.steering
    past = datetime.now(UTC) - timedelta(seconds=1)
    await steering.publish(
        Publication(
            owner="r-1",
            egress="e",
            started_at=T0,
            renew_until=past,
            waiting=[entry("stale", since=T0, until=past), entry("fresh", since=T0)],
        )
    )
    assert [r["command_id"] for r in await steering.waiting()] == ["fresh"]
    assert [r["owner"] for r in await steering.replicas()] == ["r-1"]

    await steering.retire("r-1")
    assert await steering.replicas() == []
    await steering.sweep(replicas_before=datetime.now(UTC), reports_before=datetime.now(UTC))
    assert [r["command_id"] for r in await steering.waiting()] == ["fresh"]  # until not passed


async def test_reports_and_line_counts_accumulate(store: CommandStore) -> None:
    steering = store.steering
    now = datetime.now(UTC)
    report = BucketReport("renewal_resources", "customer", "c-1", 5.0, 2.5, 3, now)
    line = LineDelta("renewal_resources", "c-1", "normal", "q", 10, 0, now + timedelta(hours=1))
    await steering.publish(publication("r-1", reports=[report], lines=[line]))
    later = LineDelta("renewal_resources", "c-1", "normal", "q", 5, 7, now + timedelta(minutes=1))
    await steering.publish(publication("r-2", lines=[later]))
    await steering.publish(
        publication("r-1", lines=[LineDelta("renewal_resources", "c-1", "normal", "q", 0, 1, None)])
    )

    [row] = await steering.reports()
    assert (row["owner"], row["limit_rate"], row["rate"], row["throttled_5m"]) == (
        "r-1",
        5.0,
        2.5,
        3,
    )
    [counts] = await steering.lines()
    assert (counts["parked"], counts["pulled"]) == (15, 8)
    assert counts["next_deadline"] == later.next_deadline

    # one replica clears a passed deadline (and sweeps the line); for the next, it is gone
    assert await steering.clear_line_deadline("renewal_resources", "c-1", "normal") is True
    assert await steering.clear_line_deadline("renewal_resources", "c-1", "normal") is False
    [counts] = await steering.lines()
    assert counts["next_deadline"] is None

    await steering.forget_line("renewal_resources", "c-1", "normal")
    assert await steering.lines() == []


async def test_a_dead_letter_record_is_the_last_one(store: CommandStore) -> None:
    steering = store.steering
    await steering.dead_lettered(
        "cmd-1", type="renew", customer_id="c-1", reason="RELAY.SCHEMA", message="bad"
    )
    await steering.dead_lettered(
        "cmd-1", type="renew", customer_id="c-1", reason="RELAY.POLICY_DENIED", message="rule"
    )
    row = await steering.dead_letter("cmd-1")
    assert row is not None
    assert (row["reason"], row["message"], row["type"]) == ("RELAY.POLICY_DENIED", "rule", "renew")
    assert await steering.dead_letter("cmd-2") is None


async def test_the_audit_reads_a_time_window_without_a_limit(store: CommandStore) -> None:
    steering = store.steering
    before = datetime.now(UTC) - timedelta(seconds=1)
    for n in range(3):
        await steering.record(AuditRecord("replay", f"op-{n}"))
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert len(await steering.audit()) == 3
    assert len(await steering.audit(since=before, until=after)) == 3
    assert await steering.audit(since=after) == []
    assert await steering.audit(until=before) == []
    assert len(await steering.audit(limit=2)) == 2
