"""``bss-relay quota``, ``pause``, ``resume`` and ``why``: steering the quota while it runs and
asking where a command is (CONTRACT §9), for the whole deployment named by ``STORE_URL``.

Each verb opens the store, does one thing through ``service.ops.deployment`` (the interface the
console shares) and exits. Changes are rows every replica polls about once a second, so they
are obeyed within 2 s; each is audited with its actor (``--as NAME``, else the OS user).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError

from service.api.operations import OPERATIONS
from service.ops.deployment import DeploymentError, QuotaRow, StoreDeployment
from service.pacing.limits import Limits, configured_limits
from service.settings import Settings
from service.store import open_store
from service.store.types import CommandStore

__all__ = ["deployment_over", "open_deployment", "register_cli"]

EXIT_OK, EXIT_USAGE = 0, 2
QUOTA_COLUMNS = (
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


def deployment_over(store: CommandStore, settings: Settings) -> StoreDeployment:
    """The deployment whose store ``store`` is (open, owned by the caller), as operators see
    it: what ``open_deployment`` yields, for a caller that also uses the store itself (the
    console, ``bss-relay replay``)."""
    defaults = {name: op.limit_per_second for name, op in OPERATIONS.items()}
    limits = Limits(configured_limits(defaults, settings.relay_rate_limits))
    return StoreDeployment(store, limits=limits, operations=OPERATIONS)


@asynccontextmanager
async def open_deployment(settings: Settings) -> AsyncIterator[StoreDeployment]:
    """The deployment ``settings`` name (its store), as operators see it."""
    async with open_store(settings.store_url) as store:
        yield deployment_over(store, settings)


def _common(parser: argparse.ArgumentParser, *, acts: bool) -> None:
    parser.add_argument("--env-file", default=None, help="read settings from this file too")
    if acts:
        parser.add_argument(
            "--as",
            dest="actor",
            metavar="NAME",
            help="who does this, for the audit (default: the OS user)",
        )


def register_cli(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``quota``, ``pause``, ``resume`` and ``why`` to ``bss-relay``."""
    quota = verbs.add_parser(
        "quota",
        help="see and set the API quota of the whole deployment",
        description="Show the rate-limit buckets of every replica that shares STORE_URL, or "
        "change an operation's limit while the service runs. Every replica obeys a change "
        "within 2 s; it survives restarts and is audited (bss-relay audit).",
    )
    actions = quota.add_subparsers(dest="quota_verb", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="one row per bucket with waiting commands, used lately, or paused",
        description="One row per bucket that has waiting commands, was used in the last 5 "
        "minutes, or is paused: api, kind (customer|egress), key, limit (in force), rate "
        "(pacing uses now, after any slow-down for 429s), waiting (deployment-wide, paused "
        "and parked included), oldest_wait_s, throttled_5m, paused.",
    )
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    _common(show, acts=False)
    show.set_defaults(func=_quota_show)
    for name, what in (("set", "set a limit"), ("reset", "return to the configured limit")):
        verb = actions.add_parser(
            name,
            help=f"{what} for one operation (every key, one customer, or one egress)",
            description=f"{what.capitalize()} of API (an operation name, as in the sandbox's "
            "request log) in requests/s: for one customer (--customer PARENT_UID), one egress "
            "(--egress NAME), or every key of the operation (neither).",
        )
        verb.add_argument("api", metavar="API")
        if name == "set":
            verb.add_argument("rate", type=float, metavar="RATE", help="requests/s")
        which = verb.add_mutually_exclusive_group()
        which.add_argument("--customer", metavar="PARENT_UID")
        which.add_argument("--egress", metavar="NAME")
        _common(verb, acts=True)
        verb.set_defaults(func=_quota_change)
    for name, what in (("pause", "stop sending"), ("resume", "start sending again")):
        verb = verbs.add_parser(
            name,
            help=f"{what} one customer's calls, on every replica, within 2 s",
            description=f"{what.capitalize()} the calls of one customer (all operations, or "
            "--api API) on every replica within 2 s. Paused commands wait parked on the broker "
            "-- never failed -- and one whose deadline passes meanwhile ends rejected with "
            "RELAY.DEADLINE_PASSED. Survives restarts; audited.",
        )
        verb.add_argument("--customer", required=True, metavar="PARENT_UID")
        verb.add_argument("--api", metavar="API", help="only this operation")
        _common(verb, acts=True)
        verb.set_defaults(func=_pause_or_resume)
    why = verbs.add_parser(
        "why",
        help="where one command is now",
        description="Where one command is, deployment-wide: finished (outcome, event_id), "
        "running (replica), waiting (the bucket, position, expected start), paused, delayed "
        "(retry_at), dead_lettered (reason), or not_seen (never received by any replica: not "
        "published, or still in the work queue).",
    )
    why.add_argument("command_id", metavar="COMMAND_ID")
    why.add_argument("--json", action="store_true", help="the answer as one JSON object")
    _common(why, acts=False)
    why.set_defaults(func=_why)


