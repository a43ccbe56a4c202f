"""``bss-relay bench``: the command line over ``bench.runner``.

Only argparse is imported at start, so ``bss-relay --help`` and ``serve`` stay light; the
benchmark's modules load when the verb runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
from pathlib import Path

from service.broker.connection import mask_url
from service.ops.arguments import positive_int

__all__ = ["register_cli"]

SCENARIO_NAMES = (
    "hot-key",
    "many-keys",
    "fair-share",
    "light-key",
    "overhead",
    "light-load",
    "parking",
    "memory",
    "replicas",
    "soak",
    "replicas-steady",
    "quota-pg",
    "api-mind",
    "priority",
    "store-calls",
)
# Run only when named: PostgreSQL (BSS_RELAY_BENCH_POSTGRES_URL) or minutes each.
ON_REQUEST = frozenset(
    {"replicas", "soak", "replicas-steady", "quota-pg", "api-mind", "priority", "store-calls"}
)
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
INTERRUPTED = 130

DESCRIPTION = """\
Drive the real service (bss-relay serve, a subprocess) over the real broker (a fresh vhost,
deleted afterwards) against the sandbox (bss-relay sandbox, a subprocess), and print one
Markdown table: every figure beside its baseline from the same run, the ratio, and the target.
Needs rabbitmqctl (vhost creation) on this machine."""

EPILOG = """\
scenarios:
  hot-key      one customer with a saturated backlog: requests/s vs its limit, 429s
  many-keys    50 customers with backlogs: requests/s through the shared egress bucket
  fair-share   4 customers on one bucket, one with a much larger burst: their shares
  light-key    a customer's command latency while another's 5,000 commands drain
  overhead     commands/s with limits lifted, service vs a minimal relay loop
  light-load   publish -> event latency at 5 commands/s, service vs the minimal loop
  parking      one process, 8 customers at 5/s: the 3 hot ones' rate once 5 light finish
  memory       peak RSS after 100,000 distinct customers (--keys)
  parking and the scenarios below also score the deferred events' expected_start_at
  against each command's actual start (share within max(20 %, 2 s), median, worst).
  Only when named (PostgreSQL at BSS_RELAY_BENCH_POSTGRES_URL, default
  postgresql://postgres@127.0.0.1:5432/test, a fresh schema per setup):
  replicas     3 serve processes on 2 source addresses, 3 hot + 5 light customers at a
               strict 5/s, one replica SIGKILLed 8 s in: quota used over the whole run,
               tail included; 1-s maxima per (API, ParentUid) and (API, source); 429s
  replicas-steady  1, 2 and 4 replicas (own addresses) and 2 sharing one egress: a 20 s
               steady window, shares, store round trips per call, failover after SIGKILL
  quota-pg     one hot customer alone on PostgreSQL, 1 and 2 replicas: requests/s vs 10/s
  api-mind     one customer at 10/s; the sandbox cuts the limit to 5/s at 15 s and raises
               it at 40 s, unannounced: 429s, rate after, recovery (SQLite, one serve)
  priority     5,000 normal commands saturate the egress; 100 high ones arrive one every
               0.4 s: their wait for a request, and the egress rate before and during
  store-calls  PostgreSQL transactions per granted API call (pg_stat_database of a database
               of its own), presence published every second vs once at start
  soak         50,000 mixed commands (auto-renew, renewals, price inquiries, coupons) over 50
               customers at a steady 150/s, limits lifted, on SQLite then on PostgreSQL (a
               fresh schema): the service's RSS after warm-up (20 % of the commands) vs at
               the end, and its slope per 10,000 commands (only when named; about 12 minutes)

The full run takes several minutes (memory alone a few); --quick is a smoke run with small
sizes. Progress goes to stderr, the table to stdout (--json: the raw figures instead).
exit status: 0 every scenario completed (targets met or not: read the table); 1 some scenario
could not complete; 130 interrupted (everything started was stopped)."""


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` verb to ``bss-relay``."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the service against the sandbox (one table, baselines side by side)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIO_NAMES,
        metavar="NAME",
        help="run only this scenario (repeatable; default: all, in the order listed below)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--keys", type=positive_int, metavar="N", help="distinct customers for memory (100000)"
    )
    parser.add_argument("--output", type=Path, metavar="FILE", help="also write the table here")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep the data sets, stores and process logs here (default: a temporary directory)",
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="CHECKOUT",
        help="overhead: also run CHECKOUT's own service (CHECKOUT/.venv/bin/bss-relay serve) in "
        "the same rounds, same commands and sandbox, e.g. a git worktree of an older commit",
    )
    parser.add_argument(
        "--amqp-url",
        default=DEFAULT_AMQP,
        help=f"broker and user (a fresh vhost is created on it; default {DEFAULT_AMQP})",
    )
    parser.set_defaults(func=_command)


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run, as it would be typed."""
    words = ["bss-relay", "bench"]
    for name in args.scenario or ():
        words += ["--scenario", name]
    if args.quick:
        words.append("--quick")
    if args.keys is not None:
        words += ["--keys", str(args.keys)]
    if args.compare_with is not None:
        words += ["--compare-with", str(args.compare_with)]
    if args.amqp_url != DEFAULT_AMQP:
        words += ["--amqp-url", mask_url(args.amqp_url)]  # printed in reports: no password
    return shlex.join(words)


def _command(args: argparse.Namespace) -> int:
    # Imported here, not at the top: registering the verb must not load the benchmark.
    from bench.processes import other_checkout  # noqa: PLC0415
    from bench.runner import Options, run_bench  # noqa: PLC0415
    from bench.stage import QUICK, Sizes  # noqa: PLC0415
    from service.lifecycle import run_until_signalled  # noqa: PLC0415

    chosen = args.scenario or [name for name in SCENARIO_NAMES if name not in ON_REQUEST]
    if args.compare_with is not None:
        try:
            other_checkout(args.compare_with)
        except ValueError as exc:
            print(f"bss-relay bench: --compare-with: {exc}", file=sys.stderr)
            return 2
    options = Options(
        scenarios=[name for name in SCENARIO_NAMES if name in chosen],
        sizes=(QUICK if args.quick else Sizes()).with_keys(args.keys),
        amqp_url=args.amqp_url,
        command=command_line(args),
        workdir=args.workdir,
        compare_with=None if args.compare_with is None else args.compare_with.resolve(),
    )

    async def body(stop: asyncio.Event) -> int:
        bench = asyncio.create_task(run_bench(options))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({bench, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not bench.done():
            bench.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bench
            print("bss-relay bench: interrupted; stopped what it started", file=sys.stderr)
            return INTERRUPTED
        report = bench.result()
        print(report.json() if args.json else report.markdown(), end="")
        if args.output is not None:
            args.output.write_text(report.markdown(), encoding="utf-8")
        return 1 if report.failed else 0

    return run_until_signalled(body)
