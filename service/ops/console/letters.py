"""The dead letters as the console shows and replays them, over ``service.ops.replay``.

* ``BrokerLink`` — one plain broker connection, opened again after it was lost (the scanner
  wants a plain one: after a reconnect its held delivery tags would belong to a dead channel).
* ``DeadLetters`` — the count, the newest N, one command's, and replays by the replay tool's
  rules (``service.ops.replay.audited``). One walk over the queue at a time in this process:
  a walk holds the messages it read until it ends, so two at once would each miss the other's.
* ``view_body`` — a body as readable text that stays text: JSON pretty-printed, other UTF-8 as
  is, anything else with its bytes escaped; control and format characters made visible.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError

from service.broker.connection import connect_once
from service.broker.topology import DLQ
from service.ops.replay.audited import finished_in
from service.ops.replay.letter import DeadLetter, Filter
from service.ops.replay.scanner import Action, Result, replay, scan
from service.store.types import CommandStore

__all__ = [
    "BodyView",
    "BrokerLink",
    "BrokerUnavailable",
    "DeadLetters",
    "Letter",
    "ReplayAnswer",
    "ReplayFailed",
    "view_body",
]

BODY_VIEW_CHARS = 64 * 1024  # longer bodies are cut in the view (the size is shown)


class BrokerUnavailable(RuntimeError):
    """The broker or ``bss.commands.dlq`` could not be used; the message names no URL."""


class ReplayFailed(RuntimeError):
    """A copy was not confirmed by the broker: the dead letter stays, the replay stopped."""

    def __init__(self, detail: str, answers: list[ReplayAnswer], moved: list[Result]) -> None:
        super().__init__(detail)
        self.answers = answers  # what was done before it stopped
        self.moved = moved


class BrokerLink:
    """One plain connection to ``AMQP_URL`` for the console's short DLQ walks."""

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url
        self._connection: AbstractConnection | None = None
        self._opening = asyncio.Lock()

    async def connection(self) -> AbstractConnection:
        async with self._opening:
            if self._connection is None or self._connection.is_closed:
                try:
                    self._connection = await connect_once(self._url)
                except (AMQPError, OSError) as exc:  # the URL may hold a password: not shown
                    why = f"the broker is unreachable ({type(exc).__name__})"
                    raise BrokerUnavailable(why) from exc
            return self._connection

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()


@dataclass(frozen=True, slots=True)
class BodyView:
    kind: Literal["json", "text", "bytes"]
    text: str
    size: int  # bytes
    truncated: bool


def _visible(text: str) -> str:
    """Control, format and separator characters (a bidi override, say) shown as escapes;
    newlines and tabs kept."""
    out: list[str] = []
    for char in text:
        if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


