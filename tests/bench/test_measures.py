"""The benchmark's arithmetic, by hand-checkable examples."""

from __future__ import annotations

import math

import pytest

from bench.measures import busiest_window, in_window, jain_index, percentile, shares
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
