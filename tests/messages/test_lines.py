"""Parking lines on the real broker (``service.messages.lines``): pulled as room frees up, not
pulled while paused, found through the store by another replica, swept for deadlines, and
deleted once empty."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import pytest
import structlog.testing
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from service.broker.topology import Topology
from service.messages import lines as lines_module
from service.messages.lines import LineHooks, LineKey, Lines, line_queue
from service.messages.whereabouts import Whereabouts
from service.store import open_store
from service.store.steering import Publication
from service.store.types import CommandStore

KEY: LineKey = ("renewal_resources", "cust-1", 2)


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(amqp_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def topology() -> Topology:
    """Queue names of this test's own (the session's vhost is shared)."""
    return Topology(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CommandStore]:
    async with open_store(f"sqlite:///{tmp_path / 'store.db'}") as opened:
        yield opened


@dataclass
class Replica:
    """A Lines of one replica, with what it was handed."""

    lines: Lines
    got: list[AbstractIncomingMessage] = field(default_factory=list)
    done: list[Callable[[], None]] = field(default_factory=list)
    room: dict[LineKey, int] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def settle(self, n: int = 1) -> None:
        for message, done in zip(self.got[:n], self.done[:n], strict=True):
            await message.ack()
            done()
        del self.got[:n], self.done[:n]

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        async def enough() -> None:
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), within)


Make = Callable[[], Replica]


@pytest.fixture
async def make(
    connection: AbstractRobustConnection, store: CommandStore, topology: Topology, amqp_url: str
) -> AsyncIterator[Make]:
    tasks: list[asyncio.Task[None]] = []
    made: list[Replica] = []

    def one() -> Replica:
        replica: Replica

        def deliver(message: AbstractIncomingMessage, done: Callable[[], None]) -> None:
            replica.got.append(message)
            replica.done.append(done)
            replica.arrived.set()

        hooks = LineHooks(
            room=lambda key: replica.room.get(key, 2),
            deliver=deliver,
            paused=lambda _api, customer: customer in replica.paused,
        )
        lines = Lines(connection, topology, store.steering, hooks=hooks, whereabouts=Whereabouts())
        replica = Replica(lines)
        made.append(replica)
        tasks.append(asyncio.create_task(lines.run()))
        return replica

    yield one
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for replica in made:
        await replica.lines.aclose()
    # the test's line, if it is still there, on a connection of its own (the test's own may be
    # reconnecting after its lines were cancelled mid-request)
    cleanup = await aio_pika.connect(amqp_url)
    async with cleanup:
        channel = await cleanup.channel()
        await channel.queue_delete(line_queue(topology, KEY))


async def park(
    replica: Replica, connection: AbstractRobustConnection, n: int, **kw: object
) -> None:
    queue = await replica.lines.queue(KEY)
    channel = await connection.channel()
    for i in range(n):
        body = json.dumps({"n": i}).encode()
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
        deadline = kw.get("deadline")
        replica.lines.parked(KEY, deadline if isinstance(deadline, datetime) else None)
        replica.lines.landed(KEY)  # as the settler says once the copy is in the queue
    await channel.close()


async def publish_deltas(replica: Replica, store: CommandStore, owner: str) -> None:
    now = datetime.now(UTC)
    await store.steering.publish(
        Publication(owner, "e", now, now + timedelta(seconds=10), lines=replica.lines.deltas())
    )


async def test_a_line_is_pulled_as_room_frees_up(
    make: Make, connection: AbstractRobustConnection
) -> None:
    replica = make()
    await park(replica, connection, 5)
    replica.lines.poke()
    await replica.wait_for(2)
    await asyncio.sleep(0.3)
    assert len(replica.got) == 2  # its room, no more
    assert [json.loads(m.body)["n"] for m in replica.got] == [0, 1]  # first in, first out
    await replica.settle(1)
    await replica.wait_for(2)
    assert json.loads(replica.got[-1].body)["n"] == 2
    assert replica.lines.waiting(KEY) == 2


async def test_a_paused_line_waits_and_goes_on_when_resumed(
    make: Make, connection: AbstractRobustConnection
) -> None:
    replica = make()
    replica.paused.add("cust-1")
    await park(replica, connection, 3)
    replica.lines.poke()
    await asyncio.sleep(1.5)  # more than a tick
    assert replica.got == []
    replica.paused.clear()
    replica.lines.poke()
    await replica.wait_for(2, within=2.0)


async def test_another_replica_pulls_what_one_parked(
    make: Make, connection: AbstractRobustConnection, store: CommandStore
) -> None:
    parker, puller = make(), make()
    parker.room[KEY] = 0  # it parks, but takes nothing back (it might have died)
    await park(parker, connection, 3)
    await publish_deltas(parker, store, "parker")
    await puller.wait_for(2, within=3.0)  # found in the store within a tick
    assert [row["parked"] for row in await store.steering.lines()] == [3]


async def test_a_paused_line_is_swept_when_a_deadline_passes(
    make: Make, connection: AbstractRobustConnection, store: CommandStore
) -> None:
    replica = make()
    replica.paused.add("cust-1")
    await park(replica, connection, 4, deadline=datetime.now(UTC) + timedelta(seconds=2))
    await publish_deltas(replica, store, "r")
    await asyncio.sleep(1.2)
    assert replica.got == []  # paused, its deadline not passed yet
    await replica.wait_for(4, within=3.0)  # each once, whatever the room
    [row] = await store.steering.lines()
    assert row["next_deadline"] is None  # the ones parked again bring theirs again


async def test_a_sweep_pulls_every_command_in_the_queue_however_many_were_counted(
    make: Make, connection: AbstractRobustConnection, store: CommandStore
) -> None:
    """The sweeping replica's count of a line can lag: another replica parked into it and
    its publication is not read yet. The late command is the last one parked; a sweep of the
    counted number of commands stops before it, clears the deadline, and the late command
    waits, not rejected, until the customer resumes (seen in the two-replica pause test)."""
    replica = make()
    replica.paused.add("cust-1")
    queue = await replica.lines.queue(KEY)
    channel = await connection.channel()
    for i in range(3):  # another replica's, its publication not read yet: counted nowhere
        await channel.default_exchange.publish(aio_pika.Message(b"%d" % i), routing_key=queue)
    await channel.close()
    await park(replica, connection, 1, deadline=datetime.now(UTC) + timedelta(seconds=0.5))
    await publish_deltas(replica, store, "r")
    await replica.wait_for(4, within=4.0)


async def test_a_paused_line_is_swept_by_one_replica_only(
    make: Make,
    connection: AbstractRobustConnection,
    store: CommandStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every replica reads the line's deadline; the one that clears it sweeps. Two sweeps pull
    each command twice, and the line's pulled count, run past the places of the commands
    parked again, takes them out of ``quota show`` and ``why`` while they wait."""
    first, second = make(), make()
    for replica in (first, second):
        replica.paused.add("cust-1")
    clear = store.steering.clear_line_deadline

    async def slowly(*args: str) -> object:  # a store round trip as slow as a tick
        await asyncio.sleep(1.2)
        return await clear(*args)

    monkeypatch.setattr(store.steering, "clear_line_deadline", slowly)
    with structlog.testing.capture_logs() as logs:
        await park(first, connection, 4, deadline=datetime.now(UTC) + timedelta(seconds=1.5))
        await publish_deltas(first, store, "first")  # both read the deadline at their next tick
        await asyncio.sleep(4.5)
    assert len(first.got) + len(second.got) == 4  # each once
    assert [log["event"] for log in logs].count("line_swept") == 1


