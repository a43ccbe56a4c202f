"""Saturated buckets, measured from the sandbox's request log: how much of a quota the service
uses (``hot-key``, ``many-keys``) and how it splits one egress bucket (``fair-share``).

Each scenario publishes a backlog larger than the service can send during the measurement,
waits until every customer involved has had a request accepted, skips ``warmup_s``, and counts
the accepted requests in the next ``window_s`` seconds. The baseline of a rate is the configured
limit (the allowed rate); of a share, the equal share. The busiest sliding 1-second window is
taken over every request sent for the key (accepted or not) during the whole run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.dataset import API, BenchCustomer, auto_renew_command
from bench.measures import busiest_window, in_window, jain_index, shares
from bench.report import Figure, Row, ratio
from bench.stage import Sizes, Stage
from service.api.operations import OPERATIONS

__all__ = ["fair_share", "hot_key", "many_keys"]

LIMIT = float(OPERATIONS[API].limit_per_second or 0)  # the published limit, used as configured
UTILISATION_TARGET = 0.95
SHARE_TOLERANCE = 0.10  # a share within ±10 % of the equal share counts as equal
JAIN_TARGET = 0.99
FIRST_REQUEST_TIMEOUT_S = 120.0
LOG_SETTLE_S = 1.0  # the sandbox logs a request when it is answered


@dataclass(frozen=True, slots=True)
class Traffic:
    """The scenario's API requests from the sandbox log, and the measuring window."""

    rows: list[dict[str, Any]]
    start: float
    end: float

    def sent(self, uid: str | None = None) -> list[float]:
        return [r["at"] for r in self.rows if uid is None or r["parent_uid"] == uid]

    def accepted(self, uid: str | None = None) -> list[float]:
        return [
            r["at"]
            for r in self.rows
            if (uid is None or r["parent_uid"] == uid) and 200 <= (r["status"] or 0) < 300
        ]

    def accepted_in_window(self, uid: str | None = None) -> list[float]:
        return in_window(self.accepted(uid), self.start, self.end)

    def window_uids(self) -> list[str]:
        return [
            r["parent_uid"]
            for r in self.rows
            if self.start <= r["at"] < self.end and 200 <= (r["status"] or 0) < 300
        ]


async def _api_requests(stage: Stage, since: float, uids: set[str]) -> list[dict[str, Any]]:
    rows = await stage.sandbox.requests(since)
    return [r for r in rows if r["api"] == API and r["parent_uid"] in uids]


async def _measure(stage: Stage, since: float, customers: Sequence[BenchCustomer]) -> Traffic:
    """Wait for the steady window (after every customer's first accepted request) to pass."""
    uids = {c.customer_id for c in customers}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_REQUEST_TIMEOUT_S
    while True:
        first: dict[str, float] = {}
        for r in await _api_requests(stage, since, uids):
            if 200 <= (r["status"] or 0) < 300:
                first.setdefault(r["parent_uid"], r["at"])
        if len(first) == len(uids):
            break
        if loop.time() > deadline:
            raise TimeoutError(f"only {len(first)} of {len(uids)} customers reached the API")
        await asyncio.sleep(0.25)
    start = max(first.values()) + stage.sizes.warmup_s
    end = start + stage.sizes.window_s
    stage.say(f"measuring {stage.sizes.window_s:g} s of steady traffic")
    await asyncio.sleep(max(0.0, end - time.time()) + LOG_SETTLE_S)
    return Traffic(await _api_requests(stage, since, uids), start, end)


def _backlog(label: str, customer: BenchCustomer, count: int) -> list[tuple[str, bytes]]:
    ids = [f"{label}-{customer.customer_id[-6:]}-{n}" for n in range(count)]
    return [(cid, auto_renew_command(cid, customer, n)) for n, cid in enumerate(ids)]


