"""One trace, two backends: the in-process buckets (``service.pacing.local``) and the rows in
PostgreSQL (``service/pacing/postgres.sql``) must take the same decisions, step for step.

Each trace is random but seeded: arrivals of several replicas (owners, egresses, guards) over
many customers and two operations, with priorities and give-backs; 429s blamed on the
customer, the egress or both, some answering requests sent before a cut or a widening; late
sends; idle gaps long enough for guards to narrow and buckets to be swept; and limits changed
mid-run. Every answer is compared (slot instants, grants, rates, guards), and the whole state
of every bucket after each step. The clock is virtual (``now`` passed in), so the comparison is
exact up to float rounding, not timing.

The last tests prove the comparison has teeth: a backend whose rule drifted by a little (the
cut halves by 0.6 instead of 0.5; a lone 429 widens the guard by 6 ms instead of 5) is caught.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from service.pacing import local
from service.pacing.buckets import (
    FLOOR_RATE,
    Candidate,
    Offer,
    Priority,
    Reservation,
    Throttle,
    Throttled,
)
from service.pacing.local import LocalBuckets
from service.pacing.postgres import PACING, PostgresBuckets
from service.store import open_store
from service.store.types import CommandStore
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

APIS = ("renewal_resources", "list_rate_on_period_detail")
UIDS = tuple(f"cust-{n}" for n in range(7))
T0 = 1_800_000_000.0  # epoch seconds, as the server's clock would give


@dataclass(frozen=True)
class Replica:
    owner: str
    egress: str
    guard_min: float
    guard_max: float


REPLICAS = (
    Replica("r-a", "egress-1", 0.002, 0.05),
    Replica("r-b", "egress-1", 0.010, 0.05),
    Replica("r-c", "egress-2", 0.002, 0.03),
)


@pytest.fixture
async def pg_store() -> AsyncIterator[CommandStore]:
    schema = postgres_schema()
    try:
        async with open_store(f"{POSTGRES_URL}?schema={schema}", components=(PACING,)) as store:
            yield store
    finally:
        await drop_schema(schema)


def close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return close(float(a), float(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


class Trace:
    """A seeded random trace of operations on the buckets."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = T0
        self.limits = {api: self.rng.choice((2.0, 5.0, 10.0)) for api in APIS}
        self.customer_limits: dict[tuple[str, str], float] = {}

    def advance(self) -> None:
        roll = self.rng.random()
        if roll < 0.02:
            self.now += self.rng.choice((61.0, 125.0, 3700.0))  # guards narrow; buckets swept
        elif roll < 0.2:
            self.now += self.rng.uniform(0.5, 3.0)
        else:
            self.now += self.rng.uniform(0.0, 0.25)

    def limit(self, api: str, uid: str) -> float:
        return self.customer_limits.get((api, uid), self.limits[api])

    def step(self) -> tuple[str, Any]:
        self.advance()
        rng = self.rng
        roll = rng.random()
        api, replica = rng.choice(APIS), rng.choice(REPLICAS)
        if roll < 0.04:  # a live limit changes
            if rng.random() < 0.5:
                self.limits[api] = rng.choice((1.0, 3.0, 5.0, 8.0, 10.0, 20.0))
            else:
                self.customer_limits[(api, rng.choice(UIDS))] = rng.choice((0.5, 2.0, 4.0))
            return ("limits", None)
        if roll < 0.22:
            return ("throttled", self._throttle(api, replica))
        if roll < 0.27:
            late = [(rng.choice(UIDS), rng.uniform(0.0, 0.03)) for _ in range(rng.randint(1, 3))]
            return ("give_back", (api, replica.egress, late))
        if roll < 0.28:
            return ("sweep", self.now)
        return ("reserve", self._offer(api, replica))

    def _offer(self, api: str, replica: Replica) -> Offer:
        rng = self.rng
        uids = rng.sample(UIDS, rng.randint(0, 4))
        candidates = [
            Candidate(
                uid,
                rng.choice((Priority.LOW, Priority.NORMAL, Priority.NORMAL, Priority.HIGH)),
                self.limit(api, uid),
                more=rng.random() < 0.3,
            )
            for uid in uids
        ]
        candidates.sort(key=lambda c: -c.priority)
        late = []
        if rng.random() < 0.2:
            late = [(rng.choice(UIDS), rng.uniform(0.0, 0.02))]
        return Offer(
            api=api,
            egress=replica.egress,
            egress_limit=self.limits[api],
            candidates=candidates,
            within=rng.choice((0.0, 0.02, 0.05, 0.5)),
            owner=replica.owner,
            guard_min=replica.guard_min,
            guard_max=replica.guard_max,
            late=late,
            now=self.now,
        )

    def _throttle(self, api: str, replica: Replica) -> Throttle:
        rng = self.rng
        uid = rng.choice(UIDS)
        sent_at = None if rng.random() < 0.1 else self.now - rng.uniform(0.0, 1.5)
        return Throttle(
            api=api,
            uid=uid,
            egress=replica.egress,
            blame=rng.choice(("customer", "egress", "both")),
            customer_limit=self.limit(api, uid),
            egress_limit=self.limits[api],
            sent_at=sent_at,
            guard_min=replica.guard_min,
            guard_max=replica.guard_max,
            now=self.now,
        )


