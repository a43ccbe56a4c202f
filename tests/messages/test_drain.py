"""The expected start of a parked command (``service.messages.admission.Drain``): the buckets
drain every waiting customer in turn, so a customer's wait depends on how much the others
have left, not only on how many share the egress now."""

from __future__ import annotations

import pytest

from service.messages.admission import Drain


def drain(
    others: list[int], *, egress: float, own: float = 100.0, direct: int = 0, gone_by: int = 0
) -> Drain:
    return Drain(0.0, 1 / own, 1 / egress, direct, gone_by, tuple(sorted(others)))


def test_light_customers_that_run_out_stop_taking_turns() -> None:
    """The parking bench's shape: 3 hot customers (150 each) and 5 light ones (10 each) on an
    egress at 5/s. A hot command with 100 of its customer's before it starts after the egress
    served those 100, 100 of each other hot customer and the light ones' 10 each: 350
    requests, 70 s. The pace now (5/8 per customer) times 100 said 160 s."""
    hot = drain([150, 150, 10, 10, 10, 10, 10], egress=5.0)
    assert hot.wait(100) == pytest.approx(70.0)
    assert hot.wait(5) == pytest.approx((5 + 7 * 5) / 5)  # early on, all eight take turns
    assert hot.wait(0) == 0.0


def test_alone_the_customer_goes_at_the_slower_of_its_buckets() -> None:
    assert drain([], egress=10.0, own=5.0).wait(20) == pytest.approx(4.0)
    assert drain([], egress=2.0, own=5.0).wait(10) == pytest.approx(5.0)


def test_commands_held_in_memory_go_before_the_parked_ones() -> None:
    # the first place of the line, behind 2 held here: 2 own + 2 of the other customer
    assert drain([3], egress=1.0, direct=2).start(1) == pytest.approx(4.0)


def test_a_place_counts_what_every_replica_took_out_of_the_line_and_has_not_settled() -> None:
    """Place 30 of a line 10 places of which are gone by (pulled and settled, by any
    replica): 19 before it not started, wherever they are -- still parked, or held in some
    replica's memory -- plus the 3 this replica holds that never were in the line."""
    alone = drain([], egress=10.0, own=10.0, direct=3, gone_by=10)
    assert alone.start(30) == pytest.approx((3 + 19) / 10)
    assert alone.start(5) == pytest.approx(3 / 10)  # gone by already: only what is held
