"""The message pipeline and the one settlement point, against fakes of what they talk to.

A real command store (SQLite in memory), a scripted API, a publisher that records what it is
asked to publish, and messages whose channel can close: what is published, in which order,
and whether the message is acked, for every way a message can end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiormq
import pytest
from aio_pika.abc import AbstractIncomingMessage

from handlers.errors import ApiRefused, ApiUnavailable, RelayError, StoreUnavailable
from handlers.ports import BssApi
from schemas.bss import AutoRenewalResourcesReq
from service.api.client import CallScope
from service.broker.headers import H
from service.broker.topology import Topology
from service.guardrails.gate import PolicyGate
from service.guardrails.policy import PolicyHolder
from service.messages.admission import Admission, WaitingRoom
from service.messages.announcer import Announcer
from service.messages.claiming import Claiming
from service.messages.failures import Failures, RetryPolicy
from service.messages.leases import Leases
from service.messages.lines import LineHooks, Lines
from service.messages.pipeline import Pipeline, Steps
from service.messages.publisher import DeadLetterReason
from service.messages.reading import Reader
from service.messages.running import Runner
from service.messages.settlement import Books, Settled, Settler, SettleRetry
from service.messages.whereabouts import Whereabouts
from service.pacing.dispatcher import Dispatcher
from service.store import open_store
from service.store.locks import LocalLocks, RenewalLocks
from service.store.types import CommandStore
from service.telemetry.metrics import Metrics
from tests.fakes import dispatcher as make_dispatcher

OWNER = "test-owner"
LEASE = timedelta(seconds=10)


class FakeMessage:
    """The parts of an aio-pika incoming message the service uses; its channel can close."""

    def __init__(
        self, body: bytes, *, headers: dict[str, Any] | None = None, redelivered: bool = False
    ) -> None:
        self.body = body
        self.headers = headers or {}
        self.redelivered = redelivered
        self.user_id: str | None = None
        self.message_id: str | None = None
        self.correlation_id: str | None = None
        self.reply_to: str | None = None
        self.routing_key = "command.x"
        self.content_type = "application/json"
        self.content_encoding: str | None = None
        self.timestamp: datetime | None = None
        self.type: str | None = None
        self.app_id: str | None = None
        self.priority: int | None = None
        self.channel_open = True
        self.settled: list[str] = []

    @property
    def channel(self) -> object:
        if not self.channel_open:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        return object()

    async def ack(self) -> None:
        _ = self.channel
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        _ = self.channel
        self.settled.append(f"nack(requeue={requeue})")


@dataclass
class RecordingPublisher:
    """Records every publish; ``failures`` scripts what the next publishes raise."""

    log: list[tuple[str, Any]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    on_publish: Any = None

    def _maybe_fail(self) -> None:
        if self.on_publish is not None:
            self.on_publish()
        if self.failures:
            raise self.failures.pop(0)

    async def ready(self) -> None:
        return None

    async def event(
        self,
        body: bytes,
        *,
        routing_key: str,
        event_id: str,
        correlation_id: str | None,
        reply_to: str | None,
    ) -> None:
        self._maybe_fail()
        self.log.append(("event", json.loads(body)))

    async def dead_letter(self, message: Any, reason: DeadLetterReason) -> None:
        self._maybe_fail()
        self.log.append(("dead_letter", reason))

    async def delay(
        self,
        message: Any,
        *,
        seconds: float,
        reason: DeadLetterReason | None,
        extra_headers: dict[str, Any] | None = None,
        at_least: bool = False,
    ) -> int:
        self._maybe_fail()
        self.log.append(("delay", (seconds, reason, extra_headers)))
        return 250

    async def park(self, message: Any, *, queue: str, extra_headers: dict[str, Any]) -> None:
        self._maybe_fail()
        self.log.append(("park", (queue, extra_headers)))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]

    def events(self) -> list[dict[str, Any]]:
        return [what for kind, what in self.log if kind == "event"]


class ScriptedApi:
    """Only the auto-renew calls exist; ``errors`` scripts what the next calls raise."""

    def __init__(self) -> None:
        self.errors: list[RelayError] = []
        self.calls = 0

    def scoped(self, scope: CallScope) -> BssApi:
        return cast(BssApi, _Scoped(self, scope))


class _Scoped:
    def __init__(self, api: ScriptedApi, scope: CallScope) -> None:
        self._api, self._scope = api, scope

    async def enable_auto_renew(
        self, customer_id: str, resource_id: str, body: AutoRenewalResourcesReq
    ) -> None:
        self._scope.sent += 1
        self._api.calls += 1
        if self._api.errors:
            raise self._api.errors.pop(0)

    async def cancel_auto_renew(self, customer_id: str, resource_id: str) -> None:
        await self.enable_auto_renew(customer_id, resource_id, AutoRenewalResourcesReq())


def now() -> datetime:
    return datetime.now(UTC)


class _Channel:
    is_closed = False

    async def declare_queue(self, name: str, **_: Any) -> None:
        return None


class _Connection:
    """Enough of a broker connection for parking lines to declare their queues."""

    async def channel(self) -> _Channel:
        return _Channel()


LINE = ("auto_renewal_resources", "cust", 2)


async def nobody_else_waits(*_: object) -> tuple[list[tuple[str, datetime | None, bool]], int]:
    return [], 1  # nothing published yet; one egress


@dataclass
class Rig:
    store: CommandStore
    publisher: RecordingPublisher
    api: ScriptedApi
    pipeline: Pipeline = field(init=False)
    announcer: Announcer = field(init=False)
    paused_customers: set[str] = field(default_factory=set)

    def paused(self, _api: str, customer: str) -> bool:
        return customer in self.paused_customers

    def __post_init__(self) -> None:
        self.wire()

    def wire(
        self,
        *,
        dispatcher: Dispatcher | None = None,
        hold_s: float = 2.0,
        locks: RenewalLocks | None = None,
        claims: Any = None,
        deferred_after_s: float = 10.0,
    ) -> None:
        """The pipeline as the runtime composes it, with these parts swapped in (``claims``:
        the store the leases are taken in)."""
        locks = LocalLocks() if locks is None else locks  # (an empty LocalLocks is falsy)
        metrics = Metrics()
        claims = self.store if claims is None else claims
        leases = Leases(claims, locks, owner=OWNER, lease=LEASE, metrics=metrics)
        retry = RetryPolicy(max_attempts=3, base_s=0.25, max_s=1.0)
        dispatcher = make_dispatcher({"*": 1000}) if dispatcher is None else dispatcher
        whereabouts = Whereabouts()
        hooks = LineHooks(room=lambda _line: 2, deliver=lambda _m, _d: None, paused=self.paused)
        lines = Lines(
            _Connection(),  # type: ignore[arg-type]
            Topology("t"),
            self.store.steering,
            hooks=hooks,
            whereabouts=whereabouts,
        )
        self.lines, self.whereabouts = lines, whereabouts
        waiting = WaitingRoom(dispatcher, lines, self.paused, hold_s)
        admission = Admission(waiting, clock=now)
        self.announcer = Announcer(
            asyncio.Queue(),
            waiting,
            whereabouts,
            self.publisher,  # type: ignore[arg-type]
            nobody_else_waits,
            deferred_after_s=deferred_after_s,
        )
        failures = Failures(
            retry, lease=LEASE, metrics=metrics, clock=now, parking=admission.paused
        )
        settler = Settler(
            store=self.store,
            publisher=self.publisher,  # type: ignore[arg-type]
            leases=leases,
            books=Books(now, lines, whereabouts, self.store.steering),
            metrics=metrics,
            retry=SettleRetry(broker_s=0.5),
        )
        steps = Steps(
            read=Reader({"p-1": self.api}, max_body_bytes=256 * 1024),  # type: ignore[dict-item]
            admission=admission,
            claim=Claiming(leases, clock=now),
            run=Runner(
                store=self.store,
                locks=locks,
                gate=PolicyGate(PolicyHolder(None, None), self.store),
                failures=failures,
                owner=OWNER,
                clock=now,
            ),
        )
        self.pipeline = Pipeline(steps, settler=settler, leases=leases, failures=failures)

    async def process(self, message: FakeMessage) -> Settled:
        return await self.pipeline.process(cast(AbstractIncomingMessage, message))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with open_store("sqlite://:memory:") as store:
        yield Rig(store, RecordingPublisher(), ScriptedApi())


def auto_renew(command_id: str = "c-1", **payload: Any) -> bytes:
    return json.dumps(
        {
            "command_id": command_id,
            "type": "set_auto_renew",
            "payload": {"customer_id": "cust", "resource_id": "r-1", "enabled": True, **payload},
        }
    ).encode()


async def test_success_is_stored_then_published_then_marked_then_acked(rig: Rig) -> None:
    message = FakeMessage(auto_renew())
    message.user_id = "erp-billing"
    assert await rig.process(message) is Settled.SETTLED
    [event] = rig.publisher.events()
    assert (event["outcome"], event["attempts"], event["requested_by"]) == (
        "succeeded",
        1,
        "erp-billing",
    )
    assert message.settled == ["ack"]
    record = await rig.store.get("c-1")
    assert record is not None
    assert record.published
    assert record.event is not None
    assert json.loads(record.event)["event_id"] == event["event_id"]


async def test_a_closed_channel_abandons_the_message_to_redelivery(rig: Rig) -> None:
    message = FakeMessage(auto_renew())

    def close_channel() -> None:  # the connection drops as the event goes out
        message.channel_open = False
        raise ConnectionResetError("connection lost")

    rig.publisher.on_publish = close_channel
    assert await rig.process(message) is Settled.ABANDONED
    assert message.settled == []  # never settled on another channel
    assert rig.publisher.events() == []
    record = await rig.store.get("c-1")
    assert record is not None
    assert record.event is not None
    assert not record.published

    # the claim was given back, so the redelivery does not wait out a lease: it publishes
    # the stored event as itself (same event id), and the API is not called again
    rig.publisher.on_publish = None
    again = FakeMessage(auto_renew())
    assert await rig.process(again) is Settled.SETTLED
    [event] = rig.publisher.events()
    assert event["duplicate"] is False
    assert event["event_id"] == json.loads(record.event)["event_id"]
    assert again.settled == ["ack"]
    assert rig.api.calls == 1


async def test_a_publish_that_fails_while_the_channel_lives_is_tried_again(rig: Rig) -> None:
    rig.publisher.failures = [aiormq.exceptions.ChannelInvalidStateError("restoring")] * 2
    message = FakeMessage(auto_renew())
    assert await rig.process(message) is Settled.SETTLED
    assert len(rig.publisher.events()) == 1
    assert message.settled == ["ack"]


async def test_a_broker_that_never_comes_back_leaves_the_message_stuck_not_acked(
    rig: Rig,
) -> None:
    rig.publisher.failures = [ConnectionResetError("gone")] * 1000
    message = FakeMessage(auto_renew())
    assert await rig.process(message) is Settled.STUCK
    assert message.settled == []


async def test_retry_is_delayed_with_reason_and_request_count_and_claim_given_back(
    rig: Rig,
) -> None:
    rig.api.errors = [ApiUnavailable("CBC.0999", "busy")]
    message = FakeMessage(auto_renew())
    assert await rig.process(message) is Settled.SETTLED
    [(kind, (_seconds, reason, headers))] = rig.publisher.log
    assert kind == "delay"
    assert reason.code == "CBC.0999"
    assert reason.attempts == 1
    assert headers[H.REQUESTS] == 1
    assert message.settled == ["ack"]
    record = await rig.store.get("c-1")
    assert record is not None
    assert record.lease_until is None

    # the retried delivery reports both requests
    retried = FakeMessage(auto_renew(), headers={H.ATTEMPTS: 1, H.REQUESTS: 1})
    await rig.process(retried)
    [event] = rig.publisher.events()
    assert (event["outcome"], event["attempts"]) == ("succeeded", 2)


async def test_retries_run_out_into_failed_and_a_dead_letter(rig: Rig) -> None:
    rig.api.errors = [ApiUnavailable("CBC.0999", "busy")]
    message = FakeMessage(auto_renew(), headers={H.ATTEMPTS: 2, H.REQUESTS: 2})
    await rig.process(message)
    assert rig.publisher.kinds() == ["dead_letter", "event"]
    [event] = rig.publisher.events()
    assert event["outcome"] == "failed"
    assert event["error"]["code"] == "RELAY.RETRIES_EXHAUSTED"
    assert event["attempts"] == 3


async def test_refusal_fails_without_a_dead_letter(rig: Rig) -> None:
    rig.api.errors = [ApiRefused("CBC.0100", "bad parameter")]
    await rig.process(FakeMessage(auto_renew()))
    assert rig.publisher.kinds() == ["event"]
    assert rig.publisher.events()[0]["error"]["code"] == "CBC.0100"


async def test_store_unavailable_waits_without_spending_an_attempt(rig: Rig) -> None:
    rig.api.errors = [StoreUnavailable("RELAY.STORE_UNAVAILABLE", "down")]
    message = FakeMessage(auto_renew(), headers={H.ATTEMPTS: 2})
    await rig.process(message)
    [(kind, (_seconds, reason, _headers))] = rig.publisher.log
    assert kind == "delay"
    assert reason is None  # no failure recorded: the next delivery still has its attempts


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b"\xff\xfe",
        b'{"type": "renew"}',
        b'{"command_id": "c", "type": "issue_coupon", "payload": {"quota_id": "q", '
        b'"customer_ids": ["a"], "face_value": "1e3"}}',
    ],
)
async def test_unusable_input_is_rejected_and_dead_lettered(rig: Rig, body: bytes) -> None:
    message = FakeMessage(body)
    assert await rig.process(message) is Settled.SETTLED
    assert rig.publisher.kinds() == ["dead_letter", "event"]
    assert rig.publisher.events()[0]["outcome"] == "rejected"
    assert message.settled == ["ack"]
    assert rig.api.calls == 0


async def test_when_processing_and_the_crash_path_fail_the_raw_message_is_dead_lettered(
    rig: Rig,
) -> None:
    class Bug(Exception):
        pass

    class BrokenStore:
        def __getattr__(self, name: str) -> Any:
            async def fail(*_: Any, **__: Any) -> None:
                raise Bug("store bug")

            return fail

    rig.wire(claims=BrokenStore())
    rig.publisher.failures = [TypeError("publisher bug")]  # the crash path's delay fails too
    message = FakeMessage(auto_renew())
    assert await rig.process(message) is Settled.SETTLED
    assert rig.publisher.kinds() == ["dead_letter", "event"]
    reason = rig.publisher.log[0][1]
    assert reason.code == "RELAY.INTERNAL"
    assert "TypeError" in reason.message
    assert message.settled == ["ack"]


async def test_busy_elsewhere_waits_out_the_owners_lease_once(rig: Rig) -> None:
    await rig.store.claim("c-1", "set_auto_renew", owner="someone-else", lease=LEASE)
    await rig.process(FakeMessage(auto_renew()))
    [(kind, (seconds, reason, _headers))] = rig.publisher.log
    assert kind == "delay"
    assert reason is None
    assert 9.0 <= seconds <= 10.0  # as long as the lease has left, not a second
    assert rig.api.calls == 0
    assert _headers[H.ADMITTED] == "1"  # back from waiting, it goes straight to its claim


async def test_a_redelivered_command_busy_elsewhere_asks_again_within_a_second(rig: Rig) -> None:
    """Its consumer went away: the owner may be dead before the database has noticed."""
    await rig.store.claim("c-1", "set_auto_renew", owner="someone-else", lease=LEASE)
    await rig.process(FakeMessage(auto_renew(), redelivered=True))
    [(kind, (seconds, _reason, headers))] = rig.publisher.log
    assert kind == "delay"
    assert seconds <= 1.0
    assert headers[H.ADMITTED] == "1"


async def test_a_dead_owners_claim_is_taken_over_at_once(rig: Rig) -> None:
    """The owner's liveness lock is free (its process died): no wait for its lease."""

    class DeadOwners(LocalLocks):
        async def owner_gone(self, owner: str) -> bool:
            return owner == "crashed"

    rig.wire(locks=DeadOwners())
    await rig.store.claim("c-1", "set_auto_renew", owner="crashed", lease=LEASE)
    message = FakeMessage(auto_renew())
    await rig.process(message)
    assert rig.publisher.kinds() == ["event"]
    assert rig.api.calls == 1
    assert message.settled == ["ack"]


