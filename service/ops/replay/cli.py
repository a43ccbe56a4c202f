"""``bss-relay replay``: the command line over ``service.ops.replay.scanner``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import json
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime

from aio_pika.exceptions import AMQPError

from service.broker.connection import connect_once
from service.broker.topology import COMMANDS_EXCHANGE, DLQ
from service.ops.arguments import positive_int, rfc3339
from service.ops.deployment import Deployment
from service.ops.replay.audited import finished_in, record_replays
from service.ops.replay.letter import INVALID_TYPE, TYPES, DeadLetter, Filter
from service.ops.replay.scanner import Progress, Report, Result, replay, scan
from service.ops.steering import deployment_over
from service.settings import Settings
from service.store import open_store
from service.store.types import CommandStore

__all__ = ["register_cli"]

DESCRIPTION = """\
List the dead letters in bss.commands.dlq, check them against today's schemas, or move them
back to bss.commands. Each dead letter carries why it died (x-relay-* headers: reason code and
message, attempts, first and last failure time, original routing key)."""

EPILOG = """\
examples:
  bss-relay replay                                    list every dead letter
  bss-relay replay --reason RELAY.SCHEMA --json       schema rejections, one JSON object a line
  bss-relay replay --replay --dry-run --type renew    would today's schemas accept them?
  bss-relay replay --replay --partner p-1 --since 2026-01-15T00:00:00Z --limit 100
  bss-relay replay --replay --command-id cmd-42       move one command back to work
  bss-relay replay --replay --reason CBC.0999 --as alice

Filters combine with AND; a filter given twice matches either value. Listing and dry runs
change nothing: dead letters are held while scanned and requeued at the end. A replay publishes
each copy to bss.commands (original routing key, else command.<type>) with publisher confirms
and only then removes the dead letter, so a crash leaves at most a duplicate, which the
service's idempotency check (by command_id) absorbs.

A finished command is only re-announced: dry runs and replays look each command_id up in the
command store (STORE_URL, as for serve), and one whose terminal event is stored is reported
"would reannounce" / "reannounced" (the service answers its copy with the stored event and
never carries it out again). Every dead letter moved back is recorded in the audit
(bss-relay audit, the console) as a replay by --as NAME, else the OS user.

