"""Listing, dry runs and replays against the real broker: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from service.broker.topology import COMMANDS_EXCHANGE
from service.messages.publisher import DeadLetterReason, Publisher
from service.ops.replay import REPLAY_COUNT, REPLAYED_AT, Action, Filter, Result, replay, scan
from service.settings import Settings
from tests.replay.conftest import FAILED_AT, Broker, command

MAX_BODY = Settings().relay_max_body_bytes
NOW = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def ids(results: tuple[Result, ...]) -> list[str | None]:
    return [r.letter.message_id for r in results]


# --- listing --------------------------------------------------------------------------------------


async def test_list_reads_every_header_and_changes_nothing(
    broker: Broker, connection: AbstractConnection
) -> None:
    await broker.dead_letter(command("a", partner="p-1", customer="c-1"), attempts=3)
    await broker.dead_letter(
        command("b", kind="issue_coupon", partner="p-2", customer="c-2"), routing_key=None
    )
    await broker.dead_letter(
        b"{not json", message_id="m-3", reason="RELAY.INVALID_JSON", routing_key=None
    )
    before = await broker.dlq(3)

    report = await scan(connection)

    assert report.scanned == 3
    assert [r.action for r in report.results] == [Action.LISTED] * 3
    a, b, bad = (r.letter for r in report.results)
    assert (a.command_id, a.type, a.partner_id, a.customer_ids) == ("a", "renew", "p-1", ("c-1",))
    assert (a.reason, a.attempts, a.last_failure, a.first_failure) == (
        "RELAY.RETRIES_EXHAUSTED",
        3,
        FAILED_AT,
        FAILED_AT,
    )
    assert (a.routing_key, a.replay_count) == ("command.renew", 0)
    assert (b.type, b.customer_ids, b.routing_key) == (
        "issue_coupon",
        ("c-2",),
        "command.issue_coupon",
    )
    assert (bad.command_id, bad.type, bad.reason) == (None, "invalid", "RELAY.INVALID_JSON")
    assert bad.routing_key == "command.invalid"
    assert await broker.dlq(3) == before
    assert await broker.tapped() == []


LATER = timedelta(hours=1)


async def fill_for_filters(broker: Broker) -> None:
    """Five dead letters a-e, one hour apart from FAILED_AT on."""
    await broker.dead_letter(command("a", partner="p-1", customer="c-1"))
    await broker.dead_letter(
        command("b", partner="p-2", customer="c-2"),
        reason="RELAY.SCHEMA",
        failed_at=FAILED_AT + LATER,
    )
    await broker.dead_letter(
        command("c", kind="issue_coupon", partner="p-1", customer="c-3"),
        reason="RELAY.OUTCOME_UNKNOWN",
        failed_at=FAILED_AT + 2 * LATER,
    )
    await broker.dead_letter(
        command("d", partner="p-2", customer="c-1"),
        reason="RELAY.SCHEMA",
        failed_at=FAILED_AT + 3 * LATER,
    )
    await broker.dead_letter(
        b"\xff", message_id="e", reason="RELAY.INVALID_JSON", failed_at=FAILED_AT + 4 * LATER
    )


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (Filter(), ["a", "b", "c", "d", "e"]),
        (Filter(types=frozenset({"issue_coupon"})), ["c"]),
        (Filter(types=frozenset({"invalid"})), ["e"]),
        (Filter(partners=frozenset({"p-2"})), ["b", "d"]),
        (Filter(customers=frozenset({"c-1"})), ["a", "d"]),
        (Filter(customers=frozenset({"c-3"})), ["c"]),
        (Filter(reasons=frozenset({"RELAY.SCHEMA", "RELAY.INVALID_JSON"})), ["b", "d", "e"]),
        (Filter(command_ids=frozenset({"c"})), ["c"]),
        (Filter(since=FAILED_AT + LATER), ["b", "c", "d", "e"]),
        (Filter(until=FAILED_AT + LATER), ["a"]),
        (Filter(since=FAILED_AT + LATER / 2, until=FAILED_AT + 2 * LATER + LATER / 2), ["b", "c"]),
        (
            Filter(
                partners=frozenset({"p-2"}),
                reasons=frozenset({"RELAY.SCHEMA"}),
                customers=frozenset({"c-1"}),
            ),
            ["d"],
        ),
        (Filter(partners=frozenset({"nobody"})), []),
    ],
)
async def test_list_filters(
    broker: Broker, connection: AbstractConnection, where: Filter, expected: list[str]
) -> None:
    await fill_for_filters(broker)

    report = await scan(connection, where)

    assert ids(report.results) == expected
    assert report.scanned == 5
    assert await broker.dlq(5) != []


async def test_list_limit_stops_the_scan(broker: Broker, connection: AbstractConnection) -> None:
    for n in range(6):
        await broker.dead_letter(command(f"m-{n}"))

    report = await scan(connection, limit=2)

    assert ids(report.results) == ["m-0", "m-1"]
    assert report.scanned == 2
    assert [s.message_id for s in await broker.dlq(6)] == [f"m-{n}" for n in range(6)]


# --- dry run --------------------------------------------------------------------------------------


async def test_dry_run_changes_nothing_and_reports_what_would_happen(
    broker: Broker, connection: AbstractConnection
) -> None:
    late = command("late") | {"deadline": "2026-01-01T00:00:00Z"}
    schema_bad = command("bad-period")
    schema_bad["payload"]["period_num"] = 99
    await broker.dead_letter(command("ok-1"))
    await broker.dead_letter(b"{not json", message_id="broken", reason="RELAY.INVALID_JSON")
    await broker.dead_letter(schema_bad, reason="RELAY.SCHEMA")
    await broker.dead_letter(late, reason="RELAY.DEADLINE_PASSED")
    await broker.dead_letter(command("ok-2"))
    before = await broker.dlq(5)

    report = await replay(connection, max_body_bytes=MAX_BODY, dry_run=True, clock=clock)

    actions = {r.letter.message_id: (r.action, r.detail.split(" ")[0]) for r in report.results}
    assert actions == {
        "ok-1": (Action.WOULD_REPLAY, ""),
        "broken": (Action.WOULD_REJECT, "RELAY.INVALID_JSON"),
        "bad-period": (Action.WOULD_REJECT, "RELAY.SCHEMA"),
        "late": (Action.WOULD_REJECT, "RELAY.DEADLINE_PASSED"),
        "ok-2": (Action.WOULD_REPLAY, ""),
    }
    assert report.needs_attention
    assert await broker.dlq(5) == before
    assert await broker.tapped() == []
    work = await broker.channel.declare_queue(broker.topology.work_queue, passive=True)
    assert work.declaration_result.message_count == 0


# --- replay ---------------------------------------------------------------------------------------


async def test_replay_of_100_brings_each_back_exactly_once(
    broker: Broker, connection: AbstractConnection
) -> None:
    wanted = [f"cmd-{n:03}" for n in range(100)]
    others = [f"other-{n}" for n in range(5)]
    for n, command_id in enumerate(wanted):
        await broker.dead_letter(command(command_id, partner="p-1"))
        if n % 20 == 0:
            await broker.dead_letter(command(others[n // 20], partner="p-2"))

    report = await replay(
        connection, Filter(partners=frozenset({"p-1"})), max_body_bytes=MAX_BODY, clock=clock
    )

    assert [r.action for r in report.results] == [Action.REPLAYED] * 100
    assert not report.needs_attention
    copies = Counter(s.message_id for s in await broker.tapped())
    assert copies == Counter(wanted)
    assert [s.message_id for s in await broker.dlq(5)] == others
    work = await broker.channel.declare_queue(broker.topology.work_queue, passive=True)
    assert work.declaration_result.message_count == 100

    again = await replay(
        connection, Filter(partners=frozenset({"p-1"})), max_body_bytes=MAX_BODY, clock=clock
    )
    assert again.results == ()
    assert await broker.tapped() == []


async def test_replay_limit_moves_the_oldest_first(
    broker: Broker, connection: AbstractConnection
) -> None:
    names = [f"m-{n}" for n in range(10)]
    for name in names:
        await broker.dead_letter(command(name))

    report = await replay(connection, max_body_bytes=MAX_BODY, limit=4, clock=clock)

    assert ids(report.results) == names[:4]
    assert [s.message_id for s in await broker.tapped()] == names[:4]
    assert [s.message_id for s in await broker.dlq(6)] == names[4:]


async def test_copy_keeps_the_command_and_its_routing_key(
    broker: Broker, connection: AbstractConnection
) -> None:
    body = json.dumps(command("kept")).encode()
    await broker.dead_letter(
        body,
        message_id="kept",
        routing_key="command.renew.vip",
        correlation_id="corr-1",
        reply_to="answers",
        headers={"x-tenant": "t-1", REPLAY_COUNT: 2, "x-relay-any-other": "dropped"},
    )
    await broker.dead_letter(command("no-key", kind="issue_coupon"), routing_key=None)

    await replay(connection, max_body_bytes=MAX_BODY, clock=clock)

    kept, no_key = await broker.tapped()
    assert (kept.routing_key, kept.body, kept.message_id) == ("command.renew.vip", body, "kept")
    assert (kept.correlation_id, kept.reply_to, kept.content_type) == (
        "corr-1",
        "answers",
        "application/json",
    )
    assert kept.headers == {"x-tenant": "t-1", REPLAY_COUNT: 3, REPLAYED_AT: NOW.isoformat()}
    assert no_key.routing_key == "command.issue_coupon"
    assert no_key.headers == {REPLAY_COUNT: 1, REPLAYED_AT: NOW.isoformat()}


async def test_reads_what_the_service_dead_letters(
    broker: Broker, connection: AbstractConnection
) -> None:
    exchange = await broker.channel.get_exchange(COMMANDS_EXCHANGE)
    body = json.dumps(command("svc-1", customer="c-9")).encode()
    await exchange.publish(
        aio_pika.Message(body, message_id="svc-1", content_type="application/json"),
        routing_key="command.renew",
    )
    await broker.tapped()
    work = await broker.channel.declare_queue(broker.topology.work_queue, passive=True)
    incoming = await work.get(no_ack=False)
    events = await broker.channel.get_exchange("bss.events")
    publisher = Publisher(channel=broker.channel, events=events, topology=broker.topology)
    at = FAILED_AT + timedelta(minutes=5)
    await publisher.dead_letter(incoming, DeadLetterReason("CBC.0999", "upstream said no", 8, at))
    await incoming.ack()

    (result,) = (await scan(connection)).results

    letter = result.letter
    assert (letter.command_id, letter.customer_ids, letter.reason, letter.attempts) == (
        "svc-1",
        ("c-9",),
        "CBC.0999",
        8,
    )
    assert (letter.last_failure, letter.routing_key) == (at, "command.renew")
    assert letter.reason_message == "upstream said no"


async def test_unroutable_copy_keeps_the_dead_letter(
    broker: Broker, connection: AbstractConnection
) -> None:
    await broker.tap.unbind(COMMANDS_EXCHANGE, routing_key="#")
    work = await broker.channel.declare_queue(broker.topology.work_queue, passive=True)
    await work.unbind(COMMANDS_EXCHANGE, routing_key="#")
    for n in range(3):
        await broker.dead_letter(command(f"m-{n}"))
    before = await broker.dlq(3)

    report = await replay(connection, max_body_bytes=MAX_BODY, clock=clock)

    assert [r.action for r in report.results] == [Action.NOT_REPLAYED]
    assert "PublishError" in report.results[0].detail
    assert report.needs_attention
    assert await broker.dlq(3) == before


@pytest.mark.parametrize("crash", ["exception", "cancel"])
async def test_crash_mid_replay_loses_nothing(
    broker: Broker, connection: AbstractConnection, crash: str
) -> None:
    names = [f"m-{n:02}" for n in range(20)]
    for name in names:
        await broker.dead_letter(command(name))
    done: list[Result] = []

    def progress(result: Result) -> None:
        done.append(result)
        if len(done) == 7:
            if crash == "cancel":
                asyncio.current_task().cancel()  # type: ignore[union-attr]
            else:
                raise RuntimeError("crash")

    run = replay(connection, max_body_bytes=MAX_BODY, clock=clock, progress=progress)
    with pytest.raises(asyncio.CancelledError if crash == "cancel" else RuntimeError):
        await asyncio.create_task(run)

    # The crash comes after the 7th ack: 7 moved exactly once, the 13 others still dead.
    copies = [s.message_id for s in await broker.tapped()]
    assert copies == names[:7]
    assert [s.message_id for s in await broker.dlq(13)] == names[7:]
