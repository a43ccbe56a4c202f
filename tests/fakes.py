"""Typed, in-memory fakes of ``handlers/ports.py`` for unit tests of the handlers.

* ``FakeBssApi`` implements ``BssApi`` over a tiny model of one partner's world: customers'
  resources (expiry, auto-renew), renewal orders (created times), coupon quotas and issue records.
  It answers per-item refusals inside a normal answer the way the API (and the sandbox,
  ``service/sandbox/renewals.py`` / ``coupons.py``) does, records every call, and plays scripted
  ``Fault``s per operation: raise before the effect, or apply the effect and then raise (an answer
  lost after the API acted: ``CallTimeout`` / ``OutcomeUnknown``).
* ``MemoryJournal`` implements ``Journal`` like ``service.messages.journal.StoreJournal`` does on
the store;
  its ``EffectLedger`` can be shared between journals to play other commands owning orders.
* ``FixedClock`` implements ``Clock``; ``World`` ties the three together and builds contexts.

No ``unittest.mock``: every fake keeps the invariant of the thing it stands for, so a handler
that breaks a rule (calls twice, adopts a foreign order) shows up as state, not as a missed stub.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from pydantic import BaseModel

from handlers.errors import ApiRefused
from handlers.ports import BssApi, Clock, HandlerContext, Journal
from schemas.bss import (
    AutoRenewalResourcesReq,
    CouponInfo,
    CouponRecord,
    CreatePartnerCouponsReq,
    CreatePartnerCouponsResp,
    CustomerOrder,
    CustomerResource,
    ErrorDetail,
    FailResourceInfo,
    ListOnDemandResourceRatingsResp,
    ListRateOnPeriodDetailResp,
    ListRenewRateOnPeriodReq,
    ListRenewRateOnPeriodResp,
    RateOnDemandReq,
    RateOnPeriodReq,
    RenewalResourcesReq,
    RenewalResourcesResp,
)
from service.api.operations import PUBLISHED_LIMITS
from service.pacing.dispatcher import Dispatcher, PacingConfig
from service.pacing.limits import Limits, configured_limits
from service.pacing.local import LocalBuckets

__all__ = [
    "AUTO_RENEW_POLICY",
    "T0",
    "ApiCall",
    "EffectLedger",
    "FakeBssApi",
    "Fault",
    "FixedClock",
    "MemoryJournal",
    "Order",
    "Quota",
    "Resource",
    "SimulatedCrash",
    "World",
    "make_context",
]

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
AUTO_RENEW_POLICY = 3  # ``expire_policy`` 3 is the only value meaning auto-renew is on
ORDER_COMPLETED, ORDER_PENDING_PAYMENT = 5, 6
RENEWAL_ORDER = 2
PERIOD_DAYS = {2: 30, 3: 365}  # month, year: the fake's calendar is coarse on purpose
RESOURCE_CLOSED = 3

NOT_FOUND = ("CBC.99003016", "The resource has expired and been deleted, or does not exist.")
IN_UNPAID_ORDER = ("CBC.99003100", "The resource is in an order pending payment.")
NOT_ASSOCIATED = ("CBC.99000035", "The customer is not associated with the partner.")
BALANCE_LOW = ("CBC.99000013", "The coupon quota balance is insufficient.")

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


class SimulatedCrash(BaseException):
    """The process died here: nothing of the handler after this point runs.

    A ``BaseException`` so that no ``except Exception`` in the code under test can absorb it.
    """


class FixedClock:
    """A ``Clock`` that only moves when a test moves it."""

    def __init__(self, now: datetime = T0) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


@dataclass(frozen=True, slots=True)
class Fault:
    """What one scripted call does instead of answering normally.

    ``after_effect=False``: raise ``error`` before the API does anything. ``True``: the API acts
    (orders, coupons, expiry) and the answer is lost: raise ``error`` instead of answering.
    ``meanwhile`` runs first, to play something else happening in the world during the call
    (another system's renewal, another command's coupon).
    """

    error: BaseException
    after_effect: bool = False
    meanwhile: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class ApiCall:
    op: str
    args: tuple[object, ...]


@dataclass(slots=True)
class Resource:
    resource_id: str
    customer_id: str
    expire_time: datetime | None
    auto_renew: bool = False
    status: int = 2  # 2 in use, 3 closed


@dataclass(slots=True)
class Order:
    order_id: str
    customer_id: str
    create_time: datetime
    resource_ids: list[str]
    status: int

    def listed(self) -> CustomerOrder:
        return CustomerOrder(
            order_id=self.order_id,
            customer_id=self.customer_id,
            order_type=RENEWAL_ORDER,
            status=self.status,
            create_time=self.create_time,
        )


@dataclass(slots=True)
class Quota:
    quota_id: str
    balance: Decimal


class FakeBssApi:
    """An in-memory ``BssApi`` bound to one partner, with scripted faults and a call log."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.resources: dict[str, Resource] = {}
        self.orders: dict[str, Order] = {}
        self.quotas: dict[str, Quota] = {}
        self.customers: set[str] = set()  # the partner's resale customers (coupons go to them)
        self.coupon_owner: dict[str, str] = {}  # coupon id -> customer id
        self.records: list[CouponRecord] = []
        self.refused: dict[str, tuple[str, str]] = {}  # resource id -> scripted refusal
        self.on_demand_quote: ListOnDemandResourceRatingsResp | None = None
        self.period_quote: ListRateOnPeriodDetailResp | None = None
        self.renewal_quote: ListRenewRateOnPeriodResp | None = None
        self.calls: list[ApiCall] = []
        self._faults: defaultdict[str, deque[Fault | None]] = defaultdict(deque)
        self._ids = itertools.count(1)

    # --- building the world -------------------------------------------------------------------

    def add_resource(
        self,
        resource_id: str,
        customer_id: str,
        *,
        expire: datetime | None,
        auto_renew: bool = False,
    ) -> Resource:
        resource = Resource(resource_id, customer_id, expire, auto_renew)
        self.resources[resource_id] = resource
        return resource

    def add_order(
        self, customer_id: str, resource_ids: Sequence[str], *, paid: bool = True
    ) -> Order:
        """A renewal order placed now by someone else (another command, another system)."""
        order = Order(
            order_id=f"CS{next(self._ids):04d}",
            customer_id=customer_id,
            create_time=self.clock.now(),
            resource_ids=list(resource_ids),
            status=ORDER_COMPLETED if paid else ORDER_PENDING_PAYMENT,
        )
        self.orders[order.order_id] = order
        return order

    def add_quota(self, quota_id: str, balance: Decimal) -> Quota:
        self.quotas[quota_id] = Quota(quota_id, balance)
        return self.quotas[quota_id]

    def issue_elsewhere(
        self, quota_id: str, customer_ids: Sequence[str], face_value: Decimal, *, memo: str | None
    ) -> CreatePartnerCouponsResp:
        """Coupons issued by someone else (another command, the partner's console): the world
        acts, no call of the code under test is logged."""
        body = CreatePartnerCouponsReq(
            quota_id=quota_id, customer_ids=list(customer_ids), face_value=face_value, memo=memo
        )
        return self._issue(body)

    def script(self, op: str, *faults: Fault | None) -> None:
        """Queue faults for the next calls of ``op``, one per call, in order; ``None`` lets
        that call answer normally (to fail, say, the second read but not the first)."""
        self._faults[op].extend(faults)

    # --- what happened ------------------------------------------------------------------------

    def ops(self) -> list[str]:
        return [c.op for c in self.calls]

    def count(self, op: str) -> int:
        return sum(1 for c in self.calls if c.op == op)

    def args_of(self, op: str) -> list[tuple[object, ...]]:
        return [c.args for c in self.calls if c.op == op]

    def sent(self, op: str, kind: type[_M]) -> list[_M]:
        """The request bodies of type ``kind`` sent with ``op``, in order."""
        return [a for c in self.calls if c.op == op for a in c.args if isinstance(a, kind)]

    def orders_of(self, customer_id: str) -> list[Order]:
        return [o for o in self.orders.values() if o.customer_id == customer_id]

    def coupons_of(self, customer_id: str) -> list[str]:
        return [c for c, owner in self.coupon_owner.items() if owner == customer_id]

    # --- BssApi -------------------------------------------------------------------------------

    async def renew(self, customer_id: str, body: RenewalResourcesReq) -> RenewalResourcesResp:
        fault = self._enter("renew", customer_id, body)
        return self._leave(fault, self._renew(customer_id, body))

    async def enable_auto_renew(
        self, customer_id: str, resource_id: str, body: AutoRenewalResourcesReq
    ) -> None:
        fault = self._enter("enable_auto_renew", customer_id, resource_id, body)
        self._own_resource(customer_id, resource_id).auto_renew = True  # enabled again: fine
        self._leave(fault, None)

    async def cancel_auto_renew(self, customer_id: str, resource_id: str) -> None:
        fault = self._enter("cancel_auto_renew", customer_id, resource_id)
        resource = self._own_resource(customer_id, resource_id)
        if not resource.auto_renew:
            raise ApiRefused(
                "CBC.99003605", "Auto-renewal has already been cancelled.", http_status=400
            )
        resource.auto_renew = False
        self._leave(fault, None)

    async def rate_on_demand(
        self, customer_id: str, body: RateOnDemandReq
    ) -> ListOnDemandResourceRatingsResp:
        fault = self._enter("rate_on_demand", customer_id, body)
        return self._leave(fault, _scripted(self.on_demand_quote, "on_demand_quote"))

    async def rate_on_period(
        self, customer_id: str, body: RateOnPeriodReq
    ) -> ListRateOnPeriodDetailResp:
        fault = self._enter("rate_on_period", customer_id, body)
        return self._leave(fault, _scripted(self.period_quote, "period_quote"))

    async def rate_renewal(
        self, customer_id: str, body: ListRenewRateOnPeriodReq
    ) -> ListRenewRateOnPeriodResp:
        fault = self._enter("rate_renewal", customer_id, body)
        return self._leave(fault, _scripted(self.renewal_quote, "renewal_quote"))

    async def issue_coupons(self, body: CreatePartnerCouponsReq) -> CreatePartnerCouponsResp:
        fault = self._enter("issue_coupons", body)
        return self._leave(fault, self._issue(body))

    async def customer_resources(
        self, customer_id: str, resource_ids: Sequence[str]
    ) -> list[CustomerResource]:
        fault = self._enter("customer_resources", customer_id, tuple(resource_ids))
        found = [
            CustomerResource(
                resource_id=r.resource_id,
                expire_time=r.expire_time,
                expire_policy=AUTO_RENEW_POLICY if r.auto_renew else 0,
                status=r.status,
            )
            for rid in resource_ids
            if (r := self.resources.get(rid)) is not None and r.customer_id == customer_id
        ]
        return self._leave(fault, found)

    async def renewal_orders_since(self, customer_id: str, since: datetime) -> list[CustomerOrder]:
        fault = self._enter("renewal_orders_since", customer_id, since)
        start = since.replace(microsecond=0)  # the query is sent in whole seconds
        found = [o.listed() for o in self.orders_of(customer_id) if o.create_time >= start]
        return self._leave(fault, found)

    async def coupon_issue_records_since(
        self, since: datetime, *, quota_id: str, customer_id: str | None = None
    ) -> list[CouponRecord]:
        fault = self._enter("coupon_issue_records_since", since, quota_id, customer_id)
        start = since.replace(microsecond=0)
        found = [
            r
            for r in self.records
            if r.operation_time is not None
            and r.operation_time >= start
            and r.quota_id == quota_id
            and (customer_id is None or r.customer_id == customer_id)
        ]
        return self._leave(fault, found)

    # --- the model ----------------------------------------------------------------------------

    def _enter(self, op: str, *args: object) -> Fault | None:
        """Log the call; play a scripted fault. Returns the fault to raise after the effect."""
        self.calls.append(ApiCall(op, args))
        fault = self._faults[op].popleft() if self._faults[op] else None
        if fault is not None and fault.meanwhile is not None:
            fault.meanwhile()
        if fault is not None and not fault.after_effect:
            raise fault.error
        return fault

    @staticmethod
    def _leave(fault: Fault | None, answer: _T) -> _T:
        if fault is not None:
            raise fault.error  # the API acted; its answer is lost
        return answer

    def _own_resource(self, customer_id: str, resource_id: str) -> Resource:
        resource = self.resources.get(resource_id)
        if resource is None or resource.customer_id != customer_id:
            raise ApiRefused(
                "CBC.99003012", f"The resource {resource_id} does not exist.", http_status=400
            )
        return resource

    def _renewal_refusal(self, customer_id: str, resource_id: str) -> tuple[str, str] | None:
        if resource_id in self.refused:
            return self.refused[resource_id]
        resource = self.resources.get(resource_id)
        if resource is None or resource.customer_id != customer_id:
            return NOT_FOUND
        if resource.status == RESOURCE_CLOSED:
            return NOT_FOUND
        pending = (
            o
            for o in self.orders.values()
            if o.status == ORDER_PENDING_PAYMENT and resource_id in o.resource_ids
        )
        return IN_UNPAID_ORDER if any(pending) else None

    def _renew(self, customer_id: str, body: RenewalResourcesReq) -> RenewalResourcesResp:
        """One order for every accepted resource; refusals inside the answer (HTTP 200)."""
        failures: list[FailResourceInfo] = []
        chosen: list[Resource] = []
        for rid in body.resource_ids:
            refusal = self._renewal_refusal(customer_id, rid)
            if refusal is None:
                chosen.append(self.resources[rid])
            else:
                failures.append(
                    FailResourceInfo(resource_id=rid, error_code=refusal[0], error_msg=refusal[1])
                )
        if not chosen:
            return RenewalResourcesResp(order_ids=[], fail_resource_infos=failures)
        paid = body.is_auto_pay == 1
        order = self.add_order(customer_id, [r.resource_id for r in chosen], paid=paid)
        if paid:  # only a paid order moves expiry
            days = PERIOD_DAYS[body.period_type] * body.period_num
            for resource in chosen:
                assert resource.expire_time is not None
                resource.expire_time += timedelta(days=days)
        return RenewalResourcesResp(order_ids=[order.order_id], fail_resource_infos=failures)

    def _issue(self, body: CreatePartnerCouponsReq) -> CreatePartnerCouponsResp:
        """One coupon per customer in order; refusals in ``error_details`` (HTTP 200), with an
        issue record of result ``-1`` for the partner's own customers, as the sandbox keeps."""
        quota = self.quotas.get(body.quota_id)
        if quota is None:
            raise ApiRefused(
                "CBC.99000012",
                "The coupon quota does not exist or its status is abnormal.",
                http_status=400,
            )
        issued: list[CouponInfo] = []
        refused: list[ErrorDetail] = []
        for customer_id in body.customer_ids:
            if customer_id not in self.customers:
                refused.append(_refusal(customer_id, NOT_ASSOCIATED))
            elif quota.balance < body.face_value:
                refused.append(_refusal(customer_id, BALANCE_LOW))
                self._record(quota, customer_id, "", body, result="-1")
            else:
                coupon_id = f"CP{next(self._ids):04d}"
                quota.balance -= body.face_value
                self.coupon_owner[coupon_id] = customer_id
                self._record(quota, customer_id, coupon_id, body, result="0")
                issued.append(CouponInfo(id=customer_id, coupon_id=coupon_id))
        return CreatePartnerCouponsResp(coupon_infos=issued, error_details=refused)

    def _record(
        self,
        quota: Quota,
        customer_id: str,
        coupon_id: str,
        body: CreatePartnerCouponsReq,
        *,
        result: str,
    ) -> None:
        self.records.append(
            CouponRecord(
                id=f"CR{next(self._ids):04d}",
                operation_type="1",
                quota_id=quota.quota_id,
                coupon_id=coupon_id,
                customer_id=customer_id,
                operation_amount=body.face_value,
                operation_time=self.clock.now(),
                result=result,
                remark=body.memo,
            )
        )


