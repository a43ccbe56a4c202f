"""The ``CommandStore`` contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from service.store.types import ClaimOutcome, CommandStatus, CommandStore
from tests.store.conftest import START, FakeClock, OpenReplica

LEASE = timedelta(seconds=30)
PAST_LEASE = LEASE + timedelta(seconds=1)


async def claimed(store: CommandStore, command_id: str = "cmd-1", owner: str = "a") -> None:
    claim = await store.claim(command_id, "renew", owner=owner, lease=LEASE)
    assert claim.outcome is ClaimOutcome.CLAIMED


async def outcome(store: CommandStore, owner: str, command_id: str = "cmd-1") -> ClaimOutcome:
    return (await store.claim(command_id, "renew", owner=owner, lease=LEASE)).outcome


async def test_claim_of_a_new_command_creates_a_received_record(store: CommandStore) -> None:
    claim = await store.claim("cmd-1", "renew", owner="a", lease=LEASE)

    assert claim.outcome is ClaimOutcome.CLAIMED
    record = claim.record
    assert (record.command_id, record.type, record.status) == ("cmd-1", "renew", "received")
    assert (record.attempts, record.call_started_at, record.event) == (0, None, None)
    assert record.updated_at == START
    assert await store.get("cmd-1") == record


async def test_get_of_an_unknown_command_is_none(store: CommandStore) -> None:
    assert await store.get("never-seen") is None


async def test_claim_of_a_finished_command_returns_its_event(store: CommandStore) -> None:
    await claimed(store)
    await store.finish("cmd-1", owner="a", event=b'{"outcome":"succeeded"}')
    await store.mark_published("cmd-1")

    claim = await store.claim("cmd-1", "renew", owner="b", lease=LEASE)

    assert claim.outcome is ClaimOutcome.FINISHED
    assert claim.record.status is CommandStatus.FINISHED
    assert claim.record.event == b'{"outcome":"succeeded"}'


async def test_concurrent_claims_admit_exactly_one_owner(store: CommandStore) -> None:
    claims = await asyncio.gather(
        *(store.claim("cmd-1", "renew", owner=f"o{i}", lease=LEASE) for i in range(20))
    )

    outcomes = sorted(claim.outcome for claim in claims)
    assert outcomes == [ClaimOutcome.BUSY] * 19 + [ClaimOutcome.CLAIMED]


async def test_concurrent_claims_from_several_replicas_admit_exactly_one(
    open_replica: OpenReplica,
) -> None:
    # Separate stores: separate SQLite connections, or separate asyncpg pools whose
    # connections race inside PostgreSQL.
    replicas = [await open_replica() for _ in range(4)]

    claims = await asyncio.gather(
        *(
            replicas[i % 4].claim(f"cmd-{n}", "issue_coupon", owner=f"o{i}", lease=LEASE)
            for n in range(5)
            for i in range(20)
        )
    )

    winners = [claim.record.command_id for claim in claims if claim.outcome is ClaimOutcome.CLAIMED]
    assert sorted(winners) == [f"cmd-{n}" for n in range(5)]
    assert sum(claim.outcome is ClaimOutcome.BUSY for claim in claims) == 95


async def test_claim_is_not_reentrant_for_its_owner(store: CommandStore) -> None:
    await claimed(store, owner="replica-1")

    assert await outcome(store, "replica-1") is ClaimOutcome.BUSY


async def test_after_lease_expiry_a_new_owner_sees_the_call_in_flight(
    store: CommandStore, clock: FakeClock
) -> None:
    await claimed(store, owner="a")
    started = clock() + timedelta(seconds=1)
    assert await store.mark_call_started("cmd-1", owner="a", at=started) == 1
    assert await outcome(store, "b") is ClaimOutcome.BUSY

    clock.advance(PAST_LEASE)
    claim = await store.claim("cmd-1", "renew", owner="b", lease=LEASE)

    assert claim.outcome is ClaimOutcome.CLAIMED
    assert claim.record.status is CommandStatus.IN_FLIGHT
    assert claim.record.call_started_at == started
    assert claim.record.attempts == 1
    with pytest.raises(LookupError):
        await store.mark_call_started("cmd-1", owner="a", at=clock())
    assert await store.mark_call_started("cmd-1", owner="b", at=clock()) == 2


async def test_another_process_takes_over_after_a_crash(
    open_replica: OpenReplica, clock: FakeClock
) -> None:
    crashed = await open_replica()
    await claimed(crashed, owner="replica-1")
    await crashed.mark_call_started("cmd-1", owner="replica-1", at=clock())
    # Like kill -9: replica-1 never releases. A fresh process sees its lease until it ends.
    survivor = await open_replica()
    assert await outcome(survivor, "replica-2") is ClaimOutcome.BUSY

    clock.advance(PAST_LEASE)
    claim = await survivor.claim("cmd-1", "renew", owner="replica-2", lease=LEASE)

    assert claim.outcome is ClaimOutcome.CLAIMED
    assert (claim.record.status, claim.record.attempts) == (CommandStatus.IN_FLIGHT, 1)
    assert claim.record.call_started_at == START


async def test_renew_leases_keeps_a_lease_alive_past_its_first_end(
    store: CommandStore, clock: FakeClock
) -> None:
    await claimed(store, "cmd-1", owner="a")
    await claimed(store, "cmd-2", owner="b")
    clock.advance(timedelta(seconds=20))

    await store.renew_leases("a", ["cmd-1", "cmd-2"], lease=LEASE)
    clock.advance(timedelta(seconds=20))  # 40 s after the claims, 20 s into the renewed lease

    assert await outcome(store, "c", "cmd-1") is ClaimOutcome.BUSY
    assert await outcome(store, "c", "cmd-2") is ClaimOutcome.CLAIMED  # not a's to renew
    clock.advance(timedelta(seconds=11))
    assert await outcome(store, "c", "cmd-1") is ClaimOutcome.CLAIMED


async def test_renew_leases_with_nothing_to_renew_is_a_no_op(store: CommandStore) -> None:
    await store.renew_leases("a", [], lease=LEASE)
    await store.renew_leases("a", ["never-seen"], lease=LEASE)


async def test_mark_call_started_by_a_non_owner_raises_lookup_error(
    store: CommandStore, clock: FakeClock
) -> None:
    await claimed(store, owner="a")

    with pytest.raises(LookupError):
        await store.mark_call_started("cmd-1", owner="b", at=clock())
    with pytest.raises(LookupError):
        await store.mark_call_started("never-seen", owner="a", at=clock())
    record = await store.get("cmd-1")
    assert record is not None
    assert (record.status, record.attempts) == (CommandStatus.RECEIVED, 0)


async def test_mark_call_started_after_the_lease_ended_raises_lookup_error(
    store: CommandStore, clock: FakeClock
) -> None:
    await claimed(store, owner="a")
    clock.advance(PAST_LEASE)

    with pytest.raises(LookupError):
        await store.mark_call_started("cmd-1", owner="a", at=clock())


async def test_attempts_count_every_call_started(store: CommandStore, clock: FakeClock) -> None:
    await claimed(store, owner="a")

    first = await store.mark_call_started("cmd-1", owner="a", at=clock())
    second = await store.mark_call_started("cmd-1", owner="a", at=clock() + timedelta(seconds=5))

    assert (first, second) == (1, 2)
    record = await store.get("cmd-1")
    assert record is not None
    assert record.call_started_at == START + timedelta(seconds=5)


async def test_finish_is_first_writer_wins(store: CommandStore) -> None:
    await claimed(store, owner="a")

    assert await store.finish("cmd-1", owner="a", event=b"first") == b"first"
    assert await store.finish("cmd-1", owner="a", event=b"second") == b"first"
    assert await store.finish("cmd-1", owner="b", event=b"third") == b"first"

    record = await store.get("cmd-1")
    assert record is not None
    assert (record.status, record.event) == (CommandStatus.FINISHED, b"first")


async def test_concurrent_finishes_store_one_event(store: CommandStore) -> None:
    await claimed(store, owner="a")

    stored = await asyncio.gather(
        *(store.finish("cmd-1", owner="a", event=f"e{i}".encode()) for i in range(10))
    )

    assert len(set(stored)) == 1


async def test_a_former_owner_finishing_late_is_kept_and_stops_the_new_owner(
    store: CommandStore, clock: FakeClock
) -> None:
    await claimed(store, owner="a")
    await store.mark_call_started("cmd-1", owner="a", at=clock())
    clock.advance(PAST_LEASE)
    await claimed(store, owner="b")  # b sees IN_FLIGHT and starts reconciling

    assert await store.finish("cmd-1", owner="a", event=b"a's real result") == b"a's real result"

    with pytest.raises(LookupError):
        await store.mark_call_started("cmd-1", owner="b", at=clock())
    assert await store.finish("cmd-1", owner="b", event=b"b's guess") == b"a's real result"


async def test_finish_of_a_command_never_claimed_raises_lookup_error(
    store: CommandStore,
) -> None:
    with pytest.raises(LookupError):
        await store.finish("never-seen", owner="a", event=b"x")


async def test_release_lets_another_owner_claim_at_once(
    store: CommandStore, clock: FakeClock
) -> None:
    await claimed(store, owner="a")
    await store.mark_call_started("cmd-1", owner="a", at=clock())

    await store.release("cmd-1", owner="a")
    claim = await store.claim("cmd-1", "renew", owner="b", lease=LEASE)

    assert claim.outcome is ClaimOutcome.CLAIMED
    assert (claim.record.status, claim.record.attempts) == (CommandStatus.IN_FLIGHT, 1)


async def test_release_of_a_finished_unpublished_command_lets_a_copy_publish_it_now(
    store: CommandStore,
) -> None:
    """Its owner stored the event but lost the message's channel before publishing: giving the
    claim back turns a copy's BUSY (wait out the lease) into FINISHED (publish it as itself)."""
    await claimed(store, owner="a")
    await store.finish("cmd-1", owner="a", event=b"the event")
    assert await outcome(store, "b") is ClaimOutcome.BUSY

    await store.release("cmd-1", owner="a")
    claim = await store.claim("cmd-1", "renew", owner="b", lease=LEASE)

    assert claim.outcome is ClaimOutcome.FINISHED
    assert (claim.record.event, claim.record.published) == (b"the event", False)


