"""What the JSON API answers and does (CONTRACT §10), against the real store-backed Deployment
and the real broker: quota rows, steering with the user as the audit's actor, dead letters
newest first, replays by the replay tool's rules, one command's whereabouts, the audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.ops.console import RunningConsole
from tests.console.conftest import (
    Broker,
    Client,
    command,
    finish,
    publish_backlog,
)
from tests.contract import QUOTA_SHOW_FIELDS

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_quota_rows_are_those_of_quota_show(
    clients: dict[str, Client], running: RunningConsole
) -> None:
    await publish_backlog(running.console.store, customer="cust-9", waiting=3)
    rows = (await clients["bob"].get("/api/quota")).json()
    expected = [r.as_json() for r in await running.console.deployment.quota()]
    assert [{**r, "oldest_wait_s": None} for r in rows] == [
        {**r, "oldest_wait_s": None} for r in expected
    ]
    [row] = [r for r in rows if r["key"] == "cust-9"]
    assert (row["api"], row["kind"], row["waiting"], row["rate"], row["paused"]) == (
        "renewal_resources",
        "customer",
        3,
        7.5,
        False,
    )
    assert set(row) == set(QUOTA_SHOW_FIELDS)


async def test_limits_and_pauses_are_the_cli_verbs_with_the_user_as_actor(
    clients: dict[str, Client], running: RunningConsole
) -> None:
    alice = clients["alice"]
    deployment = running.console.deployment
    answer = await alice.post(
        "/api/quota", {"api": "renewal_resources", "rate": 2.5, "customer": "cust-1"}
    )
    assert answer.status == 200
    assert answer.json()["action"] == "quota_set"
    answer = await alice.post("/api/quota", {"api": "list_customer_orders", "rate": 4})
    assert answer.status == 200
    assert (await alice.post("/api/pause", {"customer": "cust-2"})).status == 200
    limits = {(x.api, x.kind, x.key, x.rate, x.set_by) for x in await deployment.limits()}
    assert limits == {
        ("renewal_resources", "customer", "cust-1", 2.5, "alice"),
        ("list_customer_orders", "all", None, 4.0, "alice"),
    }
    assert [(p.customer, p.api, p.set_by) for p in await deployment.pauses()] == [
        ("cust-2", None, "alice")
    ]
    paused = [r for r in (await alice.get("/api/quota")).json() if r["key"] == "cust-2"]
    assert paused
    assert all(r["paused"] for r in paused)

    reset = {"api": "renewal_resources", "rate": None, "customer": "cust-1"}
    assert (await alice.post("/api/quota", reset)).json()["action"] == "quota_reset"
    assert (await alice.post("/api/resume", {"customer": "cust-2"})).status == 200
    assert [x.api for x in await deployment.limits()] == ["list_customer_orders"]
    assert await deployment.pauses() == []

    trail = (await clients["bob"].get("/api/audit")).json()
    assert [(e["actor"], e["action"], e["customer_id"]) for e in trail] == [
        ("alice", "resume", "cust-2"),
        ("alice", "quota_reset", "cust-1"),
        ("alice", "pause", "cust-2"),
        ("alice", "quota_set", None),
        ("alice", "quota_set", "cust-1"),
    ]
    assert set(trail[0]) == {"at", "actor", "action", "command_id", "customer_id", "detail"}


async def test_dead_letters_newest_first_with_the_contract_fields(
    clients: dict[str, Client], broker: Broker
) -> None:
    await broker.dead_letter(command("old"), failed_at=T0)
    await broker.dead_letter(
        command("coupon", kind="issue_coupon"), reason="CBC.0999", failed_at=T0 + timedelta(3)
    )
    await broker.dead_letter(
        b"{not json", message_id="m-1", reason="RELAY.INVALID_JSON", failed_at=T0 + timedelta(1)
    )
    await broker.dead_letter(command("new"), reason="RELAY.SCHEMA", failed_at=T0 + timedelta(2))

    letters = (await clients["bob"].get("/api/dead-letters")).json()

    assert letters == [
        {
            "command_id": "coupon",
            "type": "issue_coupon",
            "customer_id": None,  # several customers
            "reason": "CBC.0999",
            "dead_lettered_at": (T0 + timedelta(3)).isoformat(),
        },
        {
            "command_id": "new",
            "type": "renew",
            "customer_id": "c-1",
            "reason": "RELAY.SCHEMA",
            "dead_lettered_at": (T0 + timedelta(2)).isoformat(),
        },
        {
            "command_id": None,
            "type": "invalid",
            "customer_id": None,
            "reason": "RELAY.INVALID_JSON",
            "dead_lettered_at": (T0 + timedelta(1)).isoformat(),
        },
        {
            "command_id": "old",
            "type": "renew",
            "customer_id": "c-1",
            "reason": "RELAY.RETRIES_EXHAUSTED",
            "dead_lettered_at": T0.isoformat(),
        },
    ]
    limited = (await clients["bob"].get("/api/dead-letters?limit=2")).json()
    assert [x["command_id"] for x in limited] == ["coupon", "new"]
    assert await broker.dlq_count() == 4  # reading moved nothing


async def test_dry_run_then_replay_by_the_replay_tools_rules(
    clients: dict[str, Client], running: RunningConsole, broker: Broker
) -> None:
    await finish(running.console.store, "done")
    await broker.dead_letter(command("done"), reason="RELAY.ID_CONFLICT")
    await broker.dead_letter(command("open"))
    await broker.dead_letter({**command("broken"), "payload": {"customer_id": "c-1"}})
    await broker.dead_letter(command("keep"))
    alice, ids = clients["alice"], ["open", "done", "broken", "missing"]

    dry = await alice.post("/api/dead-letters/replay", {"command_ids": ids, "dry_run": True})

    assert dry.status == 200
    results = dry.json()["results"]
    assert [(r["command_id"], r["action"]) for r in results] == [
        ("open", "would_replay"),
        ("done", "would_reannounce"),
        ("broken", "would_replay"),
        ("missing", "not_found"),
    ]
    assert results[0]["detail"] is None
    assert results[2]["detail"].startswith("would be rejected again: RELAY.SCHEMA")
    assert await broker.tapped() == []
    assert await broker.dlq_count() == 4
    assert [e for e in await running.console.deployment.audit() if e.action == "replay"] == []

    done = await alice.post("/api/dead-letters/replay", {"command_ids": ids, "dry_run": False})

    assert [(r["command_id"], r["action"]) for r in done.json()["results"]] == [
        ("open", "replayed"),
        ("done", "reannounced"),
        ("broken", "replayed"),
        ("missing", "not_found"),
    ]
    assert sorted(m or "" for m in await broker.tapped()) == ["broken", "done", "open"]
    assert [x["command_id"] for x in (await alice.get("/api/dead-letters")).json()] == ["keep"]
    replays = [e for e in await running.console.deployment.audit() if e.action == "replay"]
    assert sorted((e.actor, e.command_id, e.detail["result"]) for e in replays) == [
        ("alice", "broken", "replayed"),
        ("alice", "done", "reannounced"),
        ("alice", "open", "replayed"),
    ]
    assert {e.detail["via"] for e in replays} == {"console"}


async def test_a_command_page_answer_is_why_and_dead_letters_complete_it(
    clients: dict[str, Client], running: RunningConsole, broker: Broker
) -> None:
    bob = clients["bob"]
    assert (await bob.get("/api/commands/never")).json() == {
        "command_id": "never",
        "state": "not_seen",
    }
    await finish(running.console.store, "fin", outcome="failed")
    fin = (await bob.get("/api/commands/fin")).json()
    assert (fin["state"], fin["outcome"], fin["event_id"]) == ("finished", "failed", "ev-fin")
    assert fin == await running.console.deployment.why("fin")

    # Rejected before any replica claimed it: only the DLQ knows.
    await broker.dead_letter(command("bad"), reason="RELAY.SCHEMA", failed_at=T0)
    await broker.dead_letter(command("a/b"), reason="RELAY.SCHEMA")
    slashed = (await bob.get("/api/commands/a%2Fb")).json()
    assert (slashed["command_id"], slashed["state"]) == ("a/b", "dead_lettered")
    bad = (await bob.get("/api/commands/bad")).json()
    assert bad == {
        "command_id": "bad",
        "state": "dead_lettered",
        "reason": "RELAY.SCHEMA",
        "message": "RELAY.SCHEMA for the test",
        "dead_lettered_at": T0.isoformat(),
    }
    # What the store says wins over the DLQ when it knows the command.
    await running.console.store.steering.dead_lettered(
        "stored", type="renew", customer_id="c-1", reason="RELAY.POLICY_DENIED", message="rule"
    )
    stored = (await bob.get("/api/commands/stored")).json()
    assert (stored["state"], stored["reason"]) == ("dead_lettered", "RELAY.POLICY_DENIED")


async def test_audit_filters_and_limit(clients: dict[str, Client], running: RunningConsole) -> None:
    deployment = running.console.deployment
    for n in range(3):
        await deployment.pause(f"cust-{n}", actor="carol")
    await deployment.record("replay", actor="dave", command_id="cmd-7", customer_id="cust-1")
    bob = clients["bob"]

    by_customer = (await bob.get("/api/audit?customer_id=cust-1")).json()
    assert [(e["actor"], e["action"]) for e in by_customer] == [
        ("dave", "replay"),
        ("carol", "pause"),
    ]
    by_command = (await bob.get("/api/audit?command_id=cmd-7")).json()
    assert [e["command_id"] for e in by_command] == ["cmd-7"]
    assert len((await bob.get("/api/audit?limit=2")).json()) == 2
    assert (await bob.get("/api/audit?command_id=&customer_id=")).status == 200
