"""A deterministic price book: list prices per product, and the customer's discount on top.

A product is found by (cloud service type, resource type, region, spec), as BSS matches it; any
mismatch is "product not found". Linear products (disk per GB, bandwidth per Mbit/s) multiply the
unit price by the size. Period prices are rounded to cents (ROUND_HALF_UP) once, at the end;
on-demand prices keep 6 decimals (10 with ``inquiry_precision`` 1), as the API documents.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from service.sandbox.model import PriceEntry, Resource

__all__ = ["CENT", "PERIOD_DAY", "PERIOD_HOUR", "PERIOD_MONTH", "PERIOD_YEAR", "PriceBook", "Quote"]

CENT = Decimal("0.01")
PERIOD_DAY, PERIOD_MONTH, PERIOD_YEAR, PERIOD_HOUR = 0, 2, 3, 4
_DAYS_PER_MONTH = Decimal(30)


@dataclass(frozen=True, slots=True)
class Quote:
    """A list price and what the customer pays after its discount."""

    official: Decimal
    amount: Decimal

    @property
    def discount(self) -> Decimal:
        return self.official - self.amount

    def __add__(self, other: Quote) -> Quote:
        return Quote(self.official + other.official, self.amount + other.amount)


ZERO_QUOTE = Quote(Decimal("0.00"), Decimal("0.00"))


def quantum(places: int) -> Decimal:
    return Decimal(1).scaleb(-places)


def discounted(official: Decimal, rate: Decimal, places: int = 2) -> Quote:
    step = quantum(places)
    listed = official.quantize(step, ROUND_HALF_UP)
    return Quote(listed, (official * rate).quantize(step, ROUND_HALF_UP))


class PriceBook:
    def __init__(self, entries: Iterable[PriceEntry]) -> None:
        self._index: dict[tuple[str, str, str, str], PriceEntry] = {}
        for entry in entries:
            for region in entry.regions:
                key = (entry.cloud_service_type, entry.resource_type, region, entry.resource_spec)
                if key in self._index:
                    raise ValueError(f"price book: duplicate product {key}")
                self._index[key] = entry

    def find(self, service: str, resource_type: str, region: str, spec: str) -> PriceEntry | None:
        return self._index.get((service, resource_type, region, spec))

    def for_resource(self, resource: Resource) -> PriceEntry | None:
        return self.find(
            resource.service_type_code,
            resource.resource_type_code,
            resource.region_code,
            resource.resource_spec_code,
        )

    @staticmethod
    def units(entry: PriceEntry, size: Decimal | None) -> Decimal:
        if not entry.linear:
            return Decimal(1)
        return size if size is not None else Decimal(0)

    def period_list_price(
        self, entry: PriceEntry, period_type: int, period_num: int, size: Decimal | None
    ) -> Decimal:
        """Unrounded list price of ``period_num`` periods of one unit count."""
        per_period = {
            PERIOD_MONTH: entry.monthly,
            PERIOD_YEAR: entry.yearly,
            PERIOD_DAY: entry.monthly / _DAYS_PER_MONTH,
            PERIOD_HOUR: entry.hourly,
        }[period_type]
        return per_period * period_num * self.units(entry, size)

    def renewal_quote(
        self, resource: Resource, period_type: int, period_num: int, rate: Decimal
    ) -> Quote:
        entry = self.for_resource(resource)
        if entry is None:
            raise LookupError(f"no price for resource {resource.resource_id}")
        listed = self.period_list_price(entry, period_type, period_num, resource.spec_size)
        return discounted(listed, rate)

    def hourly_list_price(self, entry: PriceEntry, hours: Decimal, size: Decimal | None) -> Decimal:
        return entry.hourly * hours * self.units(entry, size)
