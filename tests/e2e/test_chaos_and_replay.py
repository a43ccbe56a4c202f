"""Error bursts and latency spikes slow the service down but lose and duplicate nothing;
dead letters replayed through the live service pass the idempotency check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import aio_pika
import pytest

from service.ops.replay import Action, Filter, finished_in, replay
from tests.e2e.conftest import RelayFactory, Sandbox
from tests.e2e.test_crash import mixed_commands
from tests.e2e.test_reliability import auto_renew
from tests.sandbox import demo_ids as ids

pytestmark = pytest.mark.e2e


async def test_faults_slow_down_but_lose_and_duplicate_nothing(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    seeded = {o["order_id"] for o in (await bss.state())["orders"]}
    await bss.put(
        "faults",
        {
            "seed": 11,
            "rules": [
                {"kind": "latency", "mean_ms": 60, "stddev_ms": 40},
                {"kind": "error", "rate": 0.15},
                {"kind": "drop_after_apply", "rate": 0.1},
                {"kind": "hang", "rate": 0.03, "seconds": 5},
            ],
        },
    )
    await bss.put("limits", {"*": 100})
    relay = await start_relay(
        relay_rate_limits={"*": 50}, relay_http_timeout_s=1.5, relay_max_attempts=10
    )
    commands = mixed_commands(80)
    for command in commands:
        await relay.publish(command)
    for command in commands:
        await relay.events.wait_for(command["command_id"], within=120)

    for command in commands:
        assert len({e["event_id"] for e in relay.events.terminal(command["command_id"])}) == 1
    outcomes = Counter(relay.events.terminal(c["command_id"])[0]["outcome"] for c in commands)
    assert outcomes["succeeded"] + outcomes["partial"] >= 70, outcomes
    assert set(outcomes) <= {"succeeded", "partial", "unknown", "failed"}

    state = await bss.state()
    new_orders = {o["order_id"] for o in state["orders"] if o["order_type"] == 2} - seeded
    renewals = [c["command_id"] for c in commands if c["type"] == "renew"]
    adopted = [
        order
        for cid in renewals
        for order in (relay.events.terminal(cid)[0]["result"] or {"order_ids": []})["order_ids"]
    ]
    unknown = sum(relay.events.terminal(c)[0]["outcome"] == "unknown" for c in renewals)
    assert len(adopted) == len(set(adopted))
    assert len(new_orders) <= len(adopted) + unknown  # never two orders for one command
    markers = Counter(
        c["memo"].rsplit("[bss-relay:", 1)[1].rstrip("]")
        for c in state["coupons"]
        if c["memo"] and "[bss-relay:" in c["memo"]
    )
    assert all(count == 1 for count in markers.values()), markers


async def test_replayed_dead_letters_pass_the_idempotency_check(
    start_relay: RelayFactory, bss: Sandbox, amqp_url: str, tmp_path: Path
) -> None:
    relay = await start_relay()
    other_partner = {  # not configured yet: rejected and dead-lettered
        **auto_renew("stark-ecs-01", True, customer=ids.STARK),
        "partner_id": ids.OTHER_PARTNER_ID,
    }
    finished = auto_renew("acme-ecs-01", True)
    await relay.publish(other_partner)
    await relay.publish(finished)
    [rejected] = await relay.events.wait_for(other_partner["command_id"])
    assert rejected["error"]["code"] == "RELAY.UNKNOWN_PARTNER"
    [done] = await relay.events.wait_for(finished["command_id"])
    # the finished command also sits in the DLQ as an operator might find it
    channel = relay.channel
    await channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps(finished).encode(),
            message_id=finished["command_id"],
            headers={
                "x-relay-reason": "TEST",
                "x-relay-attempts": 1,
                "x-relay-original-routing-key": "command.set_auto_renew",
            },
        ),
        routing_key="bss.commands.dlq",
    )

    partners = tmp_path / "partners.json"
    partners.write_text(
        json.dumps(
            {
                "partners": [
                    {
                        "partner_id": ids.PARTNER_ID,
                        "access_key": ids.PARTNER_AK,
                        "secret_key": ids.PARTNER_SK,
                        "agency_name": ids.AGENCY,
                    },
                    {
                        "partner_id": ids.OTHER_PARTNER_ID,
                        "access_key": ids.OTHER_AK,
                        "secret_key": ids.OTHER_SK,
                        "agency_name": ids.OTHER_AGENCY,
                    },
                ]
            }
        )
    )
    await relay.stop()
    restarted = await start_relay(  # the operator adds the partner and restarts the service ...
        bss_partner_id=None,
        bss_access_key=None,
        bss_secret_key=None,
        bss_agency_name=None,
        bss_partners_file=partners,
    )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        report = await replay(  # ... and replays what the DLQ holds for these two commands
            connection,
            Filter(command_ids=frozenset({other_partner["command_id"], finished["command_id"]})),
            max_body_bytes=256 * 1024,
            finished=finished_in(restarted.service.backend.store),
        )
    assert {r.letter.command_id: r.action for r in report.results} == {
        other_partner["command_id"]: Action.REPLAYED,
        finished["command_id"]: Action.REANNOUNCED,  # the store has it finished
    }

    events = await relay.events.wait_for(other_partner["command_id"], count=2)
    assert events[1]["outcome"] == "succeeded"  # it runs now that its partner is configured
    assert events[1]["partner_id"] == ids.OTHER_PARTNER_ID
    again = await relay.events.wait_for(finished["command_id"], count=2)
    assert again[1]["duplicate"] is True  # finished: only re-announced, not run again
    assert again[1]["result"] == done["result"]
    calls = [r for r in await bss.requests("auto_renewal_resources") if r["parent_uid"] == ids.ACME]
    assert len(calls) == 1
