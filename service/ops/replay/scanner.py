"""Scanning the dead-letter queue once: list, dry-run or move each matching dead letter.

::

    bss.commands.dlq ──basic.get, held unacked──▶ matches the filter?
        no ─────────────────────────────────────────────▶ nack(requeue) when the scan ends
        yes, list or dry run ───────────────────────────▶ reported; nack(requeue) at the end
        yes, replay ──copy──▶ bss.commands (confirmed) ──▶ then ack the dead letter

**A finished command is only re-announced.** Before a match is moved (or judged, in a dry run)
its ``command_id`` is looked up in the command store (``finished``, given by the caller): the
service answers a copy of a finished command with its stored event (``duplicate: true``) and
never carries it out again, so such a match is reported WOULD_REANNOUNCE / REANNOUNCED rather
than WOULD_REPLAY / REPLAYED. The move itself is the same: the copy goes to ``bss.commands``.

Invariants:

* **Nothing is lost.** A dead letter is acked only after the broker confirmed its copy on
  ``bss.commands``, published ``mandatory`` on a channel whose returns raise, so an unroutable
  copy is an error rather than a silent drop. A crash between the two leaves a duplicate, never
  a loss; the service's idempotency check (the command store, by ``command_id``) absorbs it.
  A crash anywhere else closes the channel and the broker requeues everything this run held.
* **Each dead letter is seen at most once per run.** Everything not moved is held unacked until
  the scan ends (the broker never redelivers a message to the channel holding it), the scan
  reads at most as many messages as the queue held when it started, and a copy this run
  replayed that has come back dead (its ``x-relay-replayed-at`` is not before the run started)
  is left for a later run. ``basic.get``, not a consumer: a consumer's prefetch window would
  fill with held messages and stall. Memory is bounded by the queue's length at the start.
* **The copy is the command as its producer sent it**: the same body bytes and properties
  (message_id, correlation_id, reply_to, content type and encoding), the original routing key,
  no ``x-relay-*`` failure headers (so the service's retry budget starts afresh), plus
  ``x-relay-replayed-at`` and an incremented ``x-relay-replay-count``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import AMQPError

from service.broker.fetch import get_one
from service.broker.topology import COMMANDS_EXCHANGE, DLQ
from service.messages.intake import Rejection, read_command
from service.messages.publisher import copy_message
from service.ops.replay.letter import REPLAY_COUNT, REPLAYED_AT, DeadLetter, Filter

__all__ = ["Action", "Finished", "Report", "Result", "replay", "scan"]

RELAY_HEADER_PREFIX = "x-relay-"
PUBLISH_TIMEOUT_S = 30.0  # a confirm slower than this counts as a failed move (dead letter kept)

Clock = Callable[[], datetime]
# Whether the command store holds a finished command of this id (its terminal event stored).
Finished = Callable[[str], Awaitable[bool]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Action(StrEnum):
    LISTED = "listed"
    WOULD_REPLAY = "would replay"
    WOULD_REANNOUNCE = "would reannounce"  # finished in the store: the service re-announces it
    WOULD_REJECT = "would be rejected again"
    REPLAYED = "replayed"
    REANNOUNCED = "reannounced"  # moved back; the service answers it with the stored event
    NOT_REPLAYED = "not replayed"  # the copy was not confirmed; the dead letter stays


@dataclass(frozen=True, slots=True)
class Result:
    letter: DeadLetter
    action: Action
    detail: str = ""  # "<code> <message>" for WOULD_REJECT, the error for NOT_REPLAYED
    # The dead letter's body as the broker holds it (for a reader that shows it; never printed
    # by the CLI). Messages are held until the scan ends anyway, so keeping it costs nothing.
    body: bytes = field(default=b"", repr=False, compare=False)

    @property
    def moved(self) -> bool:
        """The copy was confirmed on ``bss.commands`` and the dead letter acked."""
        return self.action in MOVED

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "detail": self.detail or None, **self.letter.as_json()}


@dataclass(frozen=True, slots=True)
class Report:
    scanned: int  # messages read from the queue, matching or not
    results: tuple[Result, ...]  # one per matching dead letter, in queue order

    @property
    def needs_attention(self) -> bool:
        """True when some dead letter would be rejected again or could not be moved."""
        bad = (Action.WOULD_REJECT, Action.NOT_REPLAYED)
        return any(r.action in bad for r in self.results)


MOVED = frozenset({Action.REPLAYED, Action.REANNOUNCED})

Visit = Callable[[DeadLetter, AbstractIncomingMessage], Awaitable[Result]]
Progress = Callable[[Result], None]


async def _release(channel: AbstractChannel, held: list[AbstractIncomingMessage]) -> None:
    """Requeue what the scan held. On a closed channel the broker has already requeued it."""
    if channel.is_closed:
        return
    for message in held:
        await message.nack(requeue=True)


async def _walk(
    channel: AbstractChannel,
    where: Filter,
    visit: Visit,
    *,
    limit: int | None,
    started: datetime,
    progress: Progress | None,
) -> Report:
    """Read the DLQ once; ``visit`` each wanted dead letter. The one place this module settles
    messages: a moved one is acked (its copy is already confirmed), all others are held and
    requeued at the end, also when the scan fails or is cancelled."""
    queue = await channel.declare_queue(DLQ, passive=True)
    budget = queue.declaration_result.message_count or 0
    held: list[AbstractIncomingMessage] = []
    results: list[Result] = []
    scanned = 0
    try:
        while scanned < budget and (limit is None or len(results) < limit):
            message = await _next(queue, held)
            if message is None:
                break
            scanned += 1
            result = await _consider(message, where, visit, started)
            if result is not None and result.moved:
                await message.ack()
            else:
                held.append(message)
            if result is None:
                continue
            results.append(result)
            if progress is not None:
                progress(result)
            if result.action is Action.NOT_REPLAYED:
                break  # the publishing side is broken; the rest would fail alike
    finally:
        await _release(channel, held)
    return Report(scanned=scanned, results=tuple(results))


async def _next(
    queue: AbstractQueue, held: list[AbstractIncomingMessage]
) -> AbstractIncomingMessage | None:
    """``basic.get`` one message; on cancellation it is held, so that it is requeued."""
    return await get_one(queue, hold=held.append)


async def _consider(
    message: AbstractIncomingMessage, where: Filter, visit: Visit, started: datetime
) -> Result | None:
    letter = DeadLetter.from_message(message)
    came_back = letter.replayed_at is not None and letter.replayed_at >= started
    if came_back or not where.matches(letter):
        return None
    return await visit(letter, message)


@asynccontextmanager
async def _channel(
    connection: AbstractConnection, *, confirms: bool
) -> AsyncIterator[AbstractChannel]:
    # Returns raise only with confirms; a reading channel needs neither.
    channel = await connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    try:
        yield channel
    finally:
        await channel.close()


async def _list(letter: DeadLetter, message: AbstractIncomingMessage) -> Result:
    return Result(letter, Action.LISTED, body=message.body)


async def _never_finished(command_id: str) -> bool:
    return False


async def _is_finished(finished: Finished, letter: DeadLetter) -> bool:
    return letter.command_id is not None and await finished(letter.command_id)


def _judge(
    letter: DeadLetter, body: bytes, *, max_body_bytes: int, now: datetime, done: bool
) -> Result:
    """What the service would do with the body today: read it, check its deadline, and answer
    a command the store has finished with its stored event."""
    read = read_command(body, max_bytes=max_body_bytes)
    if isinstance(read, Rejection):
        return Result(letter, Action.WOULD_REJECT, f"{read.code} {read.message}", body)
    if done:  # the claim finds it finished before any deadline is looked at
        return Result(letter, Action.WOULD_REANNOUNCE, "finished: its stored event", body)
    if read.deadline is not None and read.deadline <= now:
        detail = f"RELAY.DEADLINE_PASSED deadline {read.deadline.isoformat()} has passed"
        return Result(letter, Action.WOULD_REJECT, detail, body)
    return Result(letter, Action.WOULD_REPLAY, body=body)


def _judge_with(max_body_bytes: int, clock: Clock, finished: Finished) -> Visit:
    async def visit(letter: DeadLetter, message: AbstractIncomingMessage) -> Result:
        done = await _is_finished(finished, letter)
        return _judge(letter, message.body, max_body_bytes=max_body_bytes, now=clock(), done=done)

    return visit


def _replay_headers(
    message: AbstractIncomingMessage, letter: DeadLetter, now: datetime
) -> dict[str, Any]:
    headers = {
        name: value
        for name, value in (message.headers or {}).items()
        if not name.startswith(RELAY_HEADER_PREFIX) and name != "x-death"
    }
    headers[REPLAYED_AT] = now.isoformat()
    headers[REPLAY_COUNT] = letter.replay_count + 1
    return headers


async def _move(
    exchange: AbstractExchange, letter: DeadLetter, message: AbstractIncomingMessage, now: datetime
) -> Result:
    """Publish the copy and wait for the broker's confirm. A refusal, a return (unroutable),
    a lost channel or a timeout is NOT_REPLAYED: the caller keeps the dead letter."""
    copy = copy_message(message, _replay_headers(message, letter, now))
    try:
        await exchange.publish(
            copy, routing_key=letter.routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_S
        )
    except (AMQPError, TimeoutError) as exc:
        return Result(letter, Action.NOT_REPLAYED, repr(exc), message.body)
    return Result(letter, Action.REPLAYED, body=message.body)


def _move_with(exchange: AbstractExchange, clock: Clock, finished: Finished) -> Visit:
    async def visit(letter: DeadLetter, message: AbstractIncomingMessage) -> Result:
        # Looked up before the move: once the copy is out, the service may finish it.
        done = await _is_finished(finished, letter)
        result = await _move(exchange, letter, message, clock())
        if done and result.action is Action.REPLAYED:
            return Result(letter, Action.REANNOUNCED, "finished: its stored event", result.body)
        return result

    return visit


# --- public API ---------------------------------------------------------------------------------


async def scan(
    connection: AbstractConnection,
    where: Filter | None = None,
    *,
    limit: int | None = None,
    clock: Clock = _utcnow,
    progress: Progress | None = None,
) -> Report:
    """List the dead letters matching ``where`` (at most ``limit``); changes nothing."""
    async with _channel(connection, confirms=False) as channel:
        return await _walk(
            channel, where or Filter(), _list, limit=limit, started=clock(), progress=progress
        )


async def replay(
    connection: AbstractConnection,
    where: Filter | None = None,
    *,
    max_body_bytes: int,
    dry_run: bool = False,
    limit: int | None = None,
    clock: Clock = _utcnow,
    progress: Progress | None = None,
    finished: Finished = _never_finished,
) -> Report:
    """Move the dead letters matching ``where`` (at most ``limit``) back to ``bss.commands``.

    With ``dry_run`` nothing changes: each match is read with today's schemas and reported as
    WOULD_REPLAY, WOULD_REANNOUNCE (``finished`` says the store has finished its command) or
    WOULD_REJECT. Otherwise each match is REPLAYED or REANNOUNCED (copy confirmed, dead letter
    acked) or NOT_REPLAYED (dead letter kept; the run stops there).
    """
    started = clock()
    async with _channel(connection, confirms=False) as reader:
        if dry_run:
            return await _walk(
                reader,
                where or Filter(),
                _judge_with(max_body_bytes, clock, finished),
                limit=limit,
                started=started,
                progress=progress,
            )
        async with _channel(connection, confirms=True) as writer:
            exchange = await writer.get_exchange(COMMANDS_EXCHANGE)
            return await _walk(
                reader,
                where or Filter(),
                _move_with(exchange, clock, finished),
                limit=limit,
                started=started,
                progress=progress,
            )
