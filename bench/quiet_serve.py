"""``bss-relay serve`` with presence publishing once at start and then not again (its interval
set to a day): the ``store-calls`` scenario's "presence off". The service has no setting for
it; this wrapper is the benchmark's alone."""

from __future__ import annotations

import sys

from service.ops import presence


def main() -> int:
    presence.PUBLISH_S = 86_400.0
    from service.cli import main as relay  # noqa: PLC0415 (after the interval is set)

    return relay(["serve"])


if __name__ == "__main__":
    sys.exit(main())
