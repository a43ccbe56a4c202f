"""Fixed names of ``../shared/CONTRACT.md`` that several suites check, stated once here from
the contract's text (never imported from the code under test, which they check)."""

from __future__ import annotations

# §9: the fields of a `quota show` row, in the order of its table's columns
QUOTA_SHOW_FIELDS = (
    "api",
    "kind",
    "key",
    "limit",
    "rate",
    "waiting",
    "oldest_wait_s",
    "throttled_5m",
    "paused",
)
