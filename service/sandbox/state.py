"""The live, in-memory state of the simulated accounts, with the indexes the hot paths need.

Invariants kept by every mutation (business modules go through the helpers here):

* ``pending_by_resource[r]`` is the id of the order in status 6 (pending payment) that holds
  resource ``r``, and ``Resource.pending_order_id`` mirrors it; a resource is in at most one.
* ``resources_by_customer`` and ``orders_by_customer`` list ids in insertion order.
* ``reset()`` mutates this object in place (collaborators keep their reference) and restores the
  loaded data set exactly; id counters restart too.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from service.sandbox.model import (
    Coupon,
    CouponQuota,
    CouponRecord,
    Customer,
    Dataset,
    Order,
    Partner,
    Resource,
)
from service.sandbox.orders import ORDER_COMPLETED, ORDER_PENDING_PAYMENT, build_lines, total
from service.sandbox.pricebook import PriceBook
from service.sandbox.wire import utc_text

__all__ = ["Clock", "SandboxState", "load_dataset", "system_clock"]

Clock = Callable[[], datetime]
DEMO_DATA = "demo-data.json"


def system_clock() -> datetime:
    return datetime.now(UTC)


def load_dataset(path: Path | None = None) -> Dataset:
    """The data set in ``path`` (or the built-in demo one); ``ValueError`` if it is invalid."""
    if path is None:
        text = package_files.files("service.sandbox").joinpath(DEMO_DATA).read_text("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    return Dataset.model_validate(json.loads(text, parse_float=Decimal))


def _base36(number: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


class SandboxState:
    """Takes ownership of ``dataset``: its records become the live, mutable state."""

    def __init__(self, dataset: Dataset, *, clock: Clock = system_clock) -> None:
        # Re-validating this plain copy is how reset() restores the data set: for large data
        # sets it is about twice as fast as deep-copying the models.
        self._source = dataset.model_dump()
        self._counts = {
            name: len(getattr(dataset, name)) for name in self._source if name != "description"
        }
        self.clock = clock
        self._load(dataset)
        self._validate()

    # -- loading ------------------------------------------------------------------------------

    def reset(self) -> None:
        self._load(Dataset.model_validate(self._source))

    def _load(self, data: Dataset) -> None:
        self.price_book = data.price_book
        self.prices = PriceBook(data.price_book)
        self.partners: dict[str, Partner] = {p.partner_id: p for p in data.partners}
        self.partner_by_key = {p.access_key: p for p in data.partners}
        self.customers: dict[str, Customer] = {c.customer_id: c for c in data.customers}
        self.customer_by_name = {c.account_name: c for c in data.customers}
        self.customers_by_partner: dict[str, list[str]] = defaultdict(list)
        for customer in data.customers:
            if customer.partner_id is not None:
                self.customers_by_partner[customer.partner_id].append(customer.customer_id)
        self._index_resources(data.resources)
        self._index_orders(data.orders)
        self.quotas: dict[str, CouponQuota] = {q.quota_id: q for q in data.coupon_quotas}
        self.coupons: dict[str, Coupon] = {}
        self.coupons_by_customer: dict[str, list[Coupon]] = defaultdict(list)
        for coupon in data.coupons:
            self.add_coupon(coupon)
        self.records: list[CouponRecord] = []
        self.records_by_customer: dict[str, list[CouponRecord]] = defaultdict(list)
        for record in data.coupon_records:
            self.add_record(record)
        self._serial = itertools.count(1)

    def _index_resources(self, resources: list[Resource]) -> None:
        self.resources: dict[str, Resource] = {}
        self.attached: dict[str, list[str]] = defaultdict(list)
        self.resources_by_customer: dict[str, list[str]] = defaultdict(list)
        for resource in resources:
            resource.pending_order_id = None
            self.resources[resource.resource_id] = resource
            self.resources_by_customer[resource.customer_id].append(resource.resource_id)
            if resource.parent_resource_id is not None:
                self.attached[resource.parent_resource_id].append(resource.resource_id)

    def _index_orders(self, orders: list[Order]) -> None:
        self.orders: dict[str, Order] = {}
        self.orders_by_customer: dict[str, list[str]] = defaultdict(list)
        self.pending_by_resource: dict[str, str] = {}
        for order in orders:
            if not order.lines and order.period_type is not None and order.period_num:
                self._fill_lines(order)
            self.add_order(order)

    def _fill_lines(self, order: Order) -> None:
        known = [self.resources[r] for r in order.resource_ids if r in self.resources]
        customer = self.customers.get(order.customer_id)
        rate = customer.discount_rate if customer else Decimal(1)
        assert order.period_type is not None
        assert order.period_num is not None
        order.lines = build_lines(
            order.order_id,
            known,
            self.prices,
            period_type=order.period_type,
            period_num=order.period_num,
            rate=rate,
        )
        if not order.official_amount and order.lines:
            quote = total(order.lines)
            order.official_amount, order.amount_after_discount = quote.official, quote.amount

    def _validate(self) -> None:
        for problem in self._problems():
            raise ValueError(f"data set: {problem}")

    def _problems(self) -> Iterator[str]:
        for customer in self.customers.values():
            if customer.partner_id is not None and customer.partner_id not in self.partners:
                yield f"customer {customer.customer_id}: unknown partner {customer.partner_id}"
        for resource in self.resources.values():
            yield from self._resource_problems(resource)
        for order in self.orders.values():
            if order.customer_id not in self.customers:
                yield f"order {order.order_id}: unknown customer {order.customer_id}"
            for rid in order.resource_ids:
                if rid not in self.resources:
                    yield f"order {order.order_id}: unknown resource {rid}"
        for quota in self.quotas.values():
            if quota.partner_id not in self.partners:
                yield f"quota {quota.quota_id}: unknown partner {quota.partner_id}"
        if len(self.partner_by_key) != len(self.partners):
            yield "two partners share an access key"
        for name, indexed in (
            ("partners", self.partners),
            ("customers", self.customers),
            ("resources", self.resources),
            ("orders", self.orders),
            ("coupon_quotas", self.quotas),
            ("coupons", self.coupons),
        ):
            if self._counts[name] != len(indexed):
                yield f"two {name} share an id"

    def _resource_problems(self, resource: Resource) -> Iterator[str]:
        rid = resource.resource_id
        if resource.customer_id not in self.customers:
            yield f"resource {rid}: unknown customer {resource.customer_id}"
        if self.prices.for_resource(resource) is None:
            yield f"resource {rid}: no price book entry for its product"
        parent = resource.parent_resource_id
        if resource.is_main_resource and parent is not None:
            yield f"resource {rid}: a primary resource has no parent"
        if not resource.is_main_resource:
            owner = self.resources.get(parent or "")
            if owner is None or owner.customer_id != resource.customer_id:
                yield f"resource {rid}: attached resources need a primary of the same customer"

    # -- helpers for the business rules ------------------------------------------------------

    def now(self) -> datetime:
        return self.clock()

    def serial(self) -> str:
        return _base36(next(self._serial)).rjust(5, "0")

    def new_id(self, prefix: str, now: datetime, taken: Container[str] = ()) -> str:
        while True:
            candidate = f"{prefix}{now:%y%m%d%H%M}{self.serial()}"
            if candidate not in taken:
                return candidate

    def add_coupon(self, coupon: Coupon) -> None:
        self.coupons[coupon.coupon_id] = coupon
        self.coupons_by_customer[coupon.customer_id].append(coupon)

    def add_record(self, record: CouponRecord) -> None:
        self.records.append(record)
        self.records_by_customer[record.customer_id].append(record)

    def family(self, primary: Resource) -> list[Resource]:
        """A primary resource followed by its attached resources."""
        return [primary, *(self.resources[r] for r in self.attached.get(primary.resource_id, ()))]

    def primary_of(self, resource: Resource) -> Resource:
        parent = resource.parent_resource_id
        return self.resources[parent] if parent is not None else resource

    def add_order(self, order: Order) -> None:
        self.orders[order.order_id] = order
        self.orders_by_customer[order.customer_id].append(order.order_id)
        if order.status == ORDER_PENDING_PAYMENT:
            for rid in order.resource_ids:
                self.pending_by_resource[rid] = order.order_id
                if rid in self.resources:
                    self.resources[rid].pending_order_id = order.order_id

    def close_order(self, order: Order, status: int, now: datetime) -> None:
        """Leave pending payment (paid or cancelled): the order's resources are free again."""
        order.status = status
        for rid in order.resource_ids:
            if self.pending_by_resource.get(rid) == order.order_id:
                del self.pending_by_resource[rid]
                self.resources[rid].pending_order_id = None
        if status != ORDER_PENDING_PAYMENT:
            order.payment_time = now if status == ORDER_COMPLETED else order.payment_time

    def is_partners_customer(self, partner_id: str, customer_id: str) -> bool:
        customer = self.customers.get(customer_id)
        return customer is not None and customer.partner_id == partner_id

    # -- inspection ------------------------------------------------------------------------------

    SECTIONS = (
        "partners", "customers", "resources", "orders", "coupon_quotas", "coupons",
        "coupon_records", "price_book",
    )  # fmt: skip

    def snapshot(
        self,
        *,
        customer_ids: Collection[str] | None = None,
        sections: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """The state as JSON-ready data; optionally only some customers' records, some sections.

        With ``customer_ids`` the per-customer sections come from the indexes (no full scan), so a
        benchmark can inspect a few customers of a large data set cheaply.
        """
        wanted = set(sections or self.SECTIONS)
        records = self._records(customer_ids)
        out: dict[str, Any] = {"now": utc_text(self.now())}
        for name in self.SECTIONS:
            if name in wanted:
                out[name] = [item.model_dump(mode="json") for item in records[name]()]
        return out

    def _records(
        self, customer_ids: Collection[str] | None
    ) -> dict[str, Callable[[], Iterable[Any]]]:
        everything: dict[str, Callable[[], Iterable[Any]]] = {
            "partners": self.partners.values,
            "coupon_quotas": self.quotas.values,
            "price_book": lambda: self.price_book,
        }
        if customer_ids is None:
            return everything | {
                "customers": self.customers.values,
                "resources": self.resources.values,
                "orders": self.orders.values,
                "coupons": self.coupons.values,
                "coupon_records": lambda: self.records,
            }
        ids = [c for c in dict.fromkeys(customer_ids) if c in self.customers]
        return everything | {
            "customers": lambda: [self.customers[c] for c in ids],
            "resources": lambda: [
                self.resources[r] for c in ids for r in self.resources_by_customer.get(c, ())
            ],
            "orders": lambda: [
                self.orders[o] for c in ids for o in self.orders_by_customer.get(c, ())
            ],
            "coupons": lambda: [x for c in ids for x in self.coupons_by_customer.get(c, ())],
            "coupon_records": lambda: [x for c in ids for x in self.records_by_customer.get(c, ())],
        }