def _run(args: argparse.Namespace, body: Callable[[StoreDeployment], Awaitable[int]]) -> int:
    verb = args.verb
    try:
        settings = Settings(_env_file=args.env_file)
    except ValidationError as exc:
        print(f"bss-relay {verb}: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        async with open_deployment(settings) as deployment:
            return await body(deployment)

    try:
        return asyncio.run(main())
    except DeploymentError as exc:
        print(f"bss-relay {verb}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, RuntimeError) as exc:  # the URL may hold a password: not shown
        print(f"bss-relay {verb}: cannot use the store: {type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or getpass.getuser())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_quota(rows: list[QuotaRow]) -> str:
    table = [QUOTA_COLUMNS, *(tuple(_cell(v) for v in row.as_json().values()) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(QUOTA_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _quota_show(args: argparse.Namespace) -> int:
    async def body(deployment: StoreDeployment) -> int:
        rows = await deployment.quota()
        if args.json:
            for row in rows:
                print(json.dumps(row.as_json()))
        else:
            print(render_quota(rows))
        return EXIT_OK

    return _run(args, body)


def _quota_change(args: argparse.Namespace) -> int:
    rate = getattr(args, "rate", None)

    async def body(deployment: StoreDeployment) -> int:
        await deployment.set_limit(
            args.api, rate, customer=args.customer, egress=args.egress, actor=_actor(args)
        )
        which = (
            f"customer {args.customer}"
            if args.customer
            else f"egress {args.egress}"
            if args.egress
            else "every key"
        )
        done = f"{rate:g} requests/s" if rate is not None else "the configured limit"
        print(f"{args.api}, {which}: {done} (every replica within 2 s)")
        return EXIT_OK

    return _run(args, body)


def _pause_or_resume(args: argparse.Namespace) -> int:
    async def body(deployment: StoreDeployment) -> int:
        change = deployment.pause if args.verb == "pause" else deployment.resume
        await change(args.customer, api=args.api, actor=_actor(args))
        what = args.api or "every operation"
        print(f"customer {args.customer}, {what}: {args.verb}d (every replica within 2 s)")
        return EXIT_OK

    return _run(args, body)


def describe(where: dict[str, Any]) -> str:
    """``why``'s answer for people."""
    state = where["state"]
    head = f"{where['command_id']}: {state}"
    details = {
        "finished": ("outcome", "event_id", "finished_at"),
        "running": ("replica",),
        "waiting": ("api", "kind", "key", "priority", "position", "expected_start_at"),
        "paused": ("api", "customer", "since"),
        "delayed": ("retry_at",),
        "dead_lettered": ("reason", "message", "dead_lettered_at"),
    }.get(state, ())
    parts = [f"{name}={where[name]}" for name in details if where.get(name) is not None]
    return head + (f"  ({', '.join(parts)})" if parts else "")


def _why(args: argparse.Namespace) -> int:
    async def body(deployment: StoreDeployment) -> int:
        where = await deployment.why(args.command_id)
        print(json.dumps(where) if args.json else describe(where))
        return EXIT_OK

    return _run(args, body)