def _refusal(customer_id: str, reason: tuple[str, str]) -> ErrorDetail:
    return ErrorDetail(id=customer_id, error_code=reason[0], error_msg=reason[1])


def _scripted(answer: _T | None, name: str) -> _T:
    if answer is None:
        raise AssertionError(f"the test did not script FakeBssApi.{name}")
    return answer


class EffectLedger:
    """Which command caused each effect (order id): the store's effect ledger, in memory.

    Share one ledger between journals to play several commands of the same service."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def claim(self, command_id: str, effect_ids: Collection[str]) -> dict[str, str]:
        return {e: self.owners.setdefault(e, command_id) for e in effect_ids}

    def owners_of(self, effect_ids: Collection[str]) -> dict[str, str]:
        return {e: self.owners[e] for e in effect_ids if e in self.owners}


class MemoryJournal:
    """The ``Journal`` of one command, kept like ``StoreJournal`` keeps it in the store.

    ``log`` names every journal operation in order, so tests can check e.g. that a proven
    no-effect was recorded before the error went up."""

    def __init__(
        self,
        command_id: str,
        *,
        clock: Clock,
        ledger: EffectLedger | None = None,
        uncertain_since: datetime | None = None,
        note: bytes | None = None,
        attempts: int = 0,
    ) -> None:
        self.command_id = command_id
        self.clock = clock
        self.ledger = ledger if ledger is not None else EffectLedger()
        self.attempts = attempts
        self.log: list[str] = []
        self._uncertain_since = uncertain_since
        self._note = note

    @property
    def uncertain_since(self) -> datetime | None:
        return self._uncertain_since

    @property
    def note(self) -> bytes | None:
        return self._note

    @property
    def in_flight(self) -> bool:
        return self._uncertain_since is not None

    async def call_starting(self, *, note: bytes | None = None, durable: bool = True) -> datetime:
        self.log.append("call_starting" if durable else "call_starting(not durable)")
        self.attempts += 1
        at = self.clock.now()
        if durable:
            self._uncertain_since, self._note = at, note
        return at

    async def call_had_no_effect(self) -> None:
        assert self._uncertain_since is not None, "no call was in flight"
        self.log.append("call_had_no_effect")
        self._uncertain_since, self._note = None, None

    async def claim_effects(self, effect_ids: Collection[str]) -> set[str]:
        self.log.append("claim_effects")
        owners = self.ledger.claim(self.command_id, effect_ids)
        return {e for e, owner in owners.items() if owner != self.command_id}

    async def owned_elsewhere(self, effect_ids: Collection[str]) -> set[str]:
        owners = self.ledger.owners_of(effect_ids)
        return {e for e, owner in owners.items() if owner != self.command_id}

    def after_crash(self) -> MemoryJournal:
        """The journal a successor gets when it claims this command after the process died:
        what was durably written survives (in-flight start and note, attempts), nothing else."""
        return MemoryJournal(
            self.command_id,
            clock=self.clock,
            ledger=self.ledger,
            uncertain_since=self._uncertain_since,
            note=self._note,
            attempts=self.attempts,
        )


@dataclass
class World:
    """One partner's API, a clock and the service's effect ledger; builds handler contexts."""

    clock: FixedClock = field(default_factory=FixedClock)
    ledger: EffectLedger = field(default_factory=EffectLedger)
    api: FakeBssApi = field(init=False)

    def __post_init__(self) -> None:
        self.api = FakeBssApi(self.clock)

    def journal(
        self,
        command_id: str,
        *,
        uncertain_since: datetime | None = None,
        note: bytes | None = None,
    ) -> MemoryJournal:
        return MemoryJournal(
            command_id,
            clock=self.clock,
            ledger=self.ledger,
            uncertain_since=uncertain_since,
            note=note,
        )

    def context(self, command_id: str, journal: Journal | None = None) -> HandlerContext:
        return make_context(
            command_id, self.api, clock=self.clock, journal=journal or self.journal(command_id)
        )


def make_context(
    command_id: str, api: BssApi, *, clock: Clock | None = None, journal: Journal | None = None
) -> HandlerContext:
    """A ``HandlerContext`` from whatever fakes the test has; the rest is made fresh."""
    clock = clock or FixedClock()
    return HandlerContext(
        command_id=command_id,
        api=api,
        clock=clock,
        journal=journal or MemoryJournal(command_id, clock=clock),
    )


# Static checks that the fakes satisfy the ports (mypy fails here if a signature drifts).
_API: type[BssApi] = FakeBssApi
_JOURNAL: type[Journal] = MemoryJournal
_CLOCK: type[Clock] = FixedClock


def dispatcher(
    overrides: Mapping[str, float | None] | None = None, *, egress: str = "default"
) -> Dispatcher:
    """A dispatcher on in-process buckets with the published limits (``overrides`` over them,
    ``{"*": 0}`` for none): what a client under test waits its turn on."""
    limits = Limits(configured_limits(PUBLISHED_LIMITS, overrides or {}))
    return Dispatcher(LocalBuckets(), limits, config=PacingConfig(egress=egress))
