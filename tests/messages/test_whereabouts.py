"""Where a replica last put a command (``service.messages.whereabouts``): when a parked one is
known to be out of its line, with other replicas parking into the same line."""

from __future__ import annotations

import time

from service.messages.whereabouts import PLACE_SETTLED_S, Noted, Whereabouts

LINE = ("auto_renewal_resources", "cust-1", 2)


def parked(command_id: str, place: int, *, others: int = 0, age: float = 10.0) -> Noted:
    now = time.time()
    return Noted(
        command_id, "waiting", LINE[0], "customer", LINE[1], 2, now, None, LINE, place,
        noted_at=now - age, others=others,
    )  # fmt: skip


def test_a_line_pulled_past_a_commands_place_takes_it_out() -> None:
    alone = Whereabouts()
    for place in (1, 2, 3):
        alone.note(parked(f"c-{place}", place))
    alone.pulled(LINE, 2, others=0)
    assert [e.command_id for e in alone.entries()] == ["c-3"]


def test_places_another_replica_took_meanwhile_are_counted_before_taking_any_out() -> None:
    """Two replicas park three commands each into one line at once: each numbers its own
    1..3 (neither knows of the other's yet). Three pulled are three of six, not all six."""
    a, b = Whereabouts(), Whereabouts()
    for place in (1, 2, 3):
        a.note(parked(f"a-{place}", place))
        b.note(parked(f"b-{place}", place))
    for replica in (a, b):
        replica.pulled(LINE, 3, others=3)  # the store's counts: 6 parked, 3 pulled
    assert len(a) + len(b) == 6  # which three went is not known here: none taken out yet
    for replica in (a, b):
        replica.pulled(LINE, 6, others=3)
    assert len(a) + len(b) == 0


def test_a_place_is_not_counted_before_the_other_replicas_published_theirs() -> None:
    fresh = Whereabouts()
    fresh.note(parked("c-1", 1, age=0.0))  # others' parks of the last second are not known yet
    fresh.pulled(LINE, 1, others=0)
    assert len(fresh) == 1
    assert PLACE_SETTLED_S > 1.0  # more than a publication period
