"""What a replica publishes (``service.ops.presence``): its waiting set as changes, its
buckets, and nothing again when nothing moved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from service.broker.topology import Topology
from service.messages.admission import WaitingRoom
from service.messages.lines import LineHooks, Lines
from service.messages.whereabouts import Noted, Whereabouts
from service.ops.presence import Presence
from service.pacing.buckets import Priority
from service.pacing.dispatcher import Dispatcher, PacingConfig
from service.pacing.limits import Limits, LiveLimit
from service.pacing.local import LocalBuckets
from service.store import open_store
from service.store.runner import Statement
from service.store.types import CommandStore
from tests.conftest import unique_name

API = "renewal_resources"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CommandStore]:
    async with open_store(f"sqlite:///{tmp_path / 'store.db'}") as opened:
        yield opened


class Counting:
    """The steering store, counting the waiting rows each publication writes."""

    def __init__(self, store: CommandStore) -> None:
        self.written: list[int] = []
        runner = store.steering._runner
        original = runner.run

        async def run(statements: list[Statement]) -> None:
            rows = [len(s.many or ()) for s in statements if "INSERT INTO relay_waiting" in s.sql]
            self.written.append(sum(rows))
            await original(statements)

        runner.run = run  # type: ignore[method-assign,assignment]


async def test_the_waiting_set_goes_as_changes(store: CommandStore) -> None:
    limits = Limits({API: 1.0})
    dispatcher = Dispatcher(LocalBuckets(), limits, config=PacingConfig(egress="e", owner="r-1"))
    whereabouts = Whereabouts()
    presence = Presence(
        store.steering, dispatcher, limits, whereabouts=whereabouts, identity=("r-1", "e")
    )
    counting = Counting(store)
    waiters = [
        asyncio.create_task(
            dispatcher.turn(API, "c-1", priority=Priority.HIGH, command_id=f"h-{n}")
        )
        for n in range(3)
    ]
    await asyncio.sleep(0.05)
    now = time.time()
    whereabouts.note(Noted("parked-1", "waiting", API, "customer", "c-2", 2, now, now + 30))

    await presence.publish()
    rows = {r["command_id"]: r for r in await store.steering.waiting()}
    assert set(rows) == {"h-1", "h-2", "parked-1"}  # h-0 got its slot at once
    assert rows["h-2"]["priority"] == "high"
    assert rows["h-2"]["owner"] == "r-1"

    await presence.publish()  # nothing moved: nothing written again
    assert counting.written[-1] == 0

    whereabouts.back("parked-1")
    await presence.publish()
    assert {r["command_id"] for r in await store.steering.waiting()} == {"h-1", "h-2"}
    [report] = [r for r in await store.steering.reports() if r["kind"] == "customer"]
    assert (report["key"], report["limit_rate"], report["rate"]) == ("c-1", 1.0, 1.0)
    assert [r["owner"] for r in await store.steering.replicas()] == ["r-1"]

    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await dispatcher.aclose()
    await presence.retire()
    assert await store.steering.replicas() == []


async def test_a_parked_command_is_shown_as_things_stand_now(
    store: CommandStore, amqp_url: str
) -> None:
    """Parked at 1/s behind 9 others, then paused, then resumed at a live 0.5/s: ``why``
    says paused while it is, and expects it when the bucket's pace now brings it (not when
    it was parked)."""
    limits = Limits({API: 1.0})
    paused: set[str] = set()
    dispatcher = Dispatcher(LocalBuckets(), limits, config=PacingConfig(egress="e", owner="r-1"))
    whereabouts = Whereabouts()
    connection = await aio_pika.connect_robust(amqp_url)
    is_paused = lambda _api, customer: customer in paused  # noqa: E731
    hooks = LineHooks(room=lambda _key: 0, deliver=lambda *_: None, paused=is_paused)
    lines = Lines(
        connection, Topology(unique_name("t")), store.steering, hooks=hooks, whereabouts=whereabouts
    )
    room = WaitingRoom(dispatcher, lines, is_paused, 2.0)
    presence = Presence(
        store.steering, dispatcher, limits, whereabouts, identity=("r-1", "e"), parked=room
    )
    key = (API, "c-1", Priority.NORMAL)
    for _ in range(10):
        place = lines.parked(key, None)
        lines.landed(key)
    now = time.time()
    whereabouts.note(Noted("last", "waiting", API, "customer", "c-1", 2, now, now + 10, key, place))

    async def shown() -> dict[str, object]:
        await presence.publish()
        [row] = [r for r in await store.steering.waiting() if r["command_id"] == "last"]
        return dict(row)

    row = await shown()
    assert row["state"] == "waiting"
    assert 8 <= (row["expected_at"] - datetime.now(UTC)).total_seconds() <= 10  # type: ignore[operator]
    paused.add("c-1")
    row = await shown()
    assert (row["state"], row["expected_at"]) == ("paused", None)
    paused.clear()
    limits.replace_live([LiveLimit(API, "customer", "c-1", 0.5)])
    row = await shown()
    assert row["state"] == "waiting"
    assert 17 <= (row["expected_at"] - datetime.now(UTC)).total_seconds() <= 20  # type: ignore[operator]
    await dispatcher.aclose()
    await lines.aclose()
    await connection.close()


async def test_a_backlog_whose_pace_wavers_is_not_written_again_whole(
    store: CommandStore, amqp_url: str
) -> None:
    """200 commands parked in one line at 1/s, then the pace wavers by 5 % (a live limit of
    0.95/s): their expected starts move by up to 10.5 s, each under a tenth of its wait, and
    the next publication writes none of them. Written again whenever they moved more than
    1 s, a backlog of 5,000 was written whole every second, and building those rows held the
    event loop 0.1-0.27 s each time: the egress sent nothing meanwhile (the priority bench:
    7.7 of 10 requests/s, high commands' p99 0.53 s). A real change is written whole."""
    limits = Limits({API: 1.0})
    dispatcher = Dispatcher(LocalBuckets(), limits, config=PacingConfig(egress="e", owner="r-1"))
    whereabouts = Whereabouts()
    connection = await aio_pika.connect_robust(amqp_url)
    never = lambda _api, _customer: False  # noqa: E731
    hooks = LineHooks(room=lambda _key: 0, deliver=lambda *_: None, paused=never)
    lines = Lines(
        connection, Topology(unique_name("t")), store.steering, hooks=hooks, whereabouts=whereabouts
    )
    presence = Presence(
        store.steering,
        dispatcher,
        limits,
        whereabouts,
        identity=("r-1", "e"),
        parked=WaitingRoom(dispatcher, lines, never, 2.0),
    )
    counting = Counting(store)
    key = (API, "c-1", Priority.NORMAL)
    now = time.time()
    for n in range(200):
        place = lines.parked(key, None)
        lines.landed(key)
        whereabouts.note(
            Noted(f"c-{n}", "waiting", API, "customer", "c-1", 2, now, now + n, key, place)
        )
    await presence.publish()
    assert counting.written[-1] == 200
    limits.replace_live([LiveLimit(API, "customer", "c-1", 0.95)])
    await presence.publish()
    assert counting.written[-1] == 0
    limits.replace_live([LiveLimit(API, "customer", "c-1", 0.5)])
    await presence.publish()
    assert counting.written[-1] >= 199  # the first one's wait, under 2 s, moved under 1 s
    await dispatcher.aclose()
    await lines.aclose()
    await connection.close()
