"""Pacing arithmetic with a controlled clock: no test here waits on real time."""

from __future__ import annotations

import itertools

import pytest

from bench.measures import busiest_window as max_in_any_window
from service.api.operations import PUBLISHED_LIMITS
from service.pacing.limiter import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def admitted_instants(
    limiter: RateLimiter, clock: FakeClock, api: str, uid: str, n: int
) -> list[float]:
    return [clock.t + limiter.reserve(api, uid) for _ in range(n)]


def test_no_burst_at_start_and_even_spacing() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.03, clock=clock)
    instants = admitted_instants(limiter, clock, "op", "c1", 50)
    gaps = [b - a for a, b in itertools.pairwise(instants)]
    assert all(abs(g - 0.103) < 1e-9 for g in gaps)
    assert max_in_any_window(instants) == 10
    assert instants[0] == clock.t  # the first call goes at once


def test_no_burst_after_idle() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.01, clock=clock)
    admitted_instants(limiter, clock, "op", "c1", 5)
    clock.t += 30  # idle: a leaky bucket would have refilled to a burst of 10
    instants = admitted_instants(limiter, clock, "op", "c1", 30)
    assert max_in_any_window(instants) == 10


def test_egress_bucket_is_shared_by_customers() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.01, clock=clock)
    instants = []
    for i in range(40):
        instants.append(clock.t + limiter.reserve("op", f"c{i % 4}"))
    # four customers, each allowed 10/s, but one egress address: 10/s in total
    assert max_in_any_window(instants) == 10


def test_different_apis_do_not_share_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"a": 10, "b": 10}, guard_s=0.0, clock=clock)
    assert limiter.reserve("a", "c1") == 0
    assert limiter.reserve("b", "c1") == 0
    assert limiter.reserve("a", "c1") > 0


def test_defaults_come_from_the_published_table() -> None:
    limiter = RateLimiter(published=PUBLISHED_LIMITS, clock=FakeClock())
    assert limiter.limit("list_rate_on_period_detail") == 30
    assert limiter.limit("list_customer_orders") == 20
    assert limiter.limit("renewal_resources") == 10
    assert limiter.limit("create_temporary_access_key_by_agency") is None


def test_override_and_unlimited() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        {"renewal_resources": 2, "list_customer_orders": 0}, published=PUBLISHED_LIMITS, clock=clock
    )
    assert limiter.limit("renewal_resources") == 2
    assert all(limiter.reserve("list_customer_orders", "c") == 0 for _ in range(100))


def test_throttled_halves_rate_pauses_then_recovers() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.0, clock=clock, recovery=0.1)
    limiter.reserve("op", "c1")
    assert not limiter.throttled("op", "c1", pause_s=1.0)  # lone: the guard widens
    assert limiter.throttled("op", "c1", pause_s=1.0)  # and another: halved
    assert limiter.rates() == {"op/uid/c1": 5.0}
    assert limiter.delay("op", "c1") >= 1.0  # paused
    clock.t += 3.0  # two seconds of recovery after the pause: +1/s per second
    limiter.reserve("op", "c1")
    assert abs(limiter.rates()["op/uid/c1"] - 7.0) < 1e-9
    clock.t += 10.0
    limiter.reserve("op", "c1")
    assert limiter.rates() == {}  # back at the configured ceiling


def test_rate_never_falls_below_floor() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, clock=clock, floor=0.5)
    for _ in range(20):
        limiter.throttled("op", "c1")
    assert limiter.rates()["op/uid/c1"] == 0.5


def test_idle_buckets_are_swept_so_memory_stays_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, clock=clock)
    for i in range(1000):
        clock.t += 0.2
        limiter.reserve("op", f"customer-{i}")
    assert len(limiter) == 1001  # 1000 customer buckets + 1 egress bucket
    # every bucket whose next slot has passed goes; the last customer's slot, and so the
    # egress bucket's, is still ahead
    assert limiter.sweep() == 999
    clock.t += 1
    assert limiter.sweep() == 2
    assert len(limiter) == 0


