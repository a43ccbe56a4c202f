"""How good the ``deferred`` events' ``expected_start_at`` was (issue 18 item 6): each deferred
command's estimate against its actual start, the time its accepted request reached the sandbox.

The sandbox's log does not name the command a request carried: a command's start is the
accepted request of its customer and resource path that its terminal event followed
(``measures.match_starts``), a few milliseconds before the event's ``occurred_at``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bench.dataset import BenchCustomer
from bench.measures import estimate_errors, match_starts, percentile
from bench.report import Figure, Row, ratio
from bench.stage import Stage

__all__ = ["ESTIMATE_TARGET", "estimate_rows", "starts", "where"]

ESTIMATE_TARGET = 0.9


def where(label: str, customer: BenchCustomer, count: int) -> dict[str, tuple[str, str]]:
    """command_id -> (customer_id, resource_id) of ``quota._backlog(label, customer, count)``."""
    return {
        f"{label}-{customer.customer_id[-6:]}-{n}": (
            customer.customer_id,
            customer.resource_ids[n % len(customer.resource_ids)],
        )
        for n in range(count)
    }


def _wall(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def _key(row: dict[str, Any]) -> str:
    return f"{row['parent_uid']}{row['path']}"


def starts(
    stage: Stage, rows: Sequence[dict[str, Any]], commands: dict[str, tuple[str, str]]
) -> dict[str, float]:
    """command_id -> the time its accepted request reached the sandbox; ``commands`` maps
    command_id -> (customer_id, resource_id)."""
    accepted = [(_key(r), r["at"]) for r in rows if 200 <= (r["status"] or 0) < 300]
    paths: dict[tuple[str, str], str] = {}
    for r in rows:
        paths.setdefault((r["parent_uid"], r["path"].rsplit("/", 1)[-1]), r["path"])
    finishes = []
    for e in stage.driver.events:
        cid = e["command_id"]
        if cid in commands and e["outcome"] not in ("deferred",):
            customer, resource = commands[cid]
            path = paths.get((customer, resource))
            occurred = _wall(e["occurred_at"])
            if path is not None and occurred is not None:
                finishes.append((cid, f"{customer}{path}", occurred))
    return match_starts(accepted, finishes)


def estimate_rows(
    stage: Stage, label: str, rows: Sequence[dict[str, Any]], commands: dict[str, tuple[str, str]]
) -> list[Row]:
    """The ``deferred`` estimate against the actual start, for this run's commands."""
    deferred: dict[str, tuple[float, float]] = {}
    for e in stage.driver.events:
        if e["command_id"] in commands and e["outcome"] == "deferred":
            said, expected = _wall(e["occurred_at"]), _wall(e["expected_start_at"])
            if said is not None and expected is not None:
                deferred.setdefault(e["command_id"], (said, expected))
    errors = estimate_errors(deferred, starts(stage, rows, commands))
    within = sum(1 for _, ok in errors if ok)
    fraction = within / len(errors) if errors else math.nan
    magnitudes = [abs(err) for err, _ in errors]
    signed = [err for err, _ in errors]
    detail = {
        "deferred": len(deferred),
        "matched": len(errors),
        "within": within,
        "median_abs_error_s": round(percentile(magnitudes, 50), 2),
        "p90_abs_error_s": round(percentile(magnitudes, 90), 2),
        "worst_late_s": round(max(signed), 2) if signed else None,
        "worst_early_s": round(-min(signed), 2) if signed else None,
    }
    return [
        Row(
            label,
            f"deferred estimate within max(20 %, 2 s) of the start ({within} of {len(errors)})",
            Figure(fraction, "", 2),
            Figure(ESTIMATE_TARGET, "", 2),
            ratio(fraction, ESTIMATE_TARGET),
            f"≥ {ESTIMATE_TARGET}",
            None if math.isnan(fraction) else fraction >= ESTIMATE_TARGET,
            detail,
        ),
        Row(
            label,
            "deferred estimate error |actual - expected|: median (p90, worst late / early)",
            Figure(percentile(magnitudes, 50), "s", 1),
            Figure(math.nan, ""),
            "—",
            f"p90 {detail['p90_abs_error_s']} s, late {detail['worst_late_s']} s, "
            f"early {detail['worst_early_s']} s",
            None,
            detail,
        ),
    ]
