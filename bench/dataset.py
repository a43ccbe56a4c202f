"""A sandbox data set with as many resale customers as a benchmark needs, and its commands.

One partner (the demo data set's, with its keys and agency) and ``count`` customers, each a
resale customer that granted the agency, with a project and one or two in-use primary ECS
resources priced by the demo price book. The data set is validated by the sandbox's own
``Dataset`` model before it is written, so a file the sandbox would refuse is never produced.

Most benchmark commands are ``set_auto_renew`` with ``enabled: true``: one customer API call
(``auto_renewal_resources``), idempotent on the sandbox (enabling twice succeeds), so the same
resource can take any number of commands. The ``soak`` scenario mixes in the other types
(``mixed_command``): renewals (paid at once, ``allow_repeat``), price inquiries and coupons from
the data set's one coupon quota, whose balance no run can exhaust.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.sandbox.model import Dataset, Partner, Resource
from service.sandbox.state import load_dataset

__all__ = [
    "API",
    "QUOTA_ID",
    "BenchCustomer",
    "BenchData",
    "auto_renew_command",
    "generate",
    "mixed_command",
]

API = "auto_renewal_resources"  # the operation every benchmark command calls
QUOTA_ID = "cq-bench"  # the data set's coupon quota
QUOTA_BALANCE = "1000000000.00"  # a run of 1-unit coupons never exhausts it
SMALL_SET = 1_000  # up to this many customers, each gets two resources
REGION = "cn-north-4"


@dataclass(frozen=True, slots=True)
class BenchCustomer:
    customer_id: str
    resource_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BenchData:
    path: Path
    partner: Partner
    customers: tuple[BenchCustomer, ...]
    product: dict[str, str]  # one product of the price book, for price inquiries

    def partner_env(self) -> dict[str, str]:
        """The service's partner settings for this data set."""
        return {
            "BSS_PARTNER_ID": self.partner.partner_id,
            "BSS_ACCESS_KEY": self.partner.access_key,
            "BSS_SECRET_KEY": self.partner.secret_key,
            "BSS_AGENCY_NAME": self.partner.agency_name,
        }


def customer_id(n: int) -> str:
    """32 hex digits, like a real domain id, recognisable as the benchmark's."""
    return f"be7c{n:028x}"


def _template() -> tuple[Dataset, Resource]:
    demo = load_dataset()
    resource = next(
        r
        for r in demo.resources
        if r.is_main_resource == 1 and r.status == 2 and r.region_code == REGION
    )
    return demo, resource


def _resource(
    template: Resource, rid: str, cid: str, project: str, now: datetime
) -> dict[str, Any]:
    return {
        "resource_id": rid,
        "customer_id": cid,
        "resource_name": rid,
        "region_code": REGION,
        "project_id": project,
        "service_type_code": template.service_type_code,
        "resource_type_code": template.resource_type_code,
        "resource_spec_code": template.resource_spec_code,
        "is_main_resource": 1,
        "status": 2,
        "effective_time": (now - timedelta(days=30)).isoformat(),
        "expire_time": (now + timedelta(days=335)).isoformat(),
        "expire_policy": 0,
    }


def _customer(n: int, partner: Partner, project: str) -> dict[str, Any]:
    return {
        "customer_id": customer_id(n),
        "partner_id": partner.partner_id,
        "account_name": f"bench-customer-{n:06d}",
        "association_type": 2,  # resale: the partner acts through the agency
        "agency_granted": True,
        "projects": {REGION: project},
    }


def _quota(partner: Partner, now: datetime) -> dict[str, Any]:
    return {
        "quota_id": QUOTA_ID,
        "partner_id": partner.partner_id,
        "quota_value": QUOTA_BALANCE,
        "balance": QUOTA_BALANCE,
        "create_time": (now - timedelta(days=30)).isoformat(),
        "effective_time": (now - timedelta(days=30)).isoformat(),
        "expire_time": (now + timedelta(days=335)).isoformat(),
    }


