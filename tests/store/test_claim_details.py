"""Claim details: written once by the claim that creates the row, in the same statement."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import asyncpg

from schemas.commands import parse_command
from service.messages.fingerprint import canonical_body, claim_details, fingerprint
from service.store import open_store
from service.store.types import ClaimOutcome, CommandStore
from tests.store.conftest import POSTGRES_URL, START, FakeClock, OpenReplica, drop_schema

LEASE = timedelta(seconds=30)

RENEW = (
    b'{"command_id":"c-1","type":"renew","partner_id":"p-1","payload":{"customer_id":"cu-1",'
    b'"resource_ids":["r-1"],"period_type":"month","period_num":1}}'
)


async def test_the_creating_claim_stores_the_details_and_later_claims_keep_them(
    store: CommandStore, clock: FakeClock
) -> None:
    command = parse_command(RENEW)
    details = claim_details(command, "erp-billing")

    first = await store.claim("c-1", "renew", owner="a", lease=LEASE, **details)

    record = first.record
    assert first.outcome is ClaimOutcome.CLAIMED
    assert record.fingerprint == fingerprint(command)
    assert (record.requested_by, record.partner_id, record.customer_id) == (
        "erp-billing",
        "p-1",
        "cu-1",
    )
    assert record.body == canonical_body(command)
    assert (record.created_at, record.finished_at) == (START, None)
    # A later claim (here after the lease expired) with other details changes none of them.
    clock.advance(LEASE * 2)
    again = await store.claim(
        "c-1",
        "renew",
        owner="b",
        lease=LEASE,
        fingerprint="sha256:other",
        requested_by="mallory",
        partner_id="p-2",
        customer_id="cu-2",
        body=b"{}",
    )
    assert again.outcome is ClaimOutcome.CLAIMED
    assert again.record.fingerprint == record.fingerprint
    assert again.record.requested_by == "erp-billing"
    assert again.record.body == record.body
    await store.finish("c-1", owner="b", event=b"{}")
    finished = await store.get("c-1")
    assert finished is not None
    assert finished.finished_at == START + LEASE * 2
    assert finished.requested_by == "erp-billing"


async def test_a_lost_claim_reports_the_stored_fingerprint(store: CommandStore) -> None:
    await store.claim("c-1", "renew", owner="a", lease=LEASE, fingerprint="sha256:one")

    lost = await store.claim("c-1", "renew", owner="b", lease=LEASE, fingerprint="sha256:two")

    assert lost.outcome is ClaimOutcome.BUSY
    assert lost.record.fingerprint == "sha256:one"


async def test_claim_without_details_stores_nulls(store: CommandStore) -> None:
    claim = await store.claim("c-1", "renew", owner="a", lease=LEASE)

    assert (claim.record.fingerprint, claim.record.requested_by, claim.record.body) == (
        None,
        None,
        None,
    )


async def test_a_claim_with_details_is_one_store_round_trip(open_replica: OpenReplica) -> None:
    store = await open_replica()
    writer = getattr(store, "_writer", None)
    if writer is None:  # PostgreSQL: count the statements sent through the pool
        counting = _CountingPool(store._pool)  # type: ignore[attr-defined]
        store._pool = counting  # type: ignore[attr-defined]
        await store.claim("c-1", "renew", owner="a", lease=LEASE, fingerprint="f", body=b"x")
        assert counting.calls == 1
        return
    before = writer.operations
    await store.claim("c-1", "renew", owner="a", lease=LEASE, fingerprint="f", body=b"x")
    assert writer.operations == before + 1


class _CountingPool:
    def __init__(self, pool: object) -> None:
        self._pool = pool
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self._pool, name)
        if name not in ("fetchrow", "fetch", "fetchval", "execute"):
            return attribute

        async def counted(*args: object) -> object:
            self.calls += 1
            return await attribute(*args)

        return counted


def test_the_fingerprint_ignores_spelling_and_ids_but_not_meaning() -> None:
    same = parse_command(
        b'{"type":"renew","command_id":"c-2","partner_id":"p-1","deadline":"2030-01-01T00:00:00Z",'
        b'"payload":{"period_num":1,"period_type":"month","resource_ids":["r-1"],'
        b'"customer_id":"cu-1","auto_pay":true}}'
    )
    other = parse_command(RENEW.replace(b'"period_num":1', b'"period_num":2'))

    assert fingerprint(same) == fingerprint(parse_command(RENEW))
    assert fingerprint(other) != fingerprint(parse_command(RENEW))
    assert fingerprint(parse_command(RENEW.replace(b'"p-1"', b'"p-2"'))) != fingerprint(same)
    repeat = parse_command(RENEW.replace(b'"period_num":1', b'"period_num":1,"allow_repeat":true'))
    assert fingerprint(repeat) != fingerprint(same)


def test_equal_amounts_and_instants_fingerprint_alike() -> None:
    def coupon(face: bytes, expire: bytes) -> bytes:
        return (
            b'{"command_id":"c","type":"issue_coupon","payload":{"quota_id":"q",'
            b'"customer_ids":["a"],"face_value":%s,"expire_time":"%s"}}' % (face, expire)
        )

    first = parse_command(coupon(b'"10.5"', b"2030-01-01T08:00:00+08:00"))
    second = parse_command(coupon(b"10.50", b"2030-01-01T00:00:00Z"))
    third = parse_command(coupon(b'"10.51"', b"2030-01-01T00:00:00Z"))

    assert fingerprint(first) == fingerprint(second)
    assert fingerprint(third) != fingerprint(second)


async def test_an_sqlite_file_from_before_the_details_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        """CREATE TABLE relay_commands (
        command_id TEXT PRIMARY KEY NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, call_started_at TEXT, note BLOB, event BLOB,
        published_at TEXT, owner TEXT, lease_until TEXT, created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL, finished_at TEXT)"""
    )
    conn.execute(
        "INSERT INTO relay_commands VALUES ('old', 'renew', 'received', 0, NULL, NULL, NULL,"
        " NULL, NULL, NULL, '2026-01-01T00:00:00.000000+00:00',"
        " '2026-01-01T00:00:00.000000+00:00', NULL)"
    )
    conn.commit()
    conn.close()

    async with open_store(f"sqlite:///{path}", clock=FakeClock()) as store:
        old = await store.get("old")
        new = await store.claim("new", "renew", owner="a", lease=LEASE, fingerprint="f")

    assert old is not None
    assert old.fingerprint is None
    assert new.record.fingerprint == "f"


async def test_a_postgres_table_from_before_the_details_is_migrated() -> None:
    schema = "relay_test_migrate_details"
    await drop_schema(schema)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(
            f"""CREATE TABLE {schema}.relay_commands (
            command_id text PRIMARY KEY, type text NOT NULL, status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0, call_started_at timestamptz, note bytea,
            event bytea, published_at timestamptz, owner text, lease_until timestamptz,
            created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
            finished_at timestamptz)"""
        )
    finally:
        await conn.close()
    try:
        async with open_store(f"{POSTGRES_URL}?schema={schema}", clock=FakeClock()) as store:
            new = await store.claim("new", "renew", owner="a", lease=LEASE, requested_by="u")
        assert new.record.requested_by == "u"
    finally:
        await drop_schema(schema)
