"""``bss-relay audit``: the money-moving commands (renew, issue_coupon) in the command store,
and what operators did (replay, quota_set, quota_reset, pause, resume).

For a command: who asked (the AMQP ``user_id`` the broker validated), for which partner and
customers, what (the renewal period and resources, the coupons' face value and total), the
outcome and the order or coupon ids the API returned. For an operator's action: when, who
(``actor``), which action and on what (``api``, ``customer`` or ``egress``, ``rate``, the
replayed ``command_id``). Read from ``STORE_URL`` like ``serve`` does; it changes nothing. What
the store no longer holds (pruned after ``RELAY_RETENTION_DAYS``) is not listed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from service.ops.arguments import positive_int, rfc3339
from service.settings import Settings
from service.store import open_store
from service.store.types import CommandStore, StoredCommand

__all__ = [
    "ACTION_NAMES",
    "MONEY_TYPES",
    "ActionEntry",
    "AuditEntry",
    "AuditFilter",
    "entry_from",
    "read_actions",
    "read_audit",
    "register_cli",
]

MONEY_TYPES = ("renew", "issue_coupon")
ACTION_NAMES = ("replay", "quota_set", "quota_reset", "pause", "resume")


@dataclass(frozen=True, slots=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    types: tuple[str, ...] = MONEY_TYPES
    partners: tuple[str, ...] = ()
    customers: tuple[str, ...] = ()
    users: tuple[str, ...] = ()  # commands: the producer; actions: the actor
    limit: int | None = None
    actions: tuple[str, ...] = ACTION_NAMES


@dataclass(frozen=True, slots=True)
class AuditEntry:
    requested_at: datetime | None
    command_id: str
    type: str
    requested_by: str | None
    partner_id: str | None
    customer_ids: list[str]
    what: str  # "2 month(s) of r-1, r-2" / "3 x 10.00"
    amount: Decimal | None  # coupons: total face value asked for
    period_months: int | None  # renewals: months bought per resource
    outcome: str | None  # the stored terminal event's outcome; None when none is stored
    error_code: str | None
    order_ids: list[str] = field(default_factory=list)
    coupon_ids: list[str] = field(default_factory=list)
    finished_at: datetime | None = None
    # where the store's row stands: received, in_flight or finished. A row without an outcome
    # is a command still running, waiting for a retry, or rejected after its claim (the store
    # keeps no rejection events yet: those are on the broker and in bss.commands.dlq).
    status: str = "finished"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("requested_at", "finished_at"):
            data[key] = None if data[key] is None else data[key].isoformat()
        data["amount"] = None if self.amount is None else str(self.amount)
        return data


def _json(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(kind: str, payload: dict[str, Any]) -> tuple[str, Decimal | None, int | None]:
    if kind == "renew":
        unit, num = payload.get("period_type"), payload.get("period_num")
        months = num * (12 if unit == "year" else 1) if isinstance(num, int) else None
        repeat = " (allow_repeat)" if payload.get("allow_repeat") else ""
        resources = ", ".join(str(r) for r in payload.get("resource_ids") or [])
        return f"{num} {unit}(s) of {resources}{repeat}", None, months
    customers = payload.get("customer_ids") or []
    face = payload.get("face_value")
    if face is None:
        return "-", None, None
    value = Decimal(str(face))
    return f"{len(customers)} x {face}", value * len(customers), None


def entry_from(record: StoredCommand) -> AuditEntry:
    command, event = _json(record.body), _json(record.event)
    payload = command.get("payload") or {}
    what, amount, months = _describe(record.type, payload)
    customers = payload.get("customer_ids") or (
        [payload["customer_id"]] if "customer_id" in payload else []
    )
    if not customers and record.customer_id:
        customers = [record.customer_id]
    result = event.get("result") or {}
    error = event.get("error") or {}
    return AuditEntry(
        requested_at=record.created_at,
        command_id=record.command_id,
        type=record.type,
        requested_by=record.requested_by,
        partner_id=record.partner_id,
        customer_ids=[str(c) for c in customers],
        what=what if command else "-",
        amount=amount,
        period_months=months,
        outcome=str(event["outcome"]) if event.get("outcome") else None,
        error_code=error.get("code"),
        order_ids=[str(o) for o in result.get("order_ids") or []],
        coupon_ids=[str(c.get("coupon_id")) for c in result.get("coupons") or []],
        finished_at=record.finished_at,
        status=record.status.value,
    )


@dataclass(frozen=True, slots=True)
class ActionEntry:
    """An operator's action: ``detail`` holds what it was on (``api``, ``customer`` or
    ``egress`` or ``all``, ``rate``; a replay's outcome)."""

    at: datetime
    actor: str
    action: str
    command_id: str | None
    customer_id: str | None
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"at": self.at.isoformat(), "actor": self.actor}
        line["action"] = self.action
        line.update(self.detail)
        if self.command_id is not None:
            line["command_id"] = self.command_id
        if self.customer_id is not None:
            line.setdefault("customer_id", self.customer_id)
        return line


