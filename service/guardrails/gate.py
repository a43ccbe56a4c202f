"""The policy gate: the policy's verdict on a command the message path has claimed, before any
API call, and the coupon reservation that makes the caps exact.

Order inside :meth:`PolicyGate.admitted` (entered after the claim, inside the customer's renewal
lock, right before the handler runs):

1. ``Policy.admit``: producer permissions, ``renew.max_months``, ``issue_coupon.max_face_value``;
2. renewals: ``renew.same_resource_within`` against the store's renewal ledger, unless the
   payload sets ``allow_repeat``; passing reserves the resources for this command (atomic with
   the check), so a second command renewing one of them meanwhile is refused too;
3. coupons: ``store.reserve_coupons`` against ``per_customer_per_day``/``per_partner_per_day``.

An unreachable store raises ``StoreUnavailable`` (the command waits, no attempt spent). A
refusal raises :class:`PolicyDenied` (a ``CommandRejected``: the command ends ``rejected``
with ``RELAY.POLICY_DENIED``, dead-lettered, no API call). A command whose earlier API call may
have taken effect (``uncertain``) is not judged again: it was admitted then, and must be
reconciled, not rejected. If the handler then raises a rejection, the reservations are
released; every other end settles them in ``store.finish`` (see ``service.store.ledger``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import timedelta

import structlog

from handlers.errors import CommandRejected, Disposition, RelayError
from schemas.commands import Command, IssueCouponCommand, RenewCommand
from service.guardrails.policy import POLICY_DENIED, Denial, Policy, PolicyHolder
from service.store.errors import store_call
from service.store.types import CommandStore, CouponCaps

__all__ = ["PolicyDenied", "PolicyGate"]

log = structlog.get_logger(__name__)

MAX_NAMED = 5
_ADMITTED: AbstractAsyncContextManager[None] = nullcontext()  # reusable: it keeps no state


class PolicyDenied(CommandRejected):
    def __init__(self, denial: Denial) -> None:
        super().__init__(POLICY_DENIED, denial.text())
        self.denial = denial


class PolicyGate:
    """The policy step of the message path: admits a claimed command, or refuses it."""

    def __init__(self, policy: PolicyHolder, store: CommandStore) -> None:
        self.policy = policy
        self._store = store

    def admitted(
        self,
        command: Command,
        *,
        requested_by: str | None,
        partner_id: str,
        uncertain: bool = False,
    ) -> AbstractAsyncContextManager[None]:
        """Raise :class:`PolicyDenied`, or let the handler run inside."""
        policy = self.policy.current  # one policy for the whole check, whatever a reload does
        if policy is None or uncertain:
            return _ADMITTED  # nothing to check: no generator per command
        return self._judged(policy, command, requested_by=requested_by, partner_id=partner_id)

    @asynccontextmanager
    async def _judged(
        self, policy: Policy, command: Command, *, requested_by: str | None, partner_id: str
    ) -> AsyncIterator[None]:
        denial = policy.admit(command, requested_by, partner_id=partner_id)
        release: Callable[[str], Awaitable[None]] | None = None
        if denial is None and isinstance(command, RenewCommand):
            denial, reserved = await self._renewal(policy, command)
            release = self._store.release_renewals if reserved else None
        if denial is None and isinstance(command, IssueCouponCommand):
            denial, reserved = await self._reserve(policy, command, partner_id)
            release = self._store.release_coupons if reserved else None
        if denial is not None:
            log.warning("policy_denied", rule=denial.rule, requested_by=requested_by)
            raise PolicyDenied(denial)
        try:
            yield
        except RelayError as exc:
            # rejected: no call was made, so nothing the reservation held for happened.
            # Every other end is settled by store.finish from the outcome.
            if release is not None and exc.disposition is Disposition.REJECT:
                await store_call(release(command.command_id))
            raise

    async def _renewal(self, policy: Policy, command: RenewCommand) -> tuple[Denial | None, bool]:
        """(denial, reserved): the renewed-recently check and, when it passes, the resources
        reserved for this command in the same atomic step."""
        within = policy.renew.same_resource_within
        if within is None or command.payload.allow_repeat:
            return None, False
        taken = await store_call(
            self._store.reserve_renewals(
                command.command_id,
                customer_id=command.payload.customer_id,
                resource_ids=command.payload.resource_ids,
                within=within,
            )
        )
        if not taken:
            return None, True
        named = ", ".join(f"{r} (by {c})" for r, c in list(taken.items())[:MAX_NAMED])
        denial = Denial(
            "renew.same_resource_within",
            f"renewed (or being renewed) by another command within the last "
            f"{_duration(within)}: {named}; set payload.allow_repeat to renew again",
        )
        return denial, False

    async def _reserve(
        self, policy: Policy, command: IssueCouponCommand, partner_id: str
    ) -> tuple[Denial | None, bool]:
        rules = policy.issue_coupon
        if not rules.has_caps:
            return None, False
        exceeded = await store_call(
            self._store.reserve_coupons(
                command.command_id,
                partner_id=partner_id,
                customer_ids=command.payload.customer_ids,
                face_value=command.payload.face_value,
                caps=CouponCaps(
                    per_customer=rules.per_customer_per_day,
                    per_partner=rules.per_partner_per_day,
                ),
            )
        )
        if exceeded is None:
            return None, True
        rule = f"issue_coupon.per_{exceeded.scope}_per_day"
        denial = Denial(
            rule,
            f"{exceeded.scope} {exceeded.subject} has {exceeded.used} issued or reserved in "
            f"the last 24h; {exceeded.asked} more would pass the cap of {exceeded.cap}",
        )
        return denial, False


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
