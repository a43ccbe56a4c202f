"""The policy file (``RELAY_POLICY_FILE``, CONTRACT §7): producer permissions and money guardrails.

YAML or JSON (by suffix: ``.json`` is JSON, anything else YAML). Every section is optional; a
missing section imposes nothing; no file at all means no policy. Unknown keys are errors (a
misspelt cap must not silently impose nothing). Durations are ``<n>s``, ``<n>m``, ``<n>h`` or
``<n>d``; money is a decimal string (``"500.00"``, at most 2 decimals), never a float.

Validated at start (an invalid file stops ``serve`` with exit status 2) and on SIGHUP
(:class:`PolicyHolder`): an invalid new file keeps the old policy and logs why. Errors name the
key path and, for YAML and JSON alike, the line of the offending node.

The rules that need nothing but the command and its sender are here (:meth:`Policy.admit`);
the ones that need the store (the renewal window, the coupon caps) are in
``service.guardrails.gate``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Final

import structlog
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from schemas.commands import (
    Command,
    CommandType,
    IssueCouponCommand,
    RenewCommand,
)

__all__ = [
    "POLICY_DENIED",
    "CouponRules",
    "Denial",
    "Policy",
    "PolicyError",
    "PolicyHolder",
    "ProducerRule",
    "RenewRules",
    "command_customers",
    "load_policy",
    "parse_duration",
    "parse_money",
]

log = structlog.get_logger(__name__)

POLICY_DENIED: Final = "RELAY.POLICY_DENIED"
ANY: Final = "*"
_DURATION = re.compile(r"^([0-9]+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_TYPES = frozenset(t.value for t in CommandType)


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file, the key and the line."""


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a policy refuses a command. ``rule`` is the policy key, e.g.
    ``issue_coupon.per_customer_per_day`` or ``producers.erp-billing.types``."""

    rule: str
    message: str
    code: str = POLICY_DENIED

    def text(self) -> str:
        """The event's error message: the rule first, so it is easy to find."""
        return f"policy rule {self.rule}: {self.message}"


def parse_duration(value: object) -> timedelta:
    if not isinstance(value, str) or not (match := _DURATION.match(value.strip())):
        raise ValueError("a duration is written like 30m, 24h or 7d")
    amount = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if amount <= timedelta(0):
        raise ValueError("a duration must be positive")
    return amount


def parse_money(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        # ValueError, not TypeError: pydantic reports only ValueErrors as validation errors
        raise ValueError(  # noqa: TRY004
            'money is a decimal string, e.g. "500.00" (a float is not exact)'
        )
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError("money must be a positive amount")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise ValueError("money has at most 2 decimal places")
    return amount


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
MoneyAmount = Annotated[Decimal, BeforeValidator(parse_money)]


def _names(value: object) -> object:
    if isinstance(value, str):  # `partners: "*"` is as clear as `partners: ["*"]`
        return [value]
    return value


Names = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_names)]


class _Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProducerRule(_Rules):
    """What one broker user may ask for. ``"*"`` in a list allows everything."""

    types: Names
    """Command types this user may send (``renew``, ``set_auto_renew``, ``inquire_price``,
    ``issue_coupon``), or ``"*"``."""
    partners: Names = Field(default_factory=lambda: [ANY])
    """Partner ids it may act for, or ``"*"`` (the default)."""
    customers: Names | None = None
    """When set: the only customers its commands may name (every customer of a coupon batch)."""

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        unknown = sorted(set(types) - _TYPES - {ANY})
        if unknown:
            raise ValueError(f"unknown command type(s) {unknown}; known: {sorted(_TYPES)}")
        return types


class RenewRules(_Rules):
    same_resource_within: Duration | None = None
    """A resource renewed successfully this recently by another command is not renewed again,
    unless the command sets ``payload.allow_repeat``."""
    max_months: int | None = Field(default=None, ge=1)
    """The longest period one command may buy; a year counts 12 months."""


class CouponRules(_Rules):
    max_face_value: MoneyAmount | None = None
    """Largest face value of one coupon."""
    per_customer_per_day: MoneyAmount | None = None
    """Largest total face value issued to one customer in any rolling 24 hours."""
    per_partner_per_day: MoneyAmount | None = None
    """Largest total face value issued by one partner in any rolling 24 hours."""

    @property
    def has_caps(self) -> bool:
        return self.per_customer_per_day is not None or self.per_partner_per_day is not None


def command_customers(command: Command) -> list[str]:
    if isinstance(command, IssueCouponCommand):
        return list(command.payload.customer_ids)
    customer = command.customer_id
    return [] if customer is None else [customer]


def _listed(value: str | None, allowed: Sequence[str]) -> bool:
    return ANY in allowed or (value is not None and value in allowed)