async def test_release_by_a_non_owner_changes_nothing(store: CommandStore) -> None:
    await claimed(store, owner="a")

    await store.release("cmd-1", owner="b")

    assert await outcome(store, "b") is ClaimOutcome.BUSY


async def test_prune_removes_only_old_finished_commands(
    store: CommandStore, clock: FakeClock
) -> None:
    for command_id in ("old-finished", "old-open", "old-released"):
        await claimed(store, command_id)
    await store.finish("old-finished", owner="a", event=b"e")
    await store.release("old-released", owner="a")
    clock.advance(timedelta(days=8))
    await claimed(store, "new-finished")
    await store.finish("new-finished", owner="a", event=b"e")

    pruned = await store.prune(finished_before=clock() - timedelta(days=7))

    assert pruned == 1
    assert await store.get("old-finished") is None
    for command_id in ("old-open", "old-released", "new-finished"):
        assert await store.get(command_id) is not None
    assert await store.prune(finished_before=clock() - timedelta(days=7)) == 0


async def test_times_come_back_timezone_aware_utc(store: CommandStore) -> None:
    await claimed(store)
    plus_two = timezone(timedelta(hours=2))
    started = datetime(2026, 1, 15, 11, 31, 2, 123456, tzinfo=plus_two)

    await store.mark_call_started("cmd-1", owner="a", at=started)
    record = await store.get("cmd-1")

    assert record is not None
    assert record.call_started_at is not None
    for moment in (record.call_started_at, record.updated_at):
        assert moment.utcoffset() == timedelta(0)
    assert record.call_started_at == started
    assert record.call_started_at.hour == 9