@pytest.mark.parametrize("how", ["redelivered", "admitted"])
async def test_a_command_taken_in_before_is_not_parked_behind_its_customers_backlog(
    rig: Rig, how: str
) -> None:
    """A crashed replica's command (redelivered by the broker), or one back from waiting
    out another replica's claim, is carried out now: a takeover must not queue behind the
    customer's backlog. A new command of the same customer is parked."""
    slow = make_dispatcher({"*": 0.1})
    rig.wire(dispatcher=slow, hold_s=1.0)
    with slow.coming("auto_renewal_resources", "cust", 2):
        await rig.process(FakeMessage(auto_renew("c-new")))
        assert rig.publisher.kinds() == ["park"]  # parked: its turn is far away
        rig.publisher.log.clear()
        taken = FakeMessage(
            auto_renew("c-taken"),
            headers={} if how == "redelivered" else {H.ADMITTED: "1"},
            redelivered=how == "redelivered",
        )
        await rig.process(taken)
    assert rig.publisher.kinds() == ["event"]
    assert rig.api.calls == 1
    assert taken.settled == ["ack"]


def _ids(values: Sequence[dict[str, Any]]) -> list[str]:
    return [v["event_id"] for v in values]


async def test_a_finished_command_is_reannounced_as_a_duplicate(rig: Rig) -> None:
    await rig.process(FakeMessage(auto_renew()))
    second = FakeMessage(auto_renew())
    await rig.process(second)
    first, again = rig.publisher.events()
    assert again["duplicate"] is True
    assert again["conflict"] is False
    assert first["event_id"] != again["event_id"]
    assert rig.api.calls == 1
    assert second.settled == ["ack"]