class Policy(_Rules):
    producers: dict[str, ProducerRule] | None = None
    """When present, every command must carry an AMQP ``user_id`` listed here."""
    renew: RenewRules = Field(default_factory=RenewRules)
    issue_coupon: CouponRules = Field(default_factory=CouponRules)

    def admit(
        self, command: Command, requested_by: str | None, *, partner_id: str | None = None
    ) -> Denial | None:
        """The rules that need only the command and its sender; ``None`` when all pass.

        ``partner_id``: the partner the command will act for, when the command leaves it out
        (one partner configured); defaults to ``command.partner_id``.
        """
        partner = partner_id if partner_id is not None else command.partner_id
        denial = self._producer(command, requested_by, partner)
        if denial is not None:
            return denial
        if isinstance(command, RenewCommand) and self.renew.max_months is not None:
            payload = command.payload
            months = payload.period_num * (12 if payload.period_type == "year" else 1)
            if months > self.renew.max_months:
                return Denial(
                    "renew.max_months",
                    f"{payload.period_num} {payload.period_type}(s) is {months} months, "
                    f"more than the {self.renew.max_months} one command may buy",
                )
        cap = self.issue_coupon.max_face_value
        face_value = command.payload.face_value if isinstance(command, IssueCouponCommand) else None
        if face_value is not None and cap is not None and face_value > cap:
            return Denial(
                "issue_coupon.max_face_value",
                f"face value {face_value} is more than {cap} per coupon",
            )
        return None

    def _producer(
        self, command: Command, requested_by: str | None, partner: str | None
    ) -> Denial | None:
        if self.producers is None:
            return None
        if requested_by is None:
            return Denial(
                "producers",
                "the message has no AMQP user_id; producers are configured, so every "
                "command must be published with user_id set to its broker user",
            )
        rule = self.producers.get(requested_by)
        if rule is None:
            return Denial("producers", f"broker user {requested_by!r} is not listed")
        return _producer_rule(command, requested_by, rule, partner)


def _producer_rule(
    command: Command, user: str, rule: ProducerRule, partner: str | None
) -> Denial | None:
    key = f"producers.{user}"
    if not _listed(command.type, rule.types):
        return Denial(f"{key}.types", f"{user!r} may not send {command.type}")
    if not _listed(partner, rule.partners):
        return Denial(f"{key}.partners", f"{user!r} may not act for partner {partner!r}")
    if rule.customers is not None:
        refused = [c for c in command_customers(command) if not _listed(c, rule.customers)]
        if refused:
            return Denial(
                f"{key}.customers",
                f"{user!r} may not act for customer(s) {', '.join(refused[:5])}",
            )
    return None


# --- reading the file -------------------------------------------------------------------


def _lines(
    node: yaml.Node, path: tuple[str | int, ...], into: dict[tuple[str | int, ...], int]
) -> None:
    into[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            into[(*path, name)] = key.start_mark.line + 1
            _lines(value, (*path, name), into)
            into[(*path, name)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), into)


def _line_map(text: str) -> dict[tuple[str | int, ...], int]:
    """Key path -> line number, from YAML's composer (JSON files parse as YAML too)."""
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if node is not None:
        _lines(node, (), lines)
    return lines


def _where(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> str:
    # pydantic adds non-key parts (the union arm, validator names): keep the longest prefix
    # that names a node of the file.
    path = tuple(part for part in loc if not (isinstance(part, str) and "[" in part))
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            line = lines[path[:end]]
            key = ".".join(str(p) for p in path) or "(top level)"
            return f"line {line}, key {key}"
    return f"key {'.'.join(str(p) for p in path) or '(top level)'}"


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{path}: {where}invalid YAML: {problem}") from None


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; :class:`PolicyError` names every problem's line and key.
    Blocking (small file): call it from a thread on the event loop."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror}") from None
    data = _parse(path, text)
    if data is None:
        data = {}  # an empty file imposes nothing, like a file of empty sections
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: line 1: the policy file must be a mapping of sections")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        lines = _line_map(text)
        problems = [
            f"{_where(tuple(error['loc']), lines)}: {error['msg']}"
            for error in exc.errors(include_url=False)
        ]
        raise PolicyError(f"{path}: " + "; ".join(problems)) from None


class PolicyHolder:
    """The policy in force, swapped whole on :meth:`reload`. Readers take :attr:`current` once
    per command, so a reload never changes the rules under a command being checked."""

    def __init__(self, path: Path | None, policy: Policy | None = None) -> None:
        self.path = path
        self.current = policy
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    @classmethod
    def load(cls, path: Path | None) -> PolicyHolder:
        """At start: no path, no policy; an invalid file raises :class:`PolicyError`."""
        return cls(path, None if path is None else load_policy(path))

    async def reload(self) -> bool:
        """Read the file again; keep the old policy (and log why) when the new one is invalid."""
        if self.path is None:
            log.info("policy_reload_skipped", reason="RELAY_POLICY_FILE is not set")
            return False
        try:
            async with self._lock:  # one read at a time: the last signal's file wins
                policy = await asyncio.to_thread(load_policy, self.path)
        except PolicyError as exc:
            log.warning("policy_reload_failed_keeping_old", path=str(self.path), error=str(exc))
            return False
        self.current = policy
        log.info("policy_reloaded", path=str(self.path))
        return True

    def request_reload(self) -> None:
        """A SIGHUP handler: start a reload on the running loop."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)
