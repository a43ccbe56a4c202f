"""A request's lateness for its slot is measured when its headers are written."""

from __future__ import annotations

from service.api.client import BssHttp, Endpoints, Response, session_from
from service.api.operations import OPERATIONS
from service.api.signer import Signer
from service.pacing.dispatcher import Dispatcher, PacingConfig
from service.pacing.limits import Limits
from service.pacing.local import LocalBuckets
from service.sandbox.server import SandboxServer
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control


class Ticking:
    """A clock that moves one second each time it is read: which reading a caller used
    tells which moment it measured."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


class Behind(Dispatcher):
    """Grants every turn at once, for a slot that was due at the clock's reading then, and
    records the lateness it is told of."""

    def __init__(self, clock: Ticking) -> None:
        limits = Limits({"list_quota_coupons": 10})
        super().__init__(LocalBuckets(clock=clock), limits, config=PacingConfig())
        self.lateness: list[tuple[float, float]] = []

    async def turn(
        self,
        api: str,
        uid: str,
        *,
        priority: int = 2,
        command_id: str | None = None,
        since: float | None = None,
    ) -> float | None:
        return self.buckets.now()

    def late(self, api: str, uid: str, *, slot: float, sent_at: float) -> float:
        self.lateness.append((slot, sent_at))
        return super().late(api, uid, slot=slot, sent_at=sent_at)


async def list_coupons(
    url: str, dispatcher: Dispatcher, metrics: Metrics | None = None
) -> Response:
    """One partner call through the relay's HTTP client, on a session made as ``serve``'s."""
    settings = Settings(bss_endpoint=url)
    async with session_from(settings.api) as session:
        http = BssHttp(
            session=session,
            endpoints=Endpoints(bss=settings.bss_endpoint, iam=settings.bss_endpoint),
            dispatcher=dispatcher,
            metrics=metrics,
        )
        return await http.call(
            OPERATIONS["list_quota_coupons"],
            Signer(ids.PARTNER_AK, ids.PARTNER_SK),
            parent_uid=ids.PARTNER_ID,
            body=b"{}",
        )


async def test_the_write_of_the_headers_is_the_moment_that_counts(sandbox: SandboxServer) -> None:
    behind = Behind(Ticking())
    answer = await list_coupons(sandbox.url, behind)
    assert answer.status == 200
    [(slot, sent_at)] = behind.lateness
    # readings: the slot (1), handing the request to the session (2), the headers written
    # (3): the write's reading is the one given back, so the lateness the request picked up
    # on its way out (connection set-up, a busy loop) moves the buckets on too
    assert sent_at - slot == 2.0


class Stale(Dispatcher):
    """Grants a turn whose slot passed 80 ms ago, then one that is due now."""

    def __init__(self) -> None:
        limits = Limits({"list_quota_coupons": 10})
        super().__init__(LocalBuckets(), limits, config=PacingConfig(guard_min=0.01))
        self.turns = 0

    async def turn(
        self,
        api: str,
        uid: str,
        *,
        priority: int = 2,
        command_id: str | None = None,
        since: float | None = None,
    ) -> float | None:
        self.turns += 1
        now = self.buckets.now()
        return now - 0.08 if self.turns == 1 else now


async def test_a_slot_woken_up_for_too_late_is_let_go(
    sandbox: SandboxServer, control: Control
) -> None:
    stale = Stale()
    metrics = Metrics()
    answer = await list_coupons(sandbox.url, stale, metrics)
    assert answer.status == 200
    assert stale.turns == 2  # the stale slot was let go, the next one used
    logged = [e for e in await control.get("requests") if e["api"] == "list_quota_coupons"]
    assert len(logged) == 1  # one request: the missed slot sent nothing
    assert (
        metrics.registry.get_sample_value(
            "bss_relay_missed_slots_total", {"api": "list_quota_coupons"}
        )
        == 1.0
    )
