"""Issue 10 end to end: replicas share one quota, one owner per command, one renewal at a time.

Real broker, PostgreSQL and the sandbox (its throttle is the strict reading of the limits:
CONTRACT §6), the service as ``bss-relay serve`` subprocesses. Every figure is computed from
the sandbox's request log, never from the service's own counters. Bounds on times are loose
(the machine is shared and noisy); the figures are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import pytest

from bench.measures import busiest_window as max_in_window
from service.sandbox.gateway import IAM_OPERATION
from service.store.postgres import split_schema
from tests.e2e.conftest import (
    EventLog,
    Sandbox,
    ServeProcess,
    Spawn,
    eventually,
    new_id,
    publish,
)
from tests.e2e.test_commands import renew
from tests.e2e.test_reliability import auto_renew
from tests.sandbox import demo_ids as ids
from tests.store.conftest import POSTGRES_URL

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timing("b"),
    pytest.mark.parametrize("e2e_store", ["postgres"], indirect=True),
]


@dataclass(frozen=True)
class SandboxProcess:
    url: str


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SandboxProcess]:
    """The sandbox in a process of its own, at a raised scheduling priority where allowed (as
    the bench runs it): it stands in for a remote gateway, whose clock does not stall when
    this 2-core machine is busy with three replicas, the broker, PostgreSQL and pytest. In
    the test process its arrival instants would carry pytest's own event-loop delays."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "sandbox", "--port", "0",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, -10)
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        found = re.search(r"listening on (http://\S+)", line)
        assert found, line
        yield SandboxProcess(found.group(1))
    finally:
        proc.terminate()
        await proc.wait()


Serve = tuple[Spawn, aio_pika.abc.AbstractChannel, EventLog, str]
Row = dict[str, Any]

LIMIT = 5  # requests/s of every API, in the sandbox and in the service alike
LEASE_S = 3
RENEWAL_LATENCY_MS = 300
UTILISATION_FLOOR = 0.5
GUARD_MS = 40
STALL_429 = 3  # 429s let through: one per bucket of one stalled moment (see the test)
TAKEOVER_BOUND_S = LEASE_S + 20  # the victim's renewals of acme still run one at a time
CUSTOMERS = {ids.ACME: "acme", ids.GLOBEX: "globex", ids.INITECH: "initech"}
BACKLOG_APIS = ("auto_renewal_resources", "list_renew_rate_on_period")


def price(customer: str, resource: str) -> dict[str, Any]:
    return {
        "command_id": new_id("price"),
        "type": "inquire_price",
        "payload": {
            "customer_id": customer,
            "mode": "renewal",
            "resource_ids": [resource],
            "period_type": "month",
            "period_num": 1,
        },
    }