async def test_naive_datetimes_are_refused(store: CommandStore) -> None:
    await claimed(store)
    naive = datetime(2026, 1, 15, 9, 30)  # naive on purpose

    with pytest.raises(ValueError, match="timezone-aware"):
        await store.mark_call_started("cmd-1", owner="a", at=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.prune(finished_before=naive)


async def test_a_lease_must_be_positive(store: CommandStore) -> None:
    with pytest.raises(ValueError, match="lease"):
        await store.claim("cmd-1", "renew", owner="a", lease=timedelta(0))


async def test_note_is_kept_with_the_call_and_published_flag_is_recorded(
    store_url: str,
) -> None:
    from datetime import timedelta as _td

    from service.store import open_store as _open

    async with _open(store_url) as store:
        claim = await store.claim("cmd-note", "renew", owner="a", lease=_td(seconds=30))
        assert claim.record.note is None
        await store.mark_call_started(
            "cmd-note", owner="a", at=claim.record.updated_at, note=b'{"r1": "x"}'
        )
        record = await store.get("cmd-note")
        assert record is not None
        assert record.note == b'{"r1": "x"}'
        await store.finish("cmd-note", owner="a", event=b"{}")
        finished = await store.get("cmd-note")
        assert finished is not None
        assert finished.published is False
        await store.mark_published("cmd-note")
        published = await store.get("cmd-note")
        assert published is not None
        assert published.published is True


async def test_finished_but_unpublished_is_busy_until_published_or_lease_expiry(
    store_url: str,
) -> None:
    from datetime import UTC, datetime, timedelta

    from service.store import open_store as _open
    from service.store.types import ClaimOutcome

    now = [datetime(2026, 11, 24, 8, tzinfo=UTC)]
    async with _open(store_url, clock=lambda: now[0]) as store:
        await store.claim("cmd-pub", "renew", owner="a", lease=timedelta(seconds=30))
        await store.finish("cmd-pub", owner="a", event=b"evt")
        # owner "a" is publishing: a copy arriving now must not publish it as well
        busy = await store.claim("cmd-pub", "renew", owner="b", lease=timedelta(seconds=30))
        assert busy.outcome is ClaimOutcome.BUSY
        now[0] += timedelta(seconds=31)  # "a" died between finish and publish
        late = await store.claim("cmd-pub", "renew", owner="b", lease=timedelta(seconds=30))
        assert late.outcome is ClaimOutcome.FINISHED
        assert late.record.published is False  # so "b" publishes the stored event itself
        await store.mark_published("cmd-pub")
        done = await store.claim("cmd-pub", "renew", owner="c", lease=timedelta(seconds=30))
        assert (done.outcome, done.record.published) == (ClaimOutcome.FINISHED, True)


async def test_effects_belong_to_the_first_command_that_claims_them(store_url: str) -> None:
    from service.store import open_store as _open

    async with _open(store_url) as store:
        assert await store.claim_effects("cmd-a", ["order-1", "order-2"]) == {
            "order-1": "cmd-a",
            "order-2": "cmd-a",
        }
        # another command cannot take them; a new one it may
        owners = await store.claim_effects("cmd-b", ["order-2", "order-3"])
        assert owners == {"order-2": "cmd-a", "order-3": "cmd-b"}
        assert await store.effect_owners(["order-1", "order-9"]) == {"order-1": "cmd-a"}


async def test_clear_in_flight_returns_the_command_to_received(store_url: str) -> None:
    from datetime import timedelta as _td

    from service.store import open_store as _open
    from service.store.types import CommandStatus

    async with _open(store_url) as store:
        claim = await store.claim("cmd-c", "renew", owner="a", lease=_td(seconds=30))
        await store.mark_call_started("cmd-c", owner="a", at=claim.record.updated_at, note=b"n")
        await store.clear_in_flight("cmd-c", owner="a")
        record = await store.get("cmd-c")
        assert record is not None
        assert (record.status, record.note, record.attempts) == (CommandStatus.RECEIVED, None, 1)
