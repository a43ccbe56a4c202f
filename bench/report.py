"""The benchmark's one table: every figure next to its baseline from the same run.

A ``Row`` holds numbers, not text, so ``--json`` gives the raw values and Markdown only decides
how many digits to show. ``met`` is None for figures without a target (shown for context).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Figure", "Report", "Row", "difference_ms", "ratio"]


@dataclass(frozen=True, slots=True)
class Figure:
    value: float
    unit: str = ""
    digits: int = 0

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        if math.isinf(self.value):
            return "timed out"
        number = f"{self.value:,.{self.digits}f}"
        return f"{number} {self.unit}".rstrip()


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    figure: str
    ours: Figure
    baseline: Figure
    ratio: str  # "0.97", "+412 ms", ...: how ours compares with the baseline
    target: str = ""
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def verdict(self) -> str:
        if self.met is None:
            return self.target
        return f"{self.target} — {'met' if self.met else 'MISSED'}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


@dataclass
class Report:
    command: str
    machine: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # scenarios that did not complete

    def extend(self, rows: Sequence[Row]) -> None:
        self.rows.extend(rows)

    def markdown(self) -> str:
        lines = [f"Command: `{self.command}`", ""]
        lines += [f"- {key}: {value}" for key, value in self.machine.items()]
        lines += [
            "",
            "| scenario | figure | ours | baseline | ratio | target |",
            "|---|---|--:|--:|--:|---|",
        ]
        for row in self.rows:
            cells = (
                row.scenario,
                row.figure,
                str(row.ours),
                str(row.baseline),
                row.ratio,
                row.verdict(),
            )
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def json(self) -> str:
        return json.dumps(
            {
                "command": self.command,
                "machine": self.machine,
                "rows": [asdict(row) for row in self.rows],
                "notes": self.notes,
                "failed": self.failed,
            },
            indent=2,
            default=str,
        )


def ratio(ours: float, baseline: float, digits: int = 2) -> str:
    if baseline == 0 or math.isnan(ours) or math.isnan(baseline):
        return "n/a"
    return f"{ours / baseline:.{digits}f}"


def difference_ms(ours_s: float, baseline_s: float, digits: int = 0) -> str:
    """``ours - baseline`` in milliseconds, signed."""
    if math.isnan(ours_s) or math.isnan(baseline_s):
        return "n/a"
    return f"{(ours_s - baseline_s) * 1000:+,.{digits}f} ms"
