"""The renewal ledger and coupon reservations, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal

from service.store.types import CapExceeded, CommandStore, CouponCaps
from tests.store.conftest import FakeClock, OpenReplica

LEASE = timedelta(seconds=30)
DAY = timedelta(hours=24)


def renew_body(*resources: str) -> bytes:
    payload = {"customer_id": "cu-1", "resource_ids": list(resources)}
    return json.dumps({"type": "renew", "payload": payload}).encode()


def event(kind: str, outcome: str, result: object = None) -> bytes:
    return json.dumps({"type": kind, "outcome": outcome, "result": result}).encode()


async def renewal(
    store: CommandStore,
    command_id: str,
    outcome: str,
    *resources: str,
    failed: tuple[str, ...] = (),
) -> None:
    await store.claim(command_id, "renew", owner="a", lease=LEASE, body=renew_body(*resources))
    result = {"order_ids": ["o"], "failed_resources": [{"resource_id": r} for r in failed]}
    await store.finish(command_id, owner="a", event=event("renew", outcome, result))


async def pause(clock: FakeClock, delta: timedelta) -> None:
    """Let ``delta`` pass for both clocks: the store's (SQLite) and the server's (PostgreSQL)."""
    clock.advance(delta)
    await asyncio.sleep(delta.total_seconds())


async def test_a_successful_renewal_records_its_renewed_resources(store: CommandStore) -> None:
    await renewal(store, "r-cmd-1", "partial", "res-1", "res-2", "res-3", failed=("res-2",))

    recent = await store.recent_renewals(
        ["res-1", "res-2", "res-3", "res-9"], within=DAY, excluding="other"
    )

    assert recent == {"res-1": "r-cmd-1", "res-3": "r-cmd-1"}
    assert await store.recent_renewals(["res-1"], within=DAY, excluding="r-cmd-1") == {}


async def test_failed_and_unknown_renewals_record_nothing(store: CommandStore) -> None:
    await renewal(store, "r-cmd-1", "failed", "res-1")
    await renewal(store, "r-cmd-2", "unknown", "res-1")

    assert await store.recent_renewals(["res-1"], within=DAY, excluding="x") == {}


async def test_only_the_first_finish_records(store: CommandStore) -> None:
    await renewal(store, "r-cmd-1", "failed", "res-1")
    # a late finish with another outcome is not stored, so it records nothing either
    await store.finish("r-cmd-1", owner="a", event=event("renew", "succeeded", {"order_ids": []}))

    assert await store.recent_renewals(["res-1"], within=DAY, excluding="x") == {}


async def test_renewals_age_out_of_the_window(store: CommandStore, clock: FakeClock) -> None:
    await renewal(store, "r-cmd-1", "succeeded", "res-1")
    await pause(clock, timedelta(milliseconds=300))

    assert await store.recent_renewals(["res-1"], within=DAY, excluding="x") == {"res-1": "r-cmd-1"}
    window = timedelta(milliseconds=200)
    assert await store.recent_renewals(["res-1"], within=window, excluding="x") == {}


async def reserve_renewal(
    store: CommandStore, command_id: str, *resources: str, within: timedelta = DAY
) -> dict[str, str]:
    await store.claim(command_id, "renew", owner="a", lease=LEASE, body=renew_body(*resources))
    return await store.reserve_renewals(
        command_id, customer_id="cu-1", resource_ids=list(resources), within=within
    )


async def finish_renewal(
    store: CommandStore, command_id: str, outcome: str, failed: tuple[str, ...] = ()
) -> None:
    result = {"order_ids": ["o"], "failed_resources": [{"resource_id": r} for r in failed]}
    await store.finish(command_id, owner="a", event=event("renew", outcome, result))


async def test_a_reserved_renewal_blocks_another_command_until_it_fails(
    store: CommandStore,
) -> None:
    assert await reserve_renewal(store, "r-1", "res-1", "res-2") == {}
    # while the first is running, a second command for one of its resources is refused
    assert await reserve_renewal(store, "r-2", "res-2", "res-3") == {"res-2": "r-1"}
    assert await reserve_renewal(store, "r-1", "res-1", "res-2") == {}  # its own: re-used
    assert await store.recent_renewals(["res-1"], within=DAY, excluding="x") == {}  # not done

    await finish_renewal(store, "r-1", "failed")

    assert await reserve_renewal(store, "r-2", "res-2", "res-3") == {}


async def test_a_partial_renewal_keeps_the_renewed_and_frees_the_failed(
    store: CommandStore,
) -> None:
    assert await reserve_renewal(store, "r-1", "res-1", "res-2") == {}

    await finish_renewal(store, "r-1", "partial", failed=("res-2",))

    assert await store.recent_renewals(["res-1", "res-2"], within=DAY, excluding="x") == {
        "res-1": "r-1"
    }
    assert await reserve_renewal(store, "r-2", "res-2") == {}
    assert await reserve_renewal(store, "r-3", "res-1") == {"res-1": "r-1"}


async def test_unknown_keeps_the_renewal_reserved_and_release_drops_it(
    store: CommandStore,
) -> None:
    assert await reserve_renewal(store, "r-1", "res-1") == {}
    await finish_renewal(store, "r-1", "unknown")
    assert await reserve_renewal(store, "r-2", "res-1") == {"res-1": "r-1"}

    assert await reserve_renewal(store, "r-3", "res-9") == {}
    await store.release_renewals("r-3")  # rejected before any call
    assert await reserve_renewal(store, "r-4", "res-9") == {}


async def test_a_reservation_ages_out_of_the_window(store: CommandStore, clock: FakeClock) -> None:
    window = timedelta(milliseconds=300)
    assert await reserve_renewal(store, "r-1", "res-1", within=window) == {}
    assert await reserve_renewal(store, "r-2", "res-1", within=window) == {"res-1": "r-1"}

    await pause(clock, timedelta(milliseconds=400))

    assert await reserve_renewal(store, "r-2", "res-1", within=window) == {}


async def test_twenty_renewals_of_one_resource_racing_admit_exactly_one(
    open_replica: OpenReplica,
) -> None:
    replicas = [await open_replica() for _ in range(4)]

    results = await asyncio.gather(
        *(reserve_renewal(replicas[i % 4], f"r-{i}", "res-1") for i in range(20))
    )

    assert sum(result == {} for result in results) == 1


CAPS = CouponCaps(per_customer=Decimal("100.00"), per_partner=Decimal("150.00"))
PER_CUSTOMER = CouponCaps(per_customer=Decimal("100.00"))


async def reserve(
    store: CommandStore,
    command_id: str,
    customers: list[str],
    face: str,
    caps: CouponCaps = CAPS,
    partner: str = "p-1",
) -> CapExceeded | None:
    await store.claim(command_id, "issue_coupon", owner="a", lease=LEASE)
    return await store.reserve_coupons(
        command_id,
        partner_id=partner,
        customer_ids=customers,
        face_value=Decimal(face),
        caps=caps,
    )


async def coupons_finished(
    store: CommandStore,
    command_id: str,
    outcome: str,
    issued: tuple[str, ...] = (),
) -> None:
    result = {"coupons": [{"customer_id": c, "coupon_id": f"cp-{c}"} for c in issued]}
    await store.finish(command_id, owner="a", event=event("issue_coupon", outcome, result))


async def test_per_customer_cap_counts_reservations_and_names_the_customer(
    store: CommandStore,
) -> None:
    assert await reserve(store, "c-1", ["cu-1"], "60.00") is None

    refused = await reserve(store, "c-2", ["cu-2", "cu-1"], "40.01")

    assert refused == CapExceeded(
        "customer", "cu-1", Decimal("60.00"), Decimal("40.01"), Decimal("100.00")
    )
    assert await reserve(store, "c-3", ["cu-1"], "40.00") is None  # exactly the cap


async def test_per_partner_cap_counts_every_customer_of_the_command(store: CommandStore) -> None:
    assert await reserve(store, "c-1", ["cu-1", "cu-2"], "50.00") is None

    refused = await reserve(store, "c-2", ["cu-3", "cu-4"], "30.00")

    assert refused == CapExceeded(
        "partner", "p-1", Decimal("100.00"), Decimal("60.00"), Decimal("150.00")
    )
    assert await reserve(store, "c-3", ["cu-3"], "50.00", partner="p-2") is None


async def test_a_retried_command_reuses_its_reservation(store: CommandStore) -> None:
    assert await reserve(store, "c-1", ["cu-1"], "100.00") is None
    # the same command again (redelivered, taken over): passes without counting twice
    assert await reserve(store, "c-1", ["cu-1"], "100.00") is None
    assert await reserve(store, "c-2", ["cu-1"], "0.01") is not None


async def test_failed_releases_and_rejected_releases(store: CommandStore) -> None:
    assert await reserve(store, "c-1", ["cu-1"], "100.00") is None
    await coupons_finished(store, "c-1", "failed")
    assert await reserve(store, "c-2", ["cu-1"], "100.00") is None
    await store.release_coupons("c-2")  # rejected before any call
    assert await reserve(store, "c-3", ["cu-1"], "100.00") is None


async def test_partial_commits_only_the_issued_customers(store: CommandStore) -> None:
    assert await reserve(store, "c-1", ["cu-1", "cu-2"], "70.00", PER_CUSTOMER) is None
    await coupons_finished(store, "c-1", "partial", issued=("cu-1",))

    assert await reserve(store, "c-2", ["cu-2"], "80.00", PER_CUSTOMER) is None  # cu-2 got nothing
    refused = await reserve(store, "c-3", ["cu-1"], "40.00", PER_CUSTOMER)
    assert refused is not None
    assert (refused.subject, refused.used) == ("cu-1", Decimal("70.00"))
    await store.release_coupons("c-1")  # committed spend is never released
    assert await reserve(store, "c-4", ["cu-1"], "40.00", PER_CUSTOMER) is not None


async def test_unknown_keeps_the_reservation_counted(store: CommandStore) -> None:
    assert await reserve(store, "c-1", ["cu-1"], "100.00") is None
    await coupons_finished(store, "c-1", "unknown")

    assert await reserve(store, "c-2", ["cu-1"], "0.01") is not None


async def test_spend_ages_out_of_the_rolling_window(store: CommandStore, clock: FakeClock) -> None:
    caps = CouponCaps(per_customer=Decimal("100.00"), window=timedelta(milliseconds=300))
    assert await reserve(store, "c-1", ["cu-1"], "100.00", caps) is None
    assert await reserve(store, "c-2", ["cu-1"], "1.00", caps) is not None

    await pause(clock, timedelta(milliseconds=400))

    assert await reserve(store, "c-2", ["cu-1"], "100.00", caps) is None


async def test_prune_drops_old_ledger_rows(store: CommandStore, clock: FakeClock) -> None:
    await renewal(store, "r-cmd-1", "succeeded", "res-1")
    assert await reserve(store, "c-1", ["cu-1"], "100.00") is None
    await pause(clock, timedelta(milliseconds=100))

    await store.prune(finished_before=clock() + DAY * 365)

    assert await store.recent_renewals(["res-1"], within=DAY, excluding="x") == {}
    assert await reserve(store, "c-2", ["cu-1"], "100.00") is None


async def test_twenty_commands_racing_for_the_last_allowance_get_exactly_it(
    open_replica: OpenReplica,
) -> None:
    replicas = [await open_replica() for _ in range(4)]
    caps = CouponCaps(per_partner=Decimal("100.00"))
    assert await reserve(replicas[0], "c-0", ["cu-0"], "70.00", caps) is None

    results = await asyncio.gather(
        *(reserve(replicas[i % 4], f"c-{i}", [f"cu-{i}"], "10.00", caps) for i in range(1, 21))
    )

    assert sum(result is None for result in results) == 3  # 70 + 3 x 10 = the cap, exactly
    refused = [result for result in results if result is not None]
    assert all(r.scope == "partner" and r.used == Decimal("100.00") for r in refused)


async def test_coupons_issued_without_a_reservation_still_count(store: CommandStore) -> None:
    # issued while no caps were in force: the spend is recorded from the stored command
    body = json.dumps(
        {
            "type": "issue_coupon",
            "payload": {"customer_ids": ["cu-1", "cu-2"], "face_value": "60.00"},
        }
    ).encode()
    await store.claim("c-0", "issue_coupon", owner="a", lease=LEASE, partner_id="p-1", body=body)
    await coupons_finished(store, "c-0", "partial", issued=("cu-1",))

    refused = await reserve(store, "c-1", ["cu-1"], "40.01", PER_CUSTOMER)

    assert refused is not None
    assert (refused.subject, refused.used) == ("cu-1", Decimal("60.00"))
    assert await reserve(store, "c-2", ["cu-2"], "100.00", PER_CUSTOMER, partner="p-2") is None
    partner = await reserve(store, "c-3", ["cu-3"], "90.01", CAPS)  # 60 + 90.01 > 150
    assert partner is not None
    assert (partner.scope, partner.used) == ("partner", Decimal("60.00"))
    assert await reserve(store, "c-4", ["cu-3"], "90.00", CAPS) is None