async def test_an_empty_line_is_deleted(
    make: Make,
    connection: AbstractRobustConnection,
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lines_module, "EMPTY_S", 0.5)
    replica = make()
    await park(replica, connection, 1)
    replica.lines.poke()
    await replica.wait_for(1)
    await replica.settle(1)
    await asyncio.sleep(2.5)
    channel = await connection.channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(line_queue(topology, KEY), passive=True)


async def test_a_command_still_on_its_way_when_the_line_looked_empty_is_pulled(
    make: Make, connection: AbstractRobustConnection
) -> None:
    """The place is taken when the command is decided to be parked; if the line is found
    empty before the copy lands, the copy must still be pulled once it does (it was lost
    in the line before: the empty queue made its count look pulled)."""
    replica = make()
    queue = await replica.lines.queue(KEY)
    replica.lines.parked(KEY, None)  # decided, not published yet
    replica.lines.poke()
    await asyncio.sleep(0.3)  # a pull finds the queue empty meanwhile
    assert replica.got == []
    channel = await connection.channel()
    await channel.default_exchange.publish(aio_pika.Message(b'{"n": 0}'), routing_key=queue)
    await channel.close()
    replica.lines.landed(KEY)
    await replica.wait_for(1, within=3.0)


async def test_a_line_is_kept_while_a_command_pulled_from_it_is_not_settled(
    make: Make,
    connection: AbstractRobustConnection,
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleting the queue would drop the pulled copy if this replica died before settling it
    (the broker requeues an unsettled message into its queue, which must still be there)."""
    monkeypatch.setattr(lines_module, "EMPTY_S", 0.5)
    replica = make()
    await park(replica, connection, 1)
    replica.lines.poke()
    await replica.wait_for(1)
    await asyncio.sleep(2.5)  # empty for five times EMPTY_S, its one command unsettled
    channel = await connection.channel()
    await channel.declare_queue(line_queue(topology, KEY), passive=True)  # still there
    await channel.close()