exit status: 0 done; 1 some dead letter would be rejected again (dry run) or could not be
replayed; 2 bad arguments or configuration, or the broker or queue could not be used."""

LIST, REPLAY, DRY_RUN = "list", "replay", "dry-run"
LIST_COLUMNS = (
    "command_id",
    "type",
    "partner",
    "customer",
    "reason",
    "attempts",
    "last_failure",
    "routing_key",
)


# The deployment over an open store (``service.ops.steering.deployment_over``); tests pass theirs.
DeploymentOf = Callable[[CommandStore, Settings], Deployment]


def register_cli(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    deployment: DeploymentOf = deployment_over,
) -> None:
    """Add the ``replay`` verb to ``bss-relay``; ``deployment`` records the replays."""
    parser = subparsers.add_parser(
        "replay",
        help="list, check and replay dead letters",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--amqp-url",
        metavar="URL",
        default=None,
        help="broker (default: $AMQP_URL, else the local broker)",
    )
    parser.add_argument(
        "--store-url",
        metavar="URL",
        default=None,
        help="command store, for dry runs and replays (default: $STORE_URL, as for serve)",
    )
    parser.add_argument("--env-file", default=None, help="read settings from this file too")
    parser.add_argument(
        "--as",
        dest="actor",
        metavar="NAME",
        default=None,
        help="who replays, for the audit (default: the OS user)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--list", dest="mode", action="store_const", const=LIST, help="list (the default)"
    )
    mode.add_argument(
        "--replay",
        dest="mode",
        action="store_const",
        const=REPLAY,
        help="move matching dead letters back to bss.commands",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="re-validate each match against today's schemas, print what a replay would do, "
        "change nothing (implies --replay)",
    )
    _add_filters(parser)
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="handle at most N matching dead letters"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    parser.set_defaults(func=functools.partial(_run, deployment=deployment), mode=None)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    choices = sorted(TYPES | {INVALID_TYPE})
    group = parser.add_argument_group("filters (repeat one to match any of its values)")
    group.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        choices=choices,
        metavar="TYPE",
        help=f"command type: {', '.join(choices)}",
    )
    group.add_argument("--partner", dest="partners", action="append", default=[], metavar="ID")
    group.add_argument("--customer", dest="customers", action="append", default=[], metavar="ID")
    group.add_argument(
        "--reason",
        dest="reasons",
        action="append",
        default=[],
        metavar="CODE",
        help="reason code, e.g. RELAY.SCHEMA or CBC.0999",
    )
    group.add_argument(
        "--command-id", dest="command_ids", action="append", default=[], metavar="ID"
    )
    group.add_argument(
        "--since", type=rfc3339, metavar="TIME", help="last failure at or after (RFC 3339)"
    )
    group.add_argument(
        "--until", type=rfc3339, metavar="TIME", help="last failure before (RFC 3339)"
    )


def _filter_from(args: argparse.Namespace) -> Filter:
    return Filter(
        types=frozenset(args.types),
        partners=frozenset(args.partners),
        customers=frozenset(args.customers),
        reasons=frozenset(args.reasons),
        command_ids=frozenset(args.command_ids),
        since=args.since,
        until=args.until,
    )


def _fail(message: str) -> int:
    print(f"bss-relay replay: {message}", file=sys.stderr)
    return 2


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return "-" if value is None or value == "" else str(value)


def _list_line(letter: DeadLetter) -> str:
    cells = (
        letter.command_id,
        letter.type,
        letter.partner_id,
        ",".join(letter.customer_ids),
        letter.reason,
        letter.attempts,
        letter.last_failure,
        letter.routing_key,
    )
    return "\t".join(_cell(c) for c in cells)


def _action_line(result: Result) -> str:
    said = f"{result.action}: {result.detail}" if result.detail else str(result.action)
    return f"{_cell(result.letter.command_id)}\t{result.letter.routing_key}\t{said}"


def _printer(args: argparse.Namespace, mode: str) -> Progress:
    """Print each result as it happens, so an interrupted run still shows what it did."""
    if args.json:
        return lambda r: print(json.dumps(r.as_json(), sort_keys=True), flush=True)
    if mode == LIST:
        print("\t".join(LIST_COLUMNS), flush=True)
        return lambda r: print(_list_line(r.letter), flush=True)
    return lambda r: print(_action_line(r), flush=True)


def _summary(report: Report) -> str:
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.action.value] = counts.get(result.action.value, 0) + 1
    done = "".join(f", {action} {n}" for action, n in counts.items())
    return f"bss-relay replay: scanned {report.scanned}, matched {len(report.results)}{done}"


class StoreUnusable(RuntimeError):
    """The command store could not be opened or read (the URL is never in the message)."""


async def _open_store(stack: AsyncExitStack, url: str) -> CommandStore:
    try:
        return await stack.enter_async_context(open_store(url))
    except (OSError, ValueError, RuntimeError) as exc:
        raise StoreUnusable(type(exc).__name__) from exc


async def _execute(
    args: argparse.Namespace, mode: str, settings: Settings, deployment: DeploymentOf
) -> Report:
    async with AsyncExitStack() as stack:
        # A plain connection, not a robust one: after a reconnect the held delivery tags would
        # belong to a dead channel; better to stop and let the broker requeue everything.
        connection = await connect_once(args.amqp_url or settings.amqp_url)
        stack.push_async_callback(connection.close)
        where, progress = _filter_from(args), _printer(args, mode)
        if mode == LIST:
            return await scan(connection, where, limit=args.limit, progress=progress)
        store = await _open_store(stack, args.store_url or settings.store_url)
        # Made before anything moves: a deployment that cannot record stops the run first.
        steered = deployment(store, settings) if mode == REPLAY else None
        report = await replay(
            connection,
            where,
            max_body_bytes=settings.relay_max_body_bytes,
            dry_run=mode == DRY_RUN,
            limit=args.limit,
            progress=progress,
            finished=finished_in(store),
        )
        if steered is not None:
            actor = args.actor or getpass.getuser()
            await record_replays(steered, report.results, actor=actor, via="cli")
        return report


def _mode(args: argparse.Namespace) -> str:
    """LIST unless --replay; --dry-run alone means a dry-run replay, with --list it is an error."""
    if args.dry_run and args.mode == LIST:
        raise ValueError("--dry-run goes with --replay, not --list")
    if args.since and args.until and args.since >= args.until:
        raise ValueError("--since must be before --until")
    return DRY_RUN if args.dry_run else (args.mode or LIST)


def _run(args: argparse.Namespace, *, deployment: DeploymentOf) -> int:
    try:
        mode = _mode(args)
        settings = Settings(_env_file=args.env_file)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return _fail(str(exc))
    try:
        report = asyncio.run(_execute(args, mode, settings, deployment))
    except StoreUnusable as exc:
        return _fail(f"could not use the command store: {exc}")
    except (AMQPError, OSError) as exc:  # the URL is not printed: it may hold a password
        return _fail(f"could not use the broker, {DLQ} or {COMMANDS_EXCHANGE}: {exc!r}")
    print(_summary(report), file=sys.stderr)
    return 1 if report.needs_attention else 0