def test_a_swept_bucket_is_paced_exactly_like_the_one_it_replaced() -> None:
    kept_clock, swept_clock = FakeClock(), FakeClock()
    kept = RateLimiter({"op": 10}, guard_s=0.03, clock=kept_clock)
    swept = RateLimiter({"op": 10}, guard_s=0.03, clock=swept_clock)
    sends: dict[str, list[float]] = {"kept": [], "swept": []}
    dropped = 0
    for step in range(400):
        for name, limiter, clock in (("kept", kept, kept_clock), ("swept", swept, swept_clock)):
            if step % 20 in (0, 1, 2):  # bursts, with pauses longer than their slots
                sends[name].append(clock.t + limiter.reserve("op", "c1"))
            if name == "swept":
                dropped += limiter.sweep()
            clock.t += 0.05
    assert sends["kept"] == sends["swept"]
    assert dropped >= 2 * 19  # its buckets were dropped between the bursts, and re-made
    assert all(b - a >= 0.103 - 1e-9 for a, b in itertools.pairwise(sends["kept"]))


def test_pending_and_throttled_buckets_are_not_swept() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, clock=clock)
    for _ in range(5):
        limiter.reserve("op", "busy")  # slots reserved half a second ahead
    limiter.throttled("op", "slowed")
    limiter.throttled("op", "slowed")
    clock.t += 0.2
    limiter.sweep()
    assert limiter.delay("op", "busy") > 0
    assert "op/uid/slowed" in limiter.rates()


def test_star_overrides_every_published_limit() -> None:
    table = PUBLISHED_LIMITS
    limiter = RateLimiter({"*": 0, "renewal_resources": 3}, published=table, clock=FakeClock())
    assert limiter.limit("list_customer_orders") is None  # 0 = unlimited
    assert limiter.limit("renewal_resources") == 3
    fifty = RateLimiter({"*": 50}, published=table, clock=FakeClock())
    assert fifty.limit("list_customer_orders") == 50
    assert fifty.limit("create_temporary_access_key_by_agency") is None  # IAM: not throttled


def test_the_guard_starts_small_enough_for_98_percent_of_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, clock=clock)  # default guard
    instants = admitted_instants(limiter, clock, "op", "c1", 101)
    assert max_in_any_window(instants) == 10
    assert 100 / (instants[-1] - instants[0]) >= 0.98 * 10


def test_a_lone_429_widens_the_guard_and_keeps_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.002, guard_max_s=0.05, clock=clock)
    admitted_instants(limiter, clock, "op", "c1", 5)
    assert limiter.throttled("op", "c1") is False
    assert limiter.rates() == {}  # not halved
    assert abs(limiter.guard("op").seconds - 0.007) < 1e-9  # 2 ms + the 5 ms step
    clock.t += 2.0  # the queue drained
    instants = admitted_instants(limiter, clock, "op", "other", 3)
    gaps = [b - a for a, b in itertools.pairwise(instants)]
    assert all(abs(g - 0.1007) < 1e-9 for g in gaps)  # every bucket of the API, wider
    clock.t += 3.0  # another lone one later: wider again, still no halving
    assert limiter.throttled("op", "c1") is False
    assert abs(limiter.guard("op").seconds - 0.014) < 1e-9
    assert limiter.rates() == {}


def test_429s_a_wider_guard_does_not_explain_halve_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.002, guard_max_s=0.05, clock=clock)
    assert limiter.throttled("op", "c1") is False
    clock.t += 1.0
    assert limiter.throttled("op", "c1") is True  # not lone: someone else spends the quota
    assert limiter.rates() == {"op/uid/c1": 5.0}
    widest = RateLimiter({"op": 10}, guard_s=0.05, guard_max_s=0.05, clock=clock)
    assert widest.throttled("op", "c1") is True  # the guard cannot widen any more
    assert widest.rates() == {"op/uid/c1": 5.0}