def _interleave(backlogs: Sequence[list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    longest = max(len(b) for b in backlogs)
    return [b[n] for n in range(longest) for b in backlogs if n < len(b)]


def _utilisation(scenario: str, figure: str, achieved: float, detail: dict[str, Any]) -> Row:
    return Row(
        scenario,
        figure,
        Figure(achieved, "req/s", 2),
        Figure(LIMIT, "req/s", 0),
        ratio(achieved, LIMIT, 3),
        f"≥ {UTILISATION_TARGET}",
        achieved / LIMIT >= UTILISATION_TARGET,
        detail,
    )


def _busiest(scenario: str, figure: str, busiest: int) -> Row:
    return Row(
        scenario,
        figure,
        Figure(busiest, "req"),
        Figure(LIMIT, "req"),
        ratio(busiest, LIMIT),
        "≤ 1 (never above the limit)",
        busiest <= LIMIT,
    )


def _throttled(scenario: str, throttled: int) -> Row:
    return Row(scenario, "HTTP 429 answers", Figure(throttled), Figure(0), "—", "0", throttled == 0)


async def hot_key(stage: Stage) -> list[Row]:
    """One customer with a saturated backlog: utilisation of its (API, ParentUid) quota."""
    hot = stage.customers[0]
    since = time.time()
    backlog = _backlog("hot", hot, stage.sizes.hot_backlog)
    async with stage.service("hot-key"):
        stage.say(f"hot-key: {len(backlog)} commands for one customer")
        await stage.driver.publish_many(backlog)
        traffic = await _measure(stage, since, [hot])
    achieved = len(traffic.accepted_in_window()) / stage.sizes.window_s
    sent = len(traffic.sent())
    detail = {"window_s": stage.sizes.window_s, "backlog": len(backlog), "sent_by_window_end": sent}
    name = "hot key"
    return [
        _utilisation(name, "requests/s on one (API, ParentUid), steady window", achieved, detail),
        _busiest(name, "busiest sliding 1-s window, whole run", busiest_window(traffic.sent())),
        _throttled(name, await stage.sandbox.throttled(API)),
    ]


async def many_keys(stage: Stage) -> list[Row]:
    """Many customers with backlogs: together they are bounded by the (API, egress) bucket."""
    keys = stage.customers[1 : 1 + stage.sizes.many_keys]
    since = time.time()
    backlog = _interleave([_backlog("many", c, stage.sizes.many_per_key) for c in keys])
    async with stage.service("many-keys"):
        stage.say(f"many-keys: {len(backlog)} commands over {len(keys)} customers")
        await stage.driver.publish_many(backlog)
        traffic = await _measure(stage, since, keys)
    achieved = len(traffic.accepted_in_window()) / stage.sizes.window_s
    per_key = max(busiest_window(traffic.sent(c.customer_id)) for c in keys)
    served = len(set(traffic.window_uids()))
    name = f"{len(keys)} keys"
    detail = {"keys_served_in_window": served, "backlog": len(backlog)}
    return [
        _utilisation(name, "requests/s through the one (API, egress) bucket", achieved, detail),
        _busiest(
            name, "busiest sliding 1-s window, all keys (egress)", busiest_window(traffic.sent())
        ),
        _busiest(name, "busiest sliding 1-s window, any one key", per_key),
        _throttled(name, await stage.sandbox.throttled(API)),
    ]


async def fair_share(stage: Stage) -> list[Row]:
    """One customer bursts, the others queue a little each: shares of the egress bucket."""
    sizes = stage.sizes
    contenders = stage.customers[: sizes.fair_customers]
    burst = _backlog("fair", contenders[0], sizes.fair_burst)
    others = _interleave([_backlog("fair", c, sizes.fair_each) for c in contenders[1:]])
    since = time.time()
    async with stage.service("fair-share"):
        stage.say(
            f"fair-share: a burst of {len(burst)}, then {sizes.fair_each} each "
            f"for {len(contenders) - 1} more customers"
        )
        await stage.driver.publish_many(burst + others)
        traffic = await _measure(stage, since, contenders)
    split = shares(traffic.window_uids(), [c.customer_id for c in contenders])
    achieved = len(traffic.accepted_in_window()) / sizes.window_s
    return [
        *_share_rows(split, sizes),
        _utilisation("fair share", "requests/s, all four together", achieved, {}),
    ]


def _share_rows(split: dict[str, float], sizes: Sizes) -> list[Row]:
    """One row per customer (the first is the one with the burst), then Jain's index."""
    equal = 1 / len(split)
    rows = []
    for n, share in enumerate(split.values()):
        queued = sizes.fair_burst if n == 0 else sizes.fair_each
        rows.append(
            Row(
                "fair share",
                f"share of the egress bucket, customer {chr(ord('A') + n)} ({queued:,} queued)",
                Figure(share * 100, "%", 1),
                Figure(equal * 100, "%", 1),
                ratio(share, equal),
                f"1 ± {SHARE_TOLERANCE}",
                abs(share / equal - 1) <= SHARE_TOLERANCE,
            )
        )
    index = jain_index(split)
    rows.append(
        Row(
            "fair share",
            "Jain's fairness index of the shares",
            Figure(index, "", 3),
            Figure(1.0, "", 3),
            ratio(index, 1.0, 3),
            f"≥ {JAIN_TARGET}",
            index >= JAIN_TARGET,
        )
    )
    return rows
