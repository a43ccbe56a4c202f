"""Issues 17 and 18 end to end: the whole quota on PostgreSQL, the API changing its mind, and a
priority lane through a saturated egress.

Real broker, PostgreSQL and the sandbox at its published limits (10/s for enabling auto-renew;
its throttle is the strict reading: a window per (API, ParentUid) and per (API, source)), the
service as ``bss-relay serve`` subprocesses. Every figure is computed from the sandbox's request
log and the events, never from the service's own counters, and printed (``pytest -s``).
The sandbox runs in a process of its own at a raised priority, as the bench runs it (see
``test_replicas``), with a generated data set of ``CUSTOMERS`` customers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
import pytest

from bench.dataset import API, BenchCustomer, generate
from bench.measures import busiest_window, estimate_errors, in_window, match_starts
from bench.processes import sandbox_process
from tests.e2e.conftest import EventLog, Sandbox, Spawn, eventually, new_id, publish
from tests.e2e.test_replicas import GUARD_MS, finished, one_terminal_each, publish_all

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timing("b"),  # the second lane (tests/conftest.py)
    pytest.mark.parametrize("e2e_store", ["postgres"], indirect=True),
]

Serve = tuple[Spawn, aio_pika.abc.AbstractChannel, EventLog, str]
Row = dict[str, Any]

LIMIT = 10  # requests/s: the published limit of enabling auto-renew, in the sandbox and service
CUSTOMERS = 12
# 429s let pass as jitter: one. The guard is for jitter between a send and the gateway's clock,
# and on this shared 2-core machine the sandbox's arrival instants carry scheduling delays
# (a lone 429 in about a third of the runs at load average 4-12 of other sessions' runs, none
# when quiet); a lone one only widens the guard. A pacing defect gives more, or a slow rate.
JITTER_429 = 1
# The services' jitter allowance as an operator sets it for a loaded host, as the other
# multi-replica e2e tests do (tests/e2e/test_replicas.py): in a lane of the parallel suite the
# default 10 ms of shared rows let two 429s through in one run in four (none alone). The bench
# runs the default.
LOADED_HOST = {"RELAY_RATE_GUARD_MS": str(GUARD_MS)}


@dataclass(frozen=True)
class SandboxProcess:
    url: str
    customers: tuple[BenchCustomer, ...]


@pytest.fixture(scope="module")
async def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxProcess]:
    """``bss-relay sandbox`` in a process of its own (its clock does not stall with pytest's
    event loop) on a data set of ``CUSTOMERS`` customers with two resources each."""
    folder = tmp_path_factory.mktemp("quota-sandbox")
    data = generate(CUSTOMERS, folder / "data.json")
    async with sandbox_process(data.path, log=folder / "sandbox.log", log_size=20_000) as (_, url):
        yield SandboxProcess(url, data.customers)


@pytest.fixture
def customers(sandbox: SandboxProcess) -> tuple[BenchCustomer, ...]:
    return sandbox.customers


def enable(customer: BenchCustomer, resource: int = 0) -> dict[str, Any]:
    return {
        "command_id": new_id("ar"),
        "type": "set_auto_renew",
        "payload": {
            "customer_id": customer.customer_id,
            "resource_id": customer.resource_ids[resource],
            "enabled": True,
        },
    }


async def calls(bss: Sandbox) -> list[Row]:
    """Every request to the API, by arrival."""
    return sorted(await bss.requests(API), key=lambda r: r["at"])


def accepted(rows: list[Row]) -> list[float]:
    return [r["at"] for r in rows if r["status"] != 429]


def busiest(rows: list[Row], key: str) -> int:
    """The most requests (refused ones too: they were sent) in a 1-s window of one bucket of
    ``key`` (``parent_uid`` or ``source``), as the throttle counted them."""
    by_key: dict[str, list[float]] = {}
    for row in rows:
        by_key.setdefault(row[key], []).append(row["checked_at"])
    return max(busiest_window(instants) for instants in by_key.values())


def steady_rate(instants: list[float]) -> tuple[float, float]:
    """Requests/s from a second after the first to a second before the last (start-up and the
    drained end left out), and the seconds measured."""
    start, end = instants[0] + 1, instants[-1] - 1
    return len(in_window(instants, start, end)) / (end - start), end - start


# -- issue 17 item 3: one busy customer on PostgreSQL gets the whole quota ------------------

HOT_COMMANDS = 250  # 25 s at the limit
LIGHT_COMMANDS = 5
DRAIN_S = 40.0  # 0.65 of the limit would still drain; before the pacing rewrite: 0.31
# The target, 0.97, is the bench's (`--scenario quota-pg`, a quiet machine: 0.99). Here, in a
# lane of the parallel suite, what the run's own sends are late by is given back, and a lone
# 429 widens the guard: 0.96 and 0.897 were seen in full runs, 0.99 alone. A pacing defect
# is far below.
USED = 0.85


@pytest.mark.timeout(75)
async def test_one_busy_customer_uses_the_whole_quota_on_postgres(
    serve: Serve, bss: Sandbox, customers: tuple[BenchCustomer, ...]
) -> None:
    spawn, channel, events, _ = serve
    await spawn(**LOADED_HOST).start()
    hot, light = customers[0], customers[1]
    commands = [enable(hot) for _ in range(HOT_COMMANDS)]
    commands[100:100] = [enable(light) for _ in range(LIGHT_COMMANDS)]  # mid-backlog
    began = time.monotonic()
    await publish_all(channel, commands)
    # measured on a deadline, not waited for: a slow pacer fails on its figure below
    with contextlib.suppress(AssertionError):
        await eventually(lambda: finished(events, commands) == len(commands), within=DRAIN_S)
    took = time.monotonic() - began

    rows = await calls(bss)
    statuses = Counter(r["status"] for r in rows)
    rate, seconds = steady_rate(accepted(rows))
    done = finished(events, commands)
    print(
        f"\n{done} of {len(commands)} commands finished in {took:.1f} s; statuses "
        f"{dict(statuses)}; steady rate {rate:.2f}/s over {seconds:.1f} s = "
        f"{rate / LIMIT:.2f} of the limit; busiest 1-s windows: customer "
        f"{busiest(rows, 'parent_uid')}, source {busiest(rows, 'source')}"
    )
    assert rate >= USED * LIMIT, f"{rate / LIMIT:.2f} of the limit"
    assert done == len(commands)
    outcomes = one_terminal_each(events, commands)
    assert Counter(e["outcome"] for e in outcomes.values()) == {"succeeded": len(commands)}
    assert statuses[429] <= JITTER_429
    assert busiest(rows, "parent_uid") <= LIMIT + statuses[429]  # only a refused one over
    assert busiest(rows, "source") <= LIMIT + statuses[429]


# -- issue 18 item 6: the deferred estimate, two replicas parking one backlog ---------------

ESTIMATED = 150  # one customer's backlog: 15 s of its bucket
# A command's `deferred` event goes once its place is settled (some 3 s after parking) if it
# is still parked then; with this threshold, the backlog's last two thirds or so get one
DEFERRED_AFTER_S = 5.0
# Of them within max(20 %, 2 s) of the actual start. The bench's target is 0.9 (issue 18 item
# 6); two replicas parking one burst at the same instant interleave it in the line in an order
# neither can know to the millisecond, and the estimate takes the other's as spread evenly
# through it: 0.59-0.96 in five runs here. Before (the estimate made at parking, each replica
# counting only its own half): 0.00 and 0.15.
ESTIMATES_WITHIN = 0.5


@pytest.mark.timeout(75)
async def test_deferred_estimates_hold_when_two_replicas_park_one_backlog(
    serve: Serve, bss: Sandbox, customers: tuple[BenchCustomer, ...]
) -> None:
    """Two replicas (two sources: the customer's bucket binds) take one customer's backlog at
    once, and each parks about half of it into the customer's one line, numbering its places
    without the other's (they are published a second later). Each ``deferred`` event's
    ``expected_start_at`` is held to the actual start of the command's request, as the sandbox
    logged it. Before: each replica counted about half of what was ahead (bench `quota-pg`, 2
    replicas: 0 of 57 within, 4-10 s early)."""
    spawn, channel, events, _ = serve
    settings = {**LOADED_HOST, "RELAY_DEFERRED_AFTER_S": str(DEFERRED_AFTER_S)}
    replicas = [spawn(RELAY_SOURCE_ADDRESS=f"127.0.0.{n}", **settings) for n in (2, 3)]
    await asyncio.gather(*(r.start() for r in replicas))
    customer = customers[3]
    commands = [enable(customer) for _ in range(ESTIMATED)]
    await publish_all(channel, commands)
    await eventually(lambda: finished(events, commands) == len(commands), within=45)

    rows = await calls(bss)
    requests = [(r["path"], r["at"]) for r in rows if r["status"] != 429]
    ends: list[tuple[str, str, float]] = []
    promised: dict[str, tuple[float, float]] = {}
    for command in commands:
        cid = command["command_id"]
        for event in events.by_command[cid]:
            at = datetime.fromisoformat(event["occurred_at"]).timestamp()
            if event["outcome"] == "deferred":
                expected = datetime.fromisoformat(event["expected_start_at"]).timestamp()
                promised.setdefault(cid, (at, expected))
            elif not event["duplicate"]:
                path = next(p for p, _ in requests if p.endswith(command["payload"]["resource_id"]))
                ends.append((cid, path, at))
    errors = estimate_errors(promised, match_starts(requests, ends))
    within = sum(ok for _, ok in errors)
    print(
        f"\n{len(promised)} deferred of {len(commands)}; {within} of {len(errors)} within"
        f" max(20 %, 2 s); errors (actual - expected, s): {sorted(round(e, 1) for e, _ in errors)}"
    )
    assert len(errors) >= 40
    assert within >= ESTIMATES_WITHIN * len(errors)


# -- issue 18 item 5: the API changes its mind ----------------------------------------------

LOWERED = 5  # requests/s the sandbox lowers the API to, without telling the service
CUT_AT_S = 3.0  # after the first request
RAISE_AT_S = 23.0  # the hold after a failed probe (25 s) sets the run's length, not this
STOP_WITHIN_S = 10.0  # the 429s stop this soon after the cut
RECOVER_WITHIN_S = 30.0  # back at 0.9 of the limit this soon after the raise
RECOVERED_OVER_S = 2.0  # ... measured over this long


def per_second(instants: list[float], origin: float) -> list[int]:
    counts = Counter(int(t - origin) for t in instants if t >= origin)
    return [counts[s] for s in range(max(counts, default=-1) + 1)]


def recovered_at(instants: list[float], since: float) -> float | None:
    """The first accepted request from which ``RECOVERED_OVER_S`` seconds hold at least 0.9 of
    the limit's worth."""
    wanted = 0.9 * LIMIT * RECOVERED_OVER_S
    after = [t for t in instants if t >= since]
    for i, start in enumerate(after):
        if len(in_window(after[i:], start, start + RECOVERED_OVER_S)) >= wanted:
            return start
    return None


@pytest.mark.timeout(90)
async def test_the_api_lowers_and_raises_its_limit_mid_run(
    serve: Serve, bss: Sandbox, customers: tuple[BenchCustomer, ...]
) -> None:
    """One customer's backlog at the limit; the sandbox lowers the API to 5/s without telling
    the service, then raises it back. The run lasts about 37 s whatever the raise's instant:
    the slow-down's failed probe (about 3 s after the cut) holds the level found for
    ``HOLD_FIRST_S`` (25 s) before it climbs again. Before the pacing rewrite: 429s until 16 s
    after the cut and 0.46 of the lowered limit."""
    spawn, channel, events, _ = serve
    await spawn(**LOADED_HOST).start()
    commands = [enable(customers[2]) for _ in range(600)]
    await publish_all(channel, commands)
    await eventually(lambda: bool(events.by_command), within=20)
    first = accepted(await calls(bss))[0]
    await asyncio.sleep(first + CUT_AT_S - time.time())
    cut = time.time()  # instants taken before the change: the sandbox's clock is this one
    await bss.put("limits", {API: LOWERED})
    await asyncio.sleep(first + RAISE_AT_S - time.time())
    raised = time.time()
    await bss.put("limits", {})

    async def back() -> bool:
        instants = accepted(await calls(bss))
        found = recovered_at(instants, raised)
        return found is not None and instants[-1] >= found + RECOVERED_OVER_S

    with contextlib.suppress(AssertionError):
        await eventually(back, within=RECOVER_WITHIN_S + RECOVERED_OVER_S + 1, step=0.5)
    rows = await calls(bss)
    instants = accepted(rows)
    refused = [r["at"] for r in rows if r["status"] == 429]
    back_at = recovered_at(instants, raised)
    calm_from = cut + STOP_WITHIN_S
    low = len(in_window(instants, calm_from, raised)) / (raised - calm_from)
    print(
        f"\ncut at {cut - first:.1f} s, raised at {raised - first:.1f} s; accepted per second:"
        f" {per_second(instants, first)}\n429s at (s): {[round(t - first, 1) for t in refused]}"
        f"\nfrom {STOP_WITHIN_S:g} s after the cut to the raise: {low:.2f}/s ="
        f" {low / LOWERED:.2f} of the lowered limit; back at 0.9 of the limit"
        f" {(back_at or math.inf) - raised:.1f} s after the raise"
    )
    outside = [t for t in refused if not cut <= t <= cut + STOP_WITHIN_S]
    assert len(outside) <= JITTER_429, (
        f"429s at {[round(t - cut, 1) for t in refused]} s after the cut"
    )
    # the target, 0.85, is the bench's (`--scenario api-mind`, a quiet machine: 4.93 of 5);
    # in a lane of the parallel suite jitter can fail a probe at the very limit, and the
    # level found holds lower (3.70/s seen). Halving again and again, before: 0.46.
    assert low >= 0.65 * LOWERED, f"{low / LOWERED:.2f} of the lowered limit"
    assert back_at is not None, "not back at 0.9 of the limit"
    assert back_at - raised <= RECOVER_WITHIN_S
    # windows of what was sent (refused requests too) never hold more than the limit in force,
    # except the requests the API refused right after the cut, when it changed without notice
    sent = [r["checked_at"] for r in rows]
    assert busiest_window(in_window(sent, 0, cut)) <= LIMIT + len(outside)
    assert busiest_window(in_window(instants, cut, raised)) <= LOWERED
    assert busiest_window(in_window(sent, raised, math.inf)) <= LIMIT + len(outside)
    outcomes = [e["outcome"] for c in commands for e in events.terminal(c["command_id"])]
    assert len(outcomes) >= len(instants) - LIMIT  # all but those still being settled
    assert set(outcomes) == {"succeeded"}


# -- issue 18 item 1: a priority lane through a saturated egress, two replicas ----------------

BACKLOG_CUSTOMERS = 10  # sharing one egress at LIMIT: each about 1/s, 30 commands deep
BACKLOG = 300  # 30 s of the egress
HIGH = 10
HIGH_EVERY_S = 1.2
SATURATED_AFTER_S = 4.0  # the highs start this long after the backlog's first request
SLOT_S = (1 + GUARD_MS / 1000) / LIMIT  # the egress's slot interval at the services' guard
# Publish -> the service (broker, read, claim in PostgreSQL): on an idle egress the request left
# 5-27 ms after the publish here. Under load a few highs take 0.1-0.15 s more (late wake-ups):
# the median is held to four intervals, every one to well below a normal wait.
PATH_S = 0.03
WORST_S = 1.0  # a normal command of the same customer waits some 20 s behind its backlog


def high(customer: BenchCustomer) -> dict[str, Any]:
    """A ``high`` command; its request is told apart in the log by its resource (the backlog
    uses the customer's first)."""
    return {**enable(customer, 1), "priority": "high"}


@pytest.mark.timeout(75)
async def test_high_commands_overtake_a_normal_backlog_on_two_replicas(
    serve: Serve, bss: Sandbox, customers: tuple[BenchCustomer, ...]
) -> None:
    """Two replicas on one egress (same source address, same egress name) drain a ``normal``
    backlog of ten customers; a ``high`` command of one of them, each 1.2 s, leaves (in the
    median) within two slot intervals of its arrival, plus the path to the service. Without
    priority it would wait behind its customer's 30 commands at about 1/s. The priority rule
    itself, in virtual time: ``tests/pacing/test_dispatcher.py``."""
    spawn, channel, events, _ = serve
    replicas = [spawn(RELAY_SOURCE_ADDRESS="127.0.0.2", **LOADED_HOST) for _ in range(2)]
    await asyncio.gather(*(r.start() for r in replicas))
    crowd = customers[:BACKLOG_CUSTOMERS]
    backlog = [enable(crowd[i % len(crowd)]) for i in range(BACKLOG)]
    await publish_all(channel, backlog)
    await eventually(lambda: bool(events.by_command), within=20)
    first = accepted(await calls(bss))[0]
    await asyncio.sleep(first + SATURATED_AFTER_S - time.time())
    highs: list[tuple[dict[str, Any], float]] = []
    for i in range(HIGH):
        command = high(crowd[i % len(crowd)])
        highs.append((command, time.time()))  # the sandbox logs on this clock
        await publish(channel, command)
        await asyncio.sleep(HIGH_EVERY_S)
    for command, _ in highs:
        await events.wait_for(command["command_id"], within=20)

    rows = await calls(bss)
    latencies = []
    for command, published in highs:
        resource = command["payload"]["resource_id"]
        # its first request (a 429 answered to it, let through as jitter below, is sent again)
        row = min((r for r in rows if r["path"].endswith(f"/{resource}")), key=lambda r: r["at"])
        latencies.append(row["at"] - published)
    begin, end = highs[0][1], highs[-1][1] + max(latencies)
    during = in_window(accepted(rows), begin, end)
    before = in_window(accepted(rows), first + 1, begin)
    total, previous = len(during) / (end - begin), len(before) / (begin - first - 1)
    ordered = sorted(latencies)
    print(
        f"\nhigh: publish -> request (s): {[round(x, 3) for x in latencies]}; slot interval"
        f" {SLOT_S:.3f} s\negress: {previous:.2f}/s before the highs, {total:.2f}/s while they"
        f" came ({HIGH} of them); accepted per second: {per_second(accepted(rows), first)}"
    )
    # Half of them within a few slot intervals of their arrival at the service, every one
    # far ahead of its customer's backlog. Two intervals is the bench's target (`--scenario
    # priority`, one replica on a quiet machine: p99 0.13 s); here, on PostgreSQL with two
    # replicas, the median is 0.18 s alone and 0.25 s was seen in a full parallel run.
    assert statistics.median(latencies) <= 4 * SLOT_S + PATH_S, latencies
    assert ordered[-1] <= WORST_S, latencies
    # the backlog lost only the slots the highs took: the egress stayed full (as full as on a
    # loaded machine it can be: see USED; the bench compares it with the rate before)
    assert total >= USED * LIMIT
    assert len(during) - HIGH >= USED * LIMIT * (end - begin) - HIGH
    refused = sum(r["status"] == 429 for r in rows)
    assert refused <= JITTER_429
    assert busiest(rows, "parent_uid") <= LIMIT + refused
    assert busiest(rows, "source") <= LIMIT + refused
    outcomes = [
        e["outcome"]
        for c in backlog + [c for c, _ in highs]
        for e in events.terminal(c["command_id"])
    ]
    assert set(outcomes) == {"succeeded"}
