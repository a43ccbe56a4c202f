"""What goes before a parked command (``service.messages.announcer.Places``): this replica's own
parks in the order it made them; another replica's wholly when parked well before, and spread
evenly through a burst both parked at the same instant (their order in the line is not
knowable from either clock)."""

from __future__ import annotations

import pytest

from service.messages.announcer import GAP_S, Places


def test_own_places_count_in_the_order_they_were_parked() -> None:
    places = Places([(10.0, True), (10.001, True), (10.002, True)])
    assert [places.ahead(at) for at in (10.0, 10.001, 10.002)] == [0, 1, 2]


def test_another_replicas_earlier_burst_goes_wholly_before() -> None:
    theirs = [(9.0 + i * 0.001, False) for i in range(30)]
    mine = [(10.0 + i * 0.001, True) for i in range(10)]
    places = Places(theirs + mine)
    assert places.ahead(10.0) == 30
    assert places.ahead(10.009) == 39


def test_a_burst_two_replicas_parked_at_once_is_taken_as_interleaved() -> None:
    """40 of theirs and 20 of ours within a few milliseconds: our k-th (from 0) has about
    2k + 1 of theirs before it, whatever the stamps say within the run."""
    theirs = [(10.0 + i * 0.0002, False) for i in range(40)]
    mine = [(10.004 + i * 0.0002, True) for i in range(20)]  # stamped after all of theirs
    places = Places(theirs + mine)
    firsts = places.ahead(mine[0][0])
    lasts = places.ahead(mine[-1][0])
    assert firsts == pytest.approx(1.0)  # 0 of ours + 40 * 0.5 / 20
    assert lasts == pytest.approx(19 + 40 * 19.5 / 20)
    assert GAP_S < 0.1  # a run is a burst, not a backlog fed over seconds


def test_a_call_parked_after_every_place_known_has_them_all_before_it() -> None:
    assert Places([(1.0, False), (2.0, True)]).ahead(5.0) == 2
