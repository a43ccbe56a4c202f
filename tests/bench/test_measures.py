"""The benchmark's arithmetic, by hand-checkable examples."""

from __future__ import annotations

import math

import pytest

from bench.driver import Batch
from bench.measures import (
    busiest_window,
    estimate_errors,
    in_window,
    jain_index,
    match_starts,
    per_second,
    percentile,
    recovery_after,
    shares,
    worst_window_ratio,
)
from bench.report import Figure, Report, Row, difference_ms, ratio


def test_busiest_window_counts_a_half_open_second() -> None:
    # 0.0, 0.5, 0.99 fit in [0, 1); 1.0 starts the next window: [0.5, 1.5) holds 3 too.
    assert busiest_window([0.0, 0.5, 0.99, 1.0, 1.2]) == 4  # [0.5, 1.5): 0.5, 0.99, 1.0, 1.2
    assert busiest_window([0.0, 1.0, 2.0]) == 1
    assert busiest_window([]) == 0
    assert busiest_window([3.0, 0.0, 0.1]) == 2  # order does not matter


def test_evenly_spaced_at_the_limit_never_exceeds_it() -> None:
    interval = 1.03 / 10  # the limiter's spacing for 10/s with a 30 ms guard
    assert busiest_window([n * interval for n in range(200)]) == 10


def test_in_window_is_half_open_and_sorted() -> None:
    assert in_window([2.0, 1.0, 3.0, 1.5], 1.0, 3.0) == [1.0, 1.5, 2.0]


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 100) == 2.0
    assert math.isnan(percentile([], 50))
    assert percentile([1.0, math.inf], 100) == math.inf  # a probe that never came back


def test_shares_count_only_the_contenders() -> None:
    split = shares(["a", "b", "a", "x", "a", "b"], ["a", "b"])
    assert split == {"a": pytest.approx(0.6), "b": pytest.approx(0.4)}
    assert shares([], ["a"]) == {"a": 0.0}


def test_jain_index_bounds() -> None:
    assert jain_index([0.25, 0.25, 0.25, 0.25]) == pytest.approx(1.0)
    assert jain_index({"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}) == pytest.approx(0.25)


def test_report_renders_rows_and_verdicts() -> None:
    report = Report("bss-relay bench --quick", {"CPU": "2 x test"})
    report.extend(
        [
            Row(
                "s", "a | b", Figure(9.712, "req/s", 2), Figure(10, "req/s"), "0.97", "≥ 0.95", True
            ),
            Row("s", "c", Figure(math.inf, "ms"), Figure(5, "ms"), "n/a", "≤ +1 s", False),
            Row("s", "d", Figure(math.nan), Figure(1), "n/a", "(context)", None),
        ]
    )
    text = report.markdown()
    assert "Command: `bss-relay bench --quick`" in text
    assert "| s | a \\| b | 9.71 req/s | 10 req/s | 0.97 | ≥ 0.95 — met |" in text
    assert "| timed out | 5 ms | n/a | ≤ +1 s — MISSED |" in text
    assert "| n/a | 1 | n/a | (context) |" in text


def test_ratio_and_difference_texts() -> None:
    assert ratio(9.5, 10) == "0.95"
    assert ratio(1, 0) == "n/a"
    assert difference_ms(0.2, 0.05) == "+150 ms"
    assert difference_ms(0.0042, 0.0050, digits=1) == "-0.8 ms"


def test_worst_window_ratio_holds_each_window_to_the_limit_of_its_moment() -> None:
    times = [0.0, 0.2, 0.4, 0.6, 0.8, 5.0, 5.1, 5.2, 5.3]

    def limit_at(at: float) -> float:
        return 3.0 if at >= 4.0 else 10.0

    assert worst_window_ratio(times, limit_at) == 4 / 3  # four within a second under 3/s
    assert worst_window_ratio(times[:5], limit_at) == 0.5
    assert worst_window_ratio([], limit_at) == 0.0


def test_recovery_after_is_the_first_request_from_which_the_rate_holds() -> None:
    slow = [10.0 + n * 0.5 for n in range(10)]  # 2/s from 10 s to 14.5 s
    fast = [15.0 + n * 0.1 for n in range(60)]  # 10/s from 15 s
    # [14.5, 19.5) holds the last slow one and 45 fast ones: 46 >= 9 x 5
    assert recovery_after(slow + fast, 10.0, rate=9.0) == pytest.approx(4.5)
    assert recovery_after(slow, 10.0, rate=9.0) == math.inf
    assert recovery_after(fast, 15.0, rate=9.0, span=5.0) == 0.0


def test_match_starts_takes_the_latest_free_request_of_the_key_before_the_finish() -> None:
    requests = [("a", 1.0), ("a", 2.0), ("b", 1.5), ("a", 3.0)]
    finishes = [("c2", "a", 2.01), ("c1", "a", 1.01), ("c3", "a", 3.02), ("d", "b", 1.6)]
    assert match_starts(requests, finishes) == {"c1": 1.0, "c2": 2.0, "c3": 3.0, "d": 1.5}
    assert match_starts([("a", 5.0)], [("x", "a", 4.0)]) == {}  # no request before it ended


def test_estimate_errors_allow_twenty_percent_of_the_wait_or_two_seconds() -> None:
    deferred = {"near": (0.0, 9.0), "long": (0.0, 80.0), "off": (0.0, 20.0), "lost": (0, 1)}
    started = {"near": 10.5, "long": 100.0, "off": 30.0}
    errors = dict(zip(["near", "long", "off"], estimate_errors(deferred, started), strict=True))
    assert errors["near"] == (1.5, True)  # 1.5 s late, within 2 s
    assert errors["long"] == (20.0, True)  # 20 s late on a 100 s wait: 20 %
    assert errors["off"] == (10.0, False)  # 10 s late on a 30 s wait: a third
    assert len(errors) == 3  # a command that never started is not scored


def test_per_second_counts_whole_seconds_from_the_first() -> None:
    assert per_second([10.0, 10.5, 11.2, 13.9]) == [2, 1, 0, 1]
    assert per_second([]) == []


def test_a_batch_waits_for_terminal_events_not_deferred_ones() -> None:
    batch = Batch(frozenset({"a"}))
    batch.record("a", "deferred", 1.0)
    assert not batch.done.is_set()
    batch.record("a", "succeeded", 2.0)
    assert batch.done.is_set()
    assert batch.arrived == {"a": 2.0}
    assert batch.failed() == 0