def backlog(n: int) -> list[dict[str, Any]]:
    """Half of it acme's, so that acme's (API, ParentUid) window binds as well as each source's
    (API, source) window: 2 sources x 5/s = 10/s per API, acme alone at most 5/s of them."""
    weights = [ids.ACME, ids.ACME, ids.GLOBEX, ids.INITECH]
    commands = []
    for i in range(n):
        customer = weights[i // 2 % 4]  # each API: half acme, a quarter each of the others
        name = CUSTOMERS[customer]
        if i % 2 == 0:
            commands.append(auto_renew(f"{name}-ecs-02", True, customer=customer))
        else:
            commands.append(price(customer, f"{name}-ecs-01"))
    return commands


async def publish_all(
    channel: aio_pika.abc.AbstractChannel, commands: list[dict[str, Any]]
) -> None:
    for start in range(0, len(commands), 200):
        await asyncio.gather(*(publish(channel, c) for c in commands[start : start + 200]))


def finished(events: EventLog, commands: list[dict[str, Any]]) -> int:
    return sum(bool(events.terminal(c["command_id"])) for c in commands)


def worst_windows(calls: list[Row], instant: str) -> dict[str, tuple[str, int]]:
    """The busiest 1-second window per (API, ParentUid) and per (API, source): (key, count).
    ``instant``: ``checked_at`` (when the throttle counted the request) or ``at`` (arrival)."""
    keys: dict[str, dict[str, list[float]]] = {
        "uid": defaultdict(list),
        "source": defaultdict(list),
    }
    for call in calls:
        if call["parent_uid"] is not None:
            keys["uid"][f"{call['api']}/{call['parent_uid']}"].append(call[instant])
        keys["source"][f"{call['api']}/{call['source']}"].append(call[instant])
    worst = {}
    for dimension, by_key in keys.items():
        counts = {key: max_in_window(sorted(instants)) for key, instants in by_key.items()}
        top = max(counts, key=lambda k: counts[k])
        worst[dimension] = (top, counts[top])
    return worst


def overlaps(calls: Iterable[Row]) -> list[tuple[Row, Row]]:
    """Pairs of calls of which the later arrived before the earlier was answered."""
    ordered = sorted(calls, key=lambda r: r["at"])
    return [(a, b) for a, b in itertools.pairwise(ordered) if b["at"] < a["done_at"]]


def utilisation(calls: list[Row], api: str) -> tuple[float, float]:
    """How much of the binding quota ``api``'s calls used while every customer still had work
    for it (from a second after the last one's first call to a second before the first one's
    last): then the two sources' (API, source) windows bind, 2 x LIMIT per second.
    (ratio, seconds measured)."""
    mine = [r for r in calls if r["api"] == api and r["status"] != 429]
    first = max(min(r["at"] for r in mine if r["parent_uid"] == c) for c in CUSTOMERS) + 1
    last = min(max(r["at"] for r in mine if r["parent_uid"] == c) for c in CUSTOMERS) - 1
    inside = sum(first <= r["at"] < last for r in mine)
    return inside / (2 * LIMIT * (last - first)), last - first


async def claimed_by(store_url: str, pid: int) -> list[str]:
    """Command ids the store says the process ``pid`` holds a lease on (owner ids are
    ``host:pid:random``)."""
    _, schema = split_schema(store_url)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        rows = await conn.fetch(
            f"SELECT command_id FROM {schema}.relay_commands WHERE owner LIKE $1",
            f"%:{pid}:%",
        )
    finally:
        await conn.close()
    return [row["command_id"] for row in rows]


def one_terminal_each(events: EventLog, commands: list[dict[str, Any]]) -> dict[str, Row]:
    for command in commands:
        terminal = {e["event_id"] for e in events.terminal(command["command_id"])}
        assert len(terminal) == 1, events.by_command.get(command["command_id"])
    return {c["command_id"]: events.terminal(c["command_id"])[0] for c in commands}


async def start_all(processes: list[ServeProcess]) -> None:
    for process in processes:
        await process.start()


@pytest.mark.timeout(150)
async def test_three_replicas_share_the_quota_and_renew_one_customer_at_a_time(
    serve: Serve, bss: Sandbox, e2e_store: str
) -> None:
    spawn, channel, events, _ = serve
    seeded = {o["order_id"] for o in (await bss.state())["orders"]}
    # every BSS API at LIMIT; IAM is not a BSS-throttled API (no published limit) and stays so
    await bss.put("limits", {"*": LIMIT, IAM_OPERATION: None})
    await bss.put(
        "faults",
        {
            "rules": [
                {"kind": "latency", "ms": RENEWAL_LATENCY_MS, "operations": ["renewal_resources"]}
            ]
        },
    )
    env = {
        "RELAY_RATE_LIMITS": json.dumps({"*": LIMIT}),
        "RELAY_LEASE_S": str(LEASE_S),
        # The guard is the operator's allowance for jitter between a replica's send and the
        # gateway's clock. Here three replicas, the broker, PostgreSQL, the sandbox and
        # pytest share 2 cores, and a request can reach the sandbox 20-50 ms after it left
        # (seen at start-up): the allowance such a path needs, as an operator would set it.
        # `bss-relay bench --scenario replicas` measures the default (10 ms, no 429).
        "RELAY_RATE_GUARD_MS": str(GUARD_MS),
    }
    replicas = [
        spawn(RELAY_SOURCE_ADDRESS=address, **env)
        for address in ("127.0.0.2", "127.0.0.2", "127.0.0.3")
    ]
    await start_all(replicas)
    victim = replicas[1]
    assert victim.proc is not None

    commands = backlog(440)  # about 22 s at 20/s (2 APIs x 2 sources x 5/s)
    began = time.monotonic()
    await publish_all(channel, commands)
    renewals: list[dict[str, Any]] = []

    async def renew_in_bursts() -> None:
        # bursts of three: without the shared lock, three replicas would renew acme at once
        for burst in range(5):
            for i in range(3):
                command = renew(ids.ACME, [("acme-ecs-01", "acme-eip-01")[(burst + i) % 2]])
                renewals.append(command)
                await publish(channel, command)
            await asyncio.sleep(5)  # over about 25 s of the backlog

    bursts = asyncio.create_task(renew_in_bursts())
    await eventually(lambda: finished(events, commands) >= len(commands) // 3, within=60)
    victim.signal(signal.SIGKILL)
    killed = time.monotonic()
    await victim.wait()
    orphans = await claimed_by(e2e_store, victim.proc.pid)
    await bursts
    everything = commands + renewals
    await eventually(lambda: finished(events, everything) == len(everything), within=120)
    drained = time.monotonic()

    outcomes = one_terminal_each(events, everything)
    took = max((events.received_at[outcomes[c]["event_id"]] - killed for c in orphans), default=0.0)
    calls = await bss.bss_requests()
    assert all("checked_at" in r for r in calls)  # none refused before the throttle
    statuses = Counter(r["status"] for r in calls)
    refused = [r for r in calls if r["status"] == 429]
    worst = worst_windows(calls, "checked_at")
    used = {api: utilisation(calls, api) for api in BACKLOG_APIS}
    acme_renewals = [
        r for r in calls if (r["api"], r["parent_uid"]) == ("renewal_resources", ids.ACME)
    ]
    print(
        f"\n{len(everything)} commands drained in {drained - began:.1f} s; statuses "
        f"{dict(statuses)}\nbusiest 1-s windows of every request sent, as the throttle counted:"
        f" {worst}; by arrival: {worst_windows(calls, 'at')}\nutilisation (ratio/seconds): "
        + ", ".join(f"{api} {r:.2f}/{s:.0f}" for api, (r, s) in used.items())
        + f"\nSIGKILL -> last of the victim's {len(orphans)} claimed commands finished:"
        f" {took:.1f} s (target: lease {LEASE_S} s + 2 s); -> backlog drained:"
        f" {drained - killed:.1f} s\n429s (API, source, s after the first request; SIGKILL at"
        f" {time.time() - (time.monotonic() - killed) - calls[0]['at']:.1f} s): "
        + str([(r["api"], r["source"], round(r["at"] - calls[0]["at"], 1)) for r in refused])
    )
    problems = []
    # guarantee 4 over every request sent: a refused one was sent too, and the API counted it.
    # This test runs in a timing lane beside the rest of the suite: a stall of the shared
    # cores can bunch one moment's requests of every replica at the sandbox (seen once: three
    # 429s at one instant, one per bucket). One refused request per bucket is let through
    # as that, counted against its window; the bench (`--scenario replicas`, a quiet
    # machine) holds 0.
    for dimension, (key, most) in worst.items():
        if most > LIMIT + 1:
            problems.append(f"{most} requests in one second for {dimension} {key}")
    refused_per_bucket = Counter((r["api"], r["source"], r["parent_uid"]) for r in refused)
    if statuses[429] > STALL_429 or any(n > 1 for n in refused_per_bucket.values()):
        problems.append(f"{statuses[429]} answers 429: {dict(refused_per_bucket)}")
    # loose: three replicas, the broker, PostgreSQL, the sandbox and pytest share 2 cores, and
    # the window holds the start-up and the SIGKILL (0.59-0.94 seen); `bss-relay bench
    # --scenario replicas` measures it (0.97-0.99). A pacing defect lands far below (0.3-0.45
    # when taken-over commands were parked behind the backlog).
    if min(ratio for ratio, _ in used.values()) < UTILISATION_FLOOR:
        problems.append(f"binding quota under-used: {used}")
    # guarantee 7, and one order per successful renewal
    if overlapping := overlaps(acme_renewals):
        problems.append(f"acme's renewals overlapped: {overlapping}")
    if (kinds := Counter(e["outcome"] for e in outcomes.values())) != {
        "succeeded": len(everything)
    }:
        problems.append(f"outcomes {kinds}")
    new_orders = {o["order_id"] for o in (await bss.state())["orders"] if o["order_type"] == 2}
    new_orders -= seeded
    reported = [
        o
        for c in renewals
        for o in (outcomes[c["command_id"]]["result"] or {}).get("order_ids", [])
    ]
    renewed = sum(r["status"] == 200 for r in acme_renewals)
    if sorted(reported) != sorted(new_orders) or not renewed == len(new_orders) == len(renewals):
        problems.append(
            f"orders {len(new_orders)}, reported {len(reported)}, renewal calls "
            f"answered 200: {renewed}, renew commands {len(renewals)}"
        )
    if not orphans:
        problems.append("the victim held no command when it was killed: nothing was taken over")
    if took > TAKEOVER_BOUND_S:
        problems.append(f"the victim's commands finished {took:.1f} s after SIGKILL")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(90)
async def test_a_frozen_replica_woken_after_its_lease_makes_no_renewal(
    serve: Serve, bss: Sandbox, amqp_url: str
) -> None:
    """A is frozen (SIGSTOP) inside a renewal, after its claim and before its money-moving
    call; the broker gives the command to B once A's connection is found dead (a 1-s AMQP
    heartbeat for A); B takes it over after A's lease and renews. Woken, A sends nothing."""
    spawn, channel, events, _ = serve
    seeded = {o["order_id"] for o in (await bss.state())["orders"]}
    # A's read of the customer's orders (the call right before the renewal) answers late
    await bss.put(
        "faults",
        {
            "rules": [
                {"kind": "latency", "ms": 2000, "count": 1, "operations": ["list_customer_orders"]}
            ]
        },
    )
    env = {"RELAY_LEASE_S": str(LEASE_S)}
    a = spawn(RELAY_SOURCE_ADDRESS="127.0.0.2", AMQP_URL=f"{amqp_url}?heartbeat=1", **env)
    b = spawn(RELAY_SOURCE_ADDRESS="127.0.0.3", **env)
    await a.start()
    command = renew(ids.ACME, ["acme-ecs-01"])
    await publish(channel, command)

    async def a_reads_orders() -> bool:
        counters = await bss.get("counters")
        return bool(counters["per_api"].get("list_customer_orders", {}).get("accepted"))

    await eventually(a_reads_orders, within=30, step=0.01)
    a.signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        await b.start()
        [done] = await events.wait_for(command["command_id"], within=LEASE_S + 20)
        taken_over = time.monotonic() - frozen
    finally:
        a.signal(signal.SIGCONT)
    assert a.proc is not None

    def a_gave_up() -> bool:  # woken, A found its lock void or its lease gone: it waits
        return any(
            '"command_waiting"' in line and command["command_id"] in line
            for line in a.log.read_text().splitlines()
        )

    await eventually(a_gave_up, within=15)
    assert a.proc.returncode is None  # alive, and carrying on

    print(f"\nB finished the frozen replica's renewal {taken_over:.1f} s after SIGSTOP")
    assert done["outcome"] == "succeeded"
    assert len(events.terminal(command["command_id"])) == 1, events.by_command
    calls = await bss.requests("renewal_resources")
    assert [(r["source"], r["status"]) for r in calls] == [("127.0.0.3", 200)]  # B's, only
    orders = {o["order_id"] for o in (await bss.state())["orders"] if o["order_type"] == 2}
    assert sorted(orders - seeded) == done["result"]["order_ids"]