def test_429s_to_requests_sent_before_the_guard_widened_are_the_same_episode() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.002, guard_max_s=0.05, clock=clock)
    in_flight = [clock.t + limiter.reserve("op", "c1") for _ in range(3)]
    clock.t = in_flight[-1] + 0.05
    assert limiter.throttled("op", "c1", sent_at=in_flight[0]) is False  # widens
    # the others were sent with the narrower guard too: explained, neither halved nor wider
    assert limiter.throttled("op", "c1", sent_at=in_flight[1]) is False
    assert limiter.throttled("op", "c1", sent_at=in_flight[2]) is False
    assert limiter.rates() == {}
    assert abs(limiter.guard("op").seconds - 0.007) < 1e-9
    clock.t += 0.5  # one sent after the widening and refused again: halved
    assert limiter.throttled("op", "c1", sent_at=clock.t - 0.1) is True


def _sends_with_lateness(limiter: RateLimiter, clock: FakeClock, *, report: bool) -> list[float]:
    """A caller that asks for each slot when it is due (as the dispatcher does) and sends
    late now and then: 0-60 ms after the slot, as a loaded event loop or a store round trip
    between slot and send does. Returns the instants the requests left."""
    import random

    rng = random.Random(7)
    sent: list[float] = []
    for _ in range(400):
        clock.t += limiter.delay("op", "c1")  # wait until the joint slot is due
        slot = clock.t + limiter.reserve("op", "c1")
        lateness = rng.choice([0.0, 0.0, 0.0, 0.001, 0.004, 0.02, 0.06])
        sent.append(slot + lateness)
        if report:
            limiter.late("op", "c1", slot=slot, sent_at=slot + lateness)
    return sent


def test_late_sends_given_back_keep_every_window_within_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.002, clock=clock)
    sent = _sends_with_lateness(limiter, clock, report=True)
    assert max_in_any_window(sent) == 10
    # the cost is only the lateness beyond half the guard (11.6 ms per send on average
    # here: 1 / (0.1002 + 0.0116) = 8.94/s), not a wider spacing for every send
    assert len(sent) / (sent[-1] - sent[0]) > 8.9


def test_late_sends_not_given_back_would_overfill_a_window() -> None:
    """The defect the lateness report removes: slots on time, requests not."""
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.002, clock=clock)
    assert max_in_any_window(_sends_with_lateness(limiter, clock, report=False)) > 10


def test_lateness_within_the_tolerance_moves_nothing() -> None:
    """A request absorbs a quarter of the guard; the rest is left for the path."""
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.01, clock=clock)
    assert limiter.tolerance("op") == pytest.approx(0.0025)
    slot = clock.t + limiter.reserve("op", "c1")
    before = limiter.delay("op", "c1")
    assert limiter.late("op", "c1", slot=slot, sent_at=slot + 0.002) == 0.0
    assert limiter.delay("op", "c1") == before
    assert limiter.late("op", "c1", slot=slot, sent_at=slot + 0.025) == pytest.approx(0.0225)
    assert limiter.delay("op", "c1") == pytest.approx(before + 0.0225)
    assert limiter.egress_delay("op") == pytest.approx(before + 0.0225)  # both keys move


def test_a_widened_guard_narrows_back_after_a_quiet_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"op": 10}, guard_s=0.01, clock=clock)
    limiter.reserve("op", "c1")
    assert limiter.throttled("op", "c1") is False  # lone: 10 -> 20 ms
    clock.t += 3
    assert limiter.throttled("op", "c1") is False  # lone again: 20 -> 40 ms
    assert limiter.guard("op").seconds == pytest.approx(0.04)
    clock.t += 59
    limiter.reserve("op", "c1")
    assert limiter.guard("op").seconds == pytest.approx(0.04)  # not quiet for long enough
    clock.t += 1
    limiter.reserve("op", "c1")
    assert limiter.guard("op").seconds == pytest.approx(0.02)  # a quiet minute: halved
    clock.t += 1
    limiter.reserve("op", "c1")
    assert limiter.guard("op").seconds == pytest.approx(0.02)  # one step per quiet minute
    clock.t += 60
    limiter.reserve("op", "c1")
    assert limiter.guard("op").seconds == pytest.approx(0.01)
    clock.t += 600
    limiter.reserve("op", "c1")
    assert limiter.guard("op").seconds == pytest.approx(0.01)  # never below its start
