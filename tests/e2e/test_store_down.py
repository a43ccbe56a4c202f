"""The store is down (issue 10, item 5): a private PostgreSQL stopped under a running
``bss-relay serve`` with a backlog, kept down ~8 s, then started again.

While it is down no API request is sent (the quota cannot be checked, so it is not spent
blind), ``/healthz`` answers 503 naming the store, and nothing is lost: every command ends
with exactly one terminal event once it is back, none of them failed or unknown because of
the outage. Work resumes within 5 s of PostgreSQL accepting connections again.

The PostgreSQL here is the test's own (initdb + pg_ctl in a temporary directory, on a free
port): the shared one on 5432 is never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from tests.conftest import unique_name
from tests.e2e.conftest import EventLog, Sandbox, Spawn, adopted_orders, eventually, publish
from tests.e2e.test_crash import mixed_commands

# timing (it times the resumption) but a group of its own: it runs beside the timing group,
# not after it (the two private-PostgreSQL runs are ~40 s)
pytestmark = [pytest.mark.e2e, pytest.mark.timing, pytest.mark.xdist_group("store-down")]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DOWN_S = 8.0
RESUME_WITHIN_S = 5.0
IN_FLIGHT_MARGIN_S = 0.5  # a request granted its slot just before the stop may still arrive
HEALTH_AFTER_S = 3.0  # from the stop on, /healthz must name the store at the latest by then


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PrivatePostgres:
    """A throw-away PostgreSQL cluster: trust auth, its socket in its own directory."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:  # the server refuses to run as root
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    async def _run(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._as_owner(*argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise AssertionError(f"{argv[0]} failed: {out.decode(errors='replace')}")

    async def init(self) -> None:
        await self._run(
            str(PG_BIN / "initdb"), "-D", str(self.root / "data"), "-A", "trust",
            "-U", "postgres", "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    async def start(self) -> None:
        """Returns once the server accepts connections (``pg_ctl -w``)."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        await self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "start",
        )  # fmt: skip

    async def stop(self, mode: str = "fast") -> None:
        await self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop"
        )


@pytest.fixture(scope="module")
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    if not (PG_BIN / "pg_ctl").exists():
        pytest.fail(f"PostgreSQL 15 binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    server = PrivatePostgres(root, free_port())
    try:
        await server.init()
        await server.start()
        yield server
    finally:
        if (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError):
                await server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def e2e_store(private_postgres: PrivatePostgres) -> str:
    """This module's STORE_URL: a fresh schema in the private server (dropped with it)."""
    return f"{private_postgres.url}?schema={unique_name('relay', sep='_')}"


@dataclass
class Probe:
    at: float
    status: int
    problems: list[str]


async def probe_health(http: aiohttp.ClientSession, url: str) -> Probe:
    at = time.time()
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            body: dict[str, Any] = await resp.json()
            return Probe(at, resp.status, list(body.get("problems", [])))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Probe(at, 0, [f"no answer: {exc!r}"])


def terminal_count(events: EventLog, ids: list[str]) -> int:
    return sum(1 for c in ids if events.terminal(c))


# fast: the server terminates every session (AdminShutdown) and stops; immediate: it stops
# at once, sessions cut without a word, and recovers from its WAL at the next start.
@pytest.mark.parametrize("stop_mode", ["fast", "immediate"])
async def test_store_down_makes_no_call_says_why_and_resumes(
    serve: tuple[Spawn, aio_pika.abc.AbstractChannel, EventLog, str],
    bss: Sandbox,
    private_postgres: PrivatePostgres,
    stop_mode: str,
) -> None:
    spawn, channel, events, _ = serve
    started = time.monotonic()
    seeded = {o["order_id"] for o in (await bss.state())["orders"]}
    await bss.put("limits", {"*": 200})
    await bss.put("faults", {"rules": [{"kind": "latency", "ms": 30}]})
    port = free_port()
    health_url = f"http://127.0.0.1:{port}/healthz"
    # the default lease (the fixture's is 2 s): commands claimed when the store went away keep
    # their lease past its return, and wait it out as "busy" without holding anything up
    relay = spawn(RELAY_RATE_LIMITS='{"*": 5}', RELAY_METRICS_PORT=str(port), RELAY_LEASE_S="10")
    await relay.start()
    commands = mixed_commands(150)
    ids = [c["command_id"] for c in commands]
    for command in commands:
        await publish(channel, command)

    async with aiohttp.ClientSession() as http:
        await eventually(lambda: terminal_count(events, ids) >= 20, within=60)
        assert (await probe_health(http, health_url)).status == 200
        probes: list[Probe] = []

        async def watch_health() -> None:
            while True:
                probes.append(await probe_health(http, health_url))
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch_health())
        try:
            stop_began = time.time()
            await private_postgres.stop(stop_mode)
            stopped = time.time()
            done_at_stop = terminal_count(events, ids)
            await asyncio.sleep(DOWN_S)
            # The server accepts connections a little before pg_ctl sees it: "down" ends and
            # the resumption is timed from the start of the restart (which takes ~0.1 s).
            up = time.time()
            await private_postgres.start()
            started_in = time.time() - up
            done_at_restart = terminal_count(events, ids)
            first_event_after: float | None = None
            while terminal_count(events, ids) < len(ids) and time.time() < up + 120:
                if first_event_after is None and terminal_count(events, ids) > done_at_restart:
                    first_event_after = time.time() - up
                await asyncio.sleep(0.05)
            if first_event_after is None and terminal_count(events, ids) > done_at_restart:
                first_event_after = time.time() - up
            await eventually(lambda: any(p.at > up and p.status == 200 for p in probes))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    healthy_again = min(p.at - up for p in probes if p.at > up and p.status == 200)

    requests = await bss.requests()
    during = [r for r in requests if stopped + IN_FLIGHT_MARGIN_S < r["at"] < up]
    after = sorted(r["at"] - up for r in requests if r["at"] >= up)
    first_request_after = after[0] if after else None
    print(
        f"\nstore down {up - stop_began:.2f} s (stop took {stopped - stop_began:.2f} s, "
        f"restart {started_in:.2f} s); "
        f"terminal at stop {done_at_stop}/{len(ids)}, at restart {done_at_restart}; "
        f"resume: first API request {first_request_after} s, first terminal event "
        f"{first_event_after} s after the restart began; healthy again "
        f"{healthy_again:.2f} s after; "
        f"total {time.monotonic() - started:.1f} s"
    )
    down = [p for p in probes if stopped <= p.at < up]
    print("health while down:", Counter((p.status, tuple(p.problems)) for p in down))

    # no API request (BSS or IAM) while the store was down
    assert during == [], during
    # /healthz said why, from a few seconds after the stop until the restart
    late = [p for p in down if p.at >= stopped + HEALTH_AFTER_S]
    assert late, "no health probe while the store was down"
    assert all(p.status == 503 for p in late), [(p.at - stopped, p.status) for p in late]
    assert all(any("store" in text.lower() for text in p.problems) for p in late), late
    # nothing lost: exactly one terminal event per command, none failed or unknown
    missing = [c for c in ids if not events.terminal(c)]
    assert not missing, f"{len(missing)} commands without a terminal event"
    for command_id in ids:
        terminal = {e["event_id"] for e in events.terminal(command_id)}
        assert len(terminal) == 1, (command_id, events.by_command[command_id])
    outcomes = Counter(events.terminal(c)[0]["outcome"] for c in ids)
    assert set(outcomes) <= {"succeeded", "partial"}, outcomes
    # work resumed within 5 s of PostgreSQL's return
    assert done_at_restart < len(ids), "the backlog was finished before the outage ended"
    assert first_request_after is not None
    assert first_request_after <= RESUME_WITHIN_S
    assert first_event_after is not None
    assert first_event_after <= RESUME_WITHIN_S
    assert healthy_again <= RESUME_WITHIN_S
    # and spent at most once: one order per renew command, one coupon per coupon command
    state = await bss.state()
    new_orders = {o["order_id"] for o in state["orders"] if o["order_type"] == 2} - seeded
    adopted = adopted_orders(events, commands)
    assert len(adopted) == len(set(adopted))
    assert new_orders == set(adopted)
    by_memo = Counter(
        c["memo"].rsplit("[bss-relay:", 1)[1].rstrip("]")
        for c in state["coupons"]
        if c["memo"] and "[bss-relay:" in c["memo"]
    )
    coupon_ids = [c["command_id"] for c in commands if c["type"] == "issue_coupon"]
    assert all(by_memo[c] == 1 for c in coupon_ids), by_memo