async def test_an_id_reused_for_another_command_is_a_conflict(rig: Rig) -> None:
    await rig.process(FakeMessage(auto_renew()))
    other = FakeMessage(auto_renew(enabled=False))
    await rig.process(other)
    assert rig.publisher.kinds() == ["event", "dead_letter", "event"]
    reason = rig.publisher.log[1][1]
    assert reason.code == "RELAY.ID_CONFLICT"
    again = rig.publisher.events()[1]
    assert again["duplicate"] is True
    assert again["conflict"] is True
    assert rig.api.calls == 1
    assert other.settled == ["ack"]


async def test_a_deadline_that_passed_is_rejected_and_the_claim_given_back(rig: Rig) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    body = json.loads(auto_renew())
    body["deadline"] = past
    await rig.process(FakeMessage(json.dumps(body).encode()))
    assert rig.publisher.kinds() == ["dead_letter", "event"]
    assert rig.publisher.events()[0]["error"]["code"] == "RELAY.DEADLINE_PASSED"
    record = await rig.store.get("c-1")
    assert record is not None
    assert record.lease_until is None


@pytest.mark.parametrize("pulled", [True, False], ids=["swept-from-its-line", "new"])
async def test_a_paused_customers_command_past_its_deadline_is_rejected_not_parked(
    rig: Rig, pulled: bool
) -> None:
    """A paused line whose command's deadline passed is swept: the message path must end that
    command (``RELAY.DEADLINE_PASSED``, no call), or it goes back to the line with its deadline
    and the line is swept again and again while the producer waits for the pause to end."""
    rig.paused_customers.add("cust")
    body = json.loads(auto_renew())
    body["deadline"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    message = FakeMessage(json.dumps(body).encode(), headers={H.LINE: "1"} if pulled else {})
    await rig.process(message)
    assert rig.publisher.kinds() == ["dead_letter", "event"]
    assert rig.publisher.events()[0]["error"]["code"] == "RELAY.DEADLINE_PASSED"
    assert rig.api.calls == 0
    assert message.settled == ["ack"]


async def test_a_long_park_marks_the_copy_and_owes_one_deferred_event(rig: Rig) -> None:
    """Parked, the command's copy is marked and its ``deferred`` event is owed; it goes once
    its place is settled (``Whereabouts.pulled`` hands it to the announcer), with the expected
    start counted from that place."""
    slow = make_dispatcher({"*": 0.1})
    rig.wire(dispatcher=slow, hold_s=1.0, deferred_after_s=5.0)
    with slow.coming("auto_renewal_resources", "cust", 2):
        message = FakeMessage(auto_renew("c-far"))
        message.correlation_id = "corr-1"
        await rig.process(message)
        [(kind, (queue, headers))] = rig.publisher.log
        assert kind == "park"
        assert queue == "t.line.auto_renewal_resources.cust.normal"
        assert headers[H.DEFERRED] == "1"
        assert headers[H.LINE] == "1"
        [entry] = rig.whereabouts.entries()
        assert entry.deferral is not None
        assert entry.deferral.correlation_id == "corr-1"
        rig.publisher.log.clear()

        settled = replace(entry, bound=entry.seq)  # as Whereabouts.pulled hands it over
        before = time.time()
        assert await rig.announcer.announce(LINE, [settled]) == 1
        [(kind, event)] = rig.publisher.log
        assert kind == "event"
        assert event["outcome"] == "deferred"
        assert event["command_id"] == "c-far"
        expected = datetime.fromisoformat(event["expected_start_at"]).timestamp()
        assert expected - before == pytest.approx(10.0, abs=0.5)  # one held ahead, 0.1/s
        rig.publisher.log.clear()

        # parked again later (its copy carries the header): nothing owed any more
        await rig.process(FakeMessage(auto_renew("c-far"), headers={H.DEFERRED: "1"}))
        assert rig.publisher.kinds() == ["park"]
        [again] = rig.whereabouts.entries()
        assert again.deferral is None


async def test_a_command_pulled_from_its_line_is_no_longer_shown_as_parked(rig: Rig) -> None:
    """Pulled back (its copy carries ``x-relay-line``), the command is this replica's again:
    its parked entry goes, so neither ``why`` nor the estimates count it twice. Before, it
    stayed until the line's count passed its conservative place."""
    slow = make_dispatcher({"*": 0.1})
    rig.wire(dispatcher=slow, hold_s=1.0)
    with slow.coming("auto_renewal_resources", "cust", 2):
        await rig.process(FakeMessage(auto_renew("c-pulled")))
    assert [e.command_id for e in rig.whereabouts.entries()] == ["c-pulled"]
    [(_, (_, headers))] = rig.publisher.log
    await rig.process(FakeMessage(auto_renew("c-pulled"), headers=dict(headers)))
    assert [e for e in rig.whereabouts.entries() if e.state == "waiting"] == []


async def test_no_deferred_event_once_the_command_is_back_or_soon_to_start(rig: Rig) -> None:
    slow = make_dispatcher({"*": 0.1})
    rig.wire(dispatcher=slow, hold_s=1.0, deferred_after_s=5.0)
    with slow.coming("auto_renewal_resources", "cust", 2):
        await rig.process(FakeMessage(auto_renew("c-back")))
    [entry] = rig.whereabouts.entries()
    settled = replace(entry, bound=entry.seq)
    # nothing held ahead of it any more: it starts within the deferred threshold
    assert await rig.announcer.announce(LINE, [settled]) == 0
    rig.whereabouts.back("c-back")  # pulled from its line: its terminal event comes next
    assert await rig.announcer.announce(LINE, [settled]) == 0
    assert rig.publisher.kinds() == ["park"]