async def apply(buckets: LocalBuckets | PostgresBuckets, op: str, arg: Any) -> Any:
    if op == "reserve":
        answer: Reservation = await buckets.reserve(arg)
        return asdict(answer)
    if op == "throttled":
        throttled: Throttled = await buckets.throttled(arg)
        return asdict(throttled)
    if op == "give_back":
        await buckets.give_back(*arg)
        return None
    if op == "sweep":
        return await buckets.sweep(arg)
    return None


FIELDS = (
    "tat", "cap", "good", "step", "cut_at", "probe_at", "hold_s", "want_prio", "want_at",
    "want_until", "want_by", "used_at", "guard", "guard_min", "throttled_at", "widened_at",
    "narrowed_at",
)  # fmt: skip


def local_state(buckets: LocalBuckets) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {key: {f: getattr(b, f) for f in FIELDS} for key, b in buckets.items()}


async def shared_state(store: CommandStore) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows = await store.pool.fetch(f"SELECT api, kind, name, {', '.join(FIELDS)} FROM relay_pacing")  # type: ignore[attr-defined]
    return {(r["api"], r["kind"], r["name"]): {f: r[f] for f in FIELDS} for r in rows}


async def first_difference(seed: int, steps: int, store: CommandStore) -> str | None:
    """Run one trace through both backends; where they first differ, or None."""
    await store.pool.execute("TRUNCATE relay_pacing")  # type: ignore[attr-defined]
    trace = Trace(seed)
    mine, theirs = LocalBuckets(), PostgresBuckets(store.pool)  # type: ignore[attr-defined]
    for n in range(steps):
        op, arg = trace.step()
        a, b = await apply(mine, op, arg), await apply(theirs, op, arg)
        if not same(a, b):
            return f"seed {seed}, step {n}, {op}({arg}):\n  local  {a}\n  shared {b}"
        if n % 10 == 0 or op != "reserve":
            sa, sb = local_state(mine), await shared_state(store)
            if not same(sa, sb):
                diff = {k: (sa.get(k), sb.get(k)) for k in sa.keys() | sb.keys()
                        if not same(sa.get(k), sb.get(k))}  # fmt: skip
                return f"seed {seed}, step {n} after {op}: states differ {diff}"
    return None


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
async def test_both_backends_decide_alike(seed: int, pg_store: CommandStore) -> None:
    assert await first_difference(seed, 400, pg_store) is None


async def test_traces_reach_every_rule(pg_store: CommandStore) -> None:
    """The traces are not idle: they grant, refuse, widen, cut, hold and climb back."""
    seen: set[str] = set()
    for seed in SEEDS:
        trace, mine = Trace(seed), LocalBuckets()
        for _ in range(400):
            op, arg = trace.step()
            answer = await apply(mine, op, arg)
            if op == "reserve":
                seen.add("granted" if answer["granted"] else "refused")
            if op == "throttled":
                seen.update(k for k in ("explained", "customer_cut", "egress_cut") if answer[k])
            for _, b in mine.items():
                if b.hold_s > 0:
                    seen.add("held")
                if 0 < b.cap < math.inf and b.good > 0:
                    seen.add("climbing")
                if b.want_prio:
                    seen.add("wanted")
    assert seen >= {
        "granted", "refused", "explained", "customer_cut", "egress_cut", "held", "climbing",
        "wanted",
    }  # fmt: skip


async def test_a_drifted_cut_is_caught(
    pg_store: CommandStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = local.cut

    def drifted(b: local.Bucket, limit: float, now: float, sent_at: float | None) -> bool:
        was = b.cap
        done = original(b, limit, now, sent_at)
        if done and b.good == 0 and was > 0:
            b.cap = max(FLOOR_RATE, local.rate(local.Bucket(cap=was), limit) * 0.6)
        return done

    monkeypatch.setattr(local, "cut", drifted)
    found = [await first_difference(seed, 400, pg_store) for seed in SEEDS]
    assert any(found), "a cut of 0.6 instead of 0.5 went unnoticed"


async def test_a_drifted_guard_is_caught(
    pg_store: CommandStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "GUARD_STEP_S", 0.006)
    found = [await first_difference(seed, 400, pg_store) for seed in SEEDS]
    assert any(found), "a guard step of 6 ms instead of 5 went unnoticed"