async def read_actions(store: CommandStore, where: AuditFilter) -> list[ActionEntry]:
    """Operators' actions matching ``where``, oldest first."""
    rows = await store.steering.audit(since=where.since, until=where.until)
    entries = [
        ActionEntry(
            row["at"],
            row["actor"],
            row["action"],
            row["command_id"],
            row["customer_id"],
            _json(row["detail"].encode()),
        )
        for row in reversed(rows)
        if row["action"] in where.actions
        and (not where.users or row["actor"] in where.users)
        and (not where.customers or row["customer_id"] in where.customers)
    ]
    return entries[: where.limit] if where.limit is not None else entries


async def read_audit(store: CommandStore, where: AuditFilter) -> list[AuditEntry]:
    records = await store.list_commands(
        types=where.types,
        since=where.since,
        until=where.until,
        partner_ids=where.partners,
        requested_by=where.users,
        # a customer filter is applied here, after the query: the limit must count matches
        limit=None if where.customers else where.limit,
    )
    entries = [entry_from(record) for record in records]
    if where.customers:
        wanted = set(where.customers)
        entries = [e for e in entries if wanted.intersection(e.customer_ids)]
        entries = entries[: where.limit] if where.limit is not None else entries
    return entries


# --- the command line -------------------------------------------------------------------

DESCRIPTION = """\
List the money-moving commands (renew, issue_coupon) kept in the command store (STORE_URL,
as for serve): when and by whom they were asked (the broker-validated AMQP user_id), for which
partner and customers, what (renewal period and resources; coupon face value and total), the
outcome and the order or coupon ids; and what operators did (replay, quota_set, quota_reset,
pause, resume: when, who, on what). Changes nothing."""

EPILOG = """\
examples:
  bss-relay audit --since 2026-05-01T00:00:00Z --until 2026-05-02T00:00:00Z
  bss-relay audit --partner p-1 --type issue_coupon --json
  bss-relay audit --user erp-marketing --customer cu-42
  bss-relay audit --action quota_set --action pause --json     operators' changes only

Filters combine with AND; a filter given twice matches either value. The outcome column is
the terminal event's outcome and error code. "none stored (received|in_flight)" is a command
still running or waiting for a retry, or one rejected after it was claimed (a policy refusal,
say): the store keeps no rejection events yet; those are on bss.events and in the DLQ.
Commands older than RELAY_RETENTION_DAYS have been pruned from the store. --type alone
lists commands only, --action alone operators' actions only; --user matches a command's
producer or an action's actor. With --json, an action's line has at, actor, action and what it
was on (api, customer or egress, rate; command_id for a replay).

exit status: 0 listed (possibly nothing); 2 bad arguments, configuration or store."""