def generate(count: int, path: Path) -> BenchData:
    """Write a data set of ``count`` customers to ``path`` and describe it."""
    demo, template = _template()
    partner = demo.partners[0]
    now = datetime.now(UTC).replace(microsecond=0)
    per_customer = 2 if count <= SMALL_SET else 1
    customers: list[dict[str, Any]] = []
    resources: list[dict[str, Any]] = []
    described: list[BenchCustomer] = []
    for n in range(count):
        cid = customer_id(n)
        project = f"{n:028x}b7c0"
        rids = tuple(f"bench-ecs-{n:06d}-{k}" for k in range(per_customer))
        customers.append(_customer(n, partner, project))
        resources.extend(_resource(template, rid, cid, project, now) for rid in rids)
        described.append(BenchCustomer(cid, rids))
    dataset = Dataset.model_validate(
        {
            "description": f"bss-relay bench: {count} resale customers of one partner",
            "partners": [partner.model_dump()],
            "customers": customers,
            "resources": resources,
            "coupon_quotas": [_quota(partner, now)],
            "price_book": [entry.model_dump(mode="json") for entry in demo.price_book],
        }
    )
    path.write_text(
        dataset.model_dump_json(
            exclude_defaults=True, exclude={"resources": {"__all__": {"auto_renew"}}}
        )
    )
    return BenchData(
        path=path,
        partner=partner,
        customers=tuple(described),
        product=_product(demo),
    )


def _product(demo: Dataset) -> dict[str, str]:
    """A non-linear product of the price book sold in ``REGION`` (what inquiries price)."""
    entry = next(p for p in demo.price_book if REGION in p.regions and not p.linear)
    return {
        "cloud_service_type": entry.cloud_service_type,
        "resource_type": entry.resource_type,
        "resource_spec": entry.resource_spec,
        "region": REGION,
    }


def auto_renew_command(
    command_id: str, customer: BenchCustomer, n: int = 0, priority: str | None = None
) -> bytes:
    """A ``set_auto_renew`` command (enable) for one of the customer's resources."""
    resource = customer.resource_ids[n % len(customer.resource_ids)]
    body: dict[str, object] = {
        "command_id": command_id,
        "type": "set_auto_renew",
        "payload": {"customer_id": customer.customer_id, "resource_id": resource, "enabled": True},
    }
    if priority is not None:
        body["priority"] = priority
    return json.dumps(body, separators=(",", ":")).encode()


def _project(customer: BenchCustomer) -> str:
    return f"{int(customer.customer_id[4:], 16):028x}b7c0"  # as generate() names it


def mixed_command(command_id: str, customer: BenchCustomer, n: int, data: BenchData) -> bytes:
    """Command ``n`` of a mix that cycles through every type, for one customer: enabling
    auto-renew (half of them), a one-month renewal paid at once, price inquiries (on demand
    and renewal) and a coupon of 1.00 from ``QUOTA_ID``."""
    cid = customer.customer_id
    resource = customer.resource_ids[n % len(customer.resource_ids)]
    step = n % 8
    if step in (0, 2, 4, 6):
        return auto_renew_command(command_id, customer, n)
    if step == 1:
        body: dict[str, Any] = {
            "type": "renew",
            "payload": {
                "customer_id": cid,
                "resource_ids": [resource],
                "period_type": "month",
                "period_num": 1,
                "allow_repeat": True,
            },
        }
    elif step == 3:
        product = {**data.product, "id": "1"}
        body = {
            "type": "inquire_price",
            "payload": {
                "customer_id": cid,
                "mode": "on_demand",
                "project_id": _project(customer),
                "products": [
                    {
                        **product,
                        "usage_factor": "Duration",
                        "usage_value": "1",
                        "usage_measure_id": 4,
                    }
                ],
            },
        }
    elif step == 5:
        body = {
            "type": "inquire_price",
            "payload": {
                "customer_id": cid,
                "mode": "renewal",
                "resource_ids": [resource],
                "period_type": "year",
                "period_num": 1,
            },
        }
    else:
        body = {
            "type": "issue_coupon",
            "payload": {"quota_id": QUOTA_ID, "customer_ids": [cid], "face_value": "1.00"},
        }
    body["command_id"] = command_id
    return json.dumps(body, separators=(",", ":")).encode()