def view_body(body: bytes, *, max_chars: int = BODY_VIEW_CHARS) -> BodyView:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        shown = body[:max_chars].decode("utf-8", "backslashreplace")
        return BodyView("bytes", _visible(shown), len(body), len(body) > max_chars)
    kind: Literal["json", "text"] = "text"
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        kind = "json"
    except (ValueError, RecursionError):
        pass
    return BodyView(kind, _visible(text[:max_chars]), len(body), len(text) > max_chars)


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter: what it says about itself, and its body."""

    letter: DeadLetter
    body: bytes

    @property
    def customer_id(self) -> str | None:
        customers = self.letter.customer_ids
        return customers[0] if len(customers) == 1 else None

    @property
    def dead_lettered_at(self) -> datetime | None:
        return self.letter.last_failure

    def view(self) -> BodyView:
        return view_body(self.body)

    def as_json(self) -> dict[str, Any]:
        at = self.dead_lettered_at
        return {
            "command_id": self.letter.command_id,
            "type": self.letter.type,
            "customer_id": self.customer_id,
            "reason": self.letter.reason,
            "dead_lettered_at": None if at is None else at.isoformat(),
        }


ApiAction = Literal["would_replay", "replayed", "would_reannounce", "reannounced", "not_found"]
_API_ACTION: dict[Action, ApiAction] = {
    Action.WOULD_REPLAY: "would_replay",
    Action.WOULD_REJECT: "would_replay",  # it would go back, and be rejected again: see detail
    Action.WOULD_REANNOUNCE: "would_reannounce",
    Action.REPLAYED: "replayed",
    Action.REANNOUNCED: "reannounced",
}


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    command_id: str
    action: ApiAction
    detail: str | None

    @classmethod
    def of(cls, command_id: str, result: Result) -> ReplayAnswer:
        detail = result.detail or None
        if result.action is Action.WOULD_REJECT:
            detail = f"would be rejected again: {result.detail}"
        return cls(command_id, _API_ACTION[result.action], detail)

    def as_json(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "action": self.action, "detail": self.detail}


def _by_time(results: Sequence[Result]) -> list[Result]:
    """By last failure, newest first; those without one last; on a tie the later in the
    queue first (the queue is in arrival order)."""

    def key(result: Result) -> tuple[bool, float]:
        at = result.letter.last_failure
        return (at is None, 0.0 if at is None else -at.timestamp())

    return sorted(reversed(results), key=key)


def _answers(wanted: Iterable[str], results: Sequence[Result]) -> list[ReplayAnswer]:
    """One answer per dead letter of each wanted id, in the order asked; ``not_found`` for an
    id with none."""
    by_id: dict[str, list[Result]] = {}
    for result in results:
        if result.letter.command_id is not None:
            by_id.setdefault(result.letter.command_id, []).append(result)
    answers: list[ReplayAnswer] = []
    for command_id in wanted:
        found = by_id.get(command_id)
        if not found:
            answers.append(ReplayAnswer(command_id, "not_found", None))
        answers.extend(ReplayAnswer.of(command_id, r) for r in found or ())
    return answers


class DeadLetters:
    def __init__(self, broker: BrokerLink, store: CommandStore, *, max_body_bytes: int) -> None:
        self._broker = broker
        self._store = store
        self._max_body_bytes = max_body_bytes
        self._walking = asyncio.Lock()

    async def count(self) -> int:
        """Messages in ``bss.commands.dlq`` now (ready ones: a walk in progress holds some)."""
        connection = await self._broker.connection()
        try:
            channel = await connection.channel(publisher_confirms=False)
            async with channel:
                queue = await channel.declare_queue(DLQ, passive=True)
                return queue.declaration_result.message_count or 0
        except (AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"{DLQ} could not be read ({type(exc).__name__})") from exc

    async def _scan(self, where: Filter) -> list[Result]:
        connection = await self._broker.connection()
        async with self._walking:
            try:
                report = await scan(connection, where)
            except (AMQPError, OSError) as exc:
                raise BrokerUnavailable(f"{DLQ} could not be read ({type(exc).__name__})") from exc
        return list(report.results)

    async def newest(self, limit: int) -> list[Letter]:
        """The ``limit`` most recently dead-lettered, newest first. The whole queue is read
        (it is ordered by arrival, which a replayed-and-failed-again letter breaks)."""
        results = _by_time(await self._scan(Filter()))
        return [Letter(r.letter, r.body) for r in results[:limit]]

    async def of_command(self, command_id: str) -> list[Letter]:
        results = _by_time(await self._scan(Filter(command_ids=frozenset({command_id}))))
        return [Letter(r.letter, r.body) for r in results]

    async def replay(
        self, command_ids: Sequence[str], *, dry_run: bool
    ) -> tuple[list[ReplayAnswer], list[Result]]:
        """The replay tool on the dead letters of ``command_ids``: the answers, in the order
        asked, and the results that moved a dead letter (for the audit). Raises
        ``ReplayFailed`` when a copy was not confirmed (the run stopped there)."""
        wanted = list(dict.fromkeys(command_ids))
        connection = await self._broker.connection()
        async with self._walking:
            try:
                report = await replay(
                    connection,
                    Filter(command_ids=frozenset(wanted)),
                    max_body_bytes=self._max_body_bytes,
                    dry_run=dry_run,
                    finished=finished_in(self._store),
                )
            except (AMQPError, OSError) as exc:
                raise BrokerUnavailable(f"{DLQ} could not be used ({type(exc).__name__})") from exc
        moved = [r for r in report.results if r.moved]
        failed = [r for r in report.results if r.action is Action.NOT_REPLAYED]
        if failed:
            done = _answers(wanted, [r for r in report.results if r.moved])
            raise ReplayFailed(
                f"the broker did not confirm a copy: {failed[0].detail}", done, moved
            )
        return _answers(wanted, report.results), moved


def with_dead_letter(answer: dict[str, Any], letters: Sequence[Letter]) -> dict[str, Any]:
    """``why``'s answer, completed from the DLQ itself: a command the store has no trace of
    (``not_seen``: rejected before any replica claimed it, or dead-lettered by a replica that
    did not record it) whose message sits in ``bss.commands.dlq`` is ``dead_lettered`` with the
    reason. Every other state is the store's word and stays as it is."""
    if answer.get("state") != "not_seen" or not letters:
        return answer
    newest = letters[0]
    at = newest.dead_lettered_at
    return {
        **answer,
        "state": "dead_lettered",
        "reason": newest.letter.reason,
        "message": newest.letter.reason_message,
        "dead_lettered_at": None if at is None else at.isoformat(),
    }