COLUMNS = (
    "requested_at",
    "command_id",
    "type",
    "by",
    "partner",
    "customers",
    "what",
    "outcome",
    "ids",
)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` verb to ``bss-relay``."""
    parser = subparsers.add_parser(
        "audit",
        help="list money-moving commands from the command store",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store-url", metavar="URL", help="default: $STORE_URL, as for serve")
    parser.add_argument("--env-file", default=None, help="read settings from this file too")
    group = parser.add_argument_group("filters (repeat one to match any of its values)")
    group.add_argument(
        "--since", type=rfc3339, metavar="TIME", help="first received at or after (RFC 3339)"
    )
    group.add_argument("--until", type=rfc3339, metavar="TIME", help="first received before")
    group.add_argument(
        "--type", dest="types", action="append", default=[], choices=MONEY_TYPES, metavar="TYPE"
    )
    group.add_argument("--partner", dest="partners", action="append", default=[], metavar="ID")
    group.add_argument("--customer", dest="customers", action="append", default=[], metavar="ID")
    group.add_argument(
        "--user",
        dest="users",
        action="append",
        default=[],
        metavar="NAME",
        help="the broker user that published the command (AMQP user_id)",
    )
    group.add_argument(
        "--action",
        dest="actions",
        action="append",
        default=[],
        choices=ACTION_NAMES,
        metavar="ACTION",
        help="an operator's action: " + ", ".join(ACTION_NAMES),
    )
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="at most N commands (and N actions)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=_run)


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None or value == "" else str(value)


def _row(entry: AuditEntry) -> tuple[str, ...]:
    outcome = entry.outcome or f"none stored ({entry.status})"
    outcome += f" {entry.error_code}" if entry.error_code else ""
    what = entry.what + (f" = {entry.amount}" if entry.amount is not None else "")
    return tuple(
        _cell(v)
        for v in (
            entry.requested_at,
            entry.command_id,
            entry.type,
            entry.requested_by,
            entry.partner_id,
            entry.customer_ids,
            what,
            outcome,
            entry.order_ids + entry.coupon_ids,
        )
    )


def render_table(entries: Sequence[AuditEntry]) -> str:
    rows = [COLUMNS, *(_row(e) for e in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _run(args: argparse.Namespace) -> int:
    if args.store_url is None:
        try:
            args.store_url = Settings(_env_file=args.env_file).store_url
        except ValidationError as exc:
            print(f"bss-relay audit: invalid configuration:\n{exc}", file=sys.stderr)
            return 2
    where = AuditFilter(
        since=args.since,
        until=args.until,
        types=tuple(args.types) or MONEY_TYPES,
        partners=tuple(args.partners),
        customers=tuple(args.customers),
        users=tuple(args.users),
        limit=args.limit,
        actions=tuple(args.actions) or ACTION_NAMES,
    )
    commands, actions = not args.actions or bool(args.types), not args.types or bool(args.actions)

    async def read() -> tuple[list[AuditEntry], list[ActionEntry]]:
        async with open_store(args.store_url) as store:
            found = await read_audit(store, where) if commands else []
            # actions name no partner: a partner filter leaves them out
            done = await read_actions(store, where) if actions and not args.partners else []
            return found, done

    try:
        entries, done = asyncio.run(read())
    except (OSError, ValueError, RuntimeError) as exc:  # the URL may hold a password: not shown
        print(f"bss-relay audit: cannot read the store: {type(exc).__name__}", file=sys.stderr)
        return 2
    if args.json:
        for line in [*(e.as_json() for e in entries), *(a.as_json() for a in done)]:
            print(json.dumps(line))
        return 0
    if commands:
        print(render_table(entries))
    if done:
        print(("\n" if commands else "") + render_actions(done))
    return 0


ACTION_COLUMNS = ("at", "actor", "action", "on")


def render_actions(entries: Sequence[ActionEntry]) -> str:
    def on(entry: ActionEntry) -> str:
        parts = [f"{k}={v}" for k, v in entry.detail.items() if v is not None]
        if entry.command_id:
            parts.insert(0, f"command_id={entry.command_id}")
        return " ".join(parts) or "-"

    rows = [
        ACTION_COLUMNS,
        *((_cell(e.at), e.actor, e.action, on(e)) for e in entries),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(ACTION_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
