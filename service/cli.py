"""``bss-relay``: the command line. Each verb has its own ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

__all__ = ["main"]

DESCRIPTION = """\
bss-relay carries out commands from RabbitMQ (exchange bss.commands) against the Huawei Cloud
BSS partner API within its rate limits, and publishes one result event per command (exchange
bss.events). Configuration comes from the environment; see README.md."""


# Per command the service allocates many short-lived objects (futures, dicts, models),
# nearly all freed by reference counting. With the default gen-0 threshold (700 net
# allocations) a burst of commands in flight starts a collection every few commands: about 8%
# of the CPU in `bss-relay bench --scenario overhead`. Raised, and with everything alive at
# start-up (modules, settings, connections) frozen out of every later collection.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Call once, after start-up, in a long-running process of ours."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_until_signalled(
    body: Callable[[asyncio.Event], Coroutine[Any, Any, int | None]],
) -> int:
    """Run ``body(stop)``; SIGTERM and SIGINT set ``stop`` so the body drains and returns."""

    async def runner() -> int | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await body(stop)

    return asyncio.run(runner()) or 0


def _serve(args: argparse.Namespace) -> int:
    from service.logging import configure_logging
    from service.runtime import ConfigurationError, run
    from service.settings import Settings

    try:
        settings = Settings(_env_file=args.env_file)
    except ValidationError as exc:
        print(f"bss-relay: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.relay_log_level)

    async def body(stop: asyncio.Event) -> None:
        ready = asyncio.Event()

        async def once_started() -> None:
            await ready.wait()
            tune_gc()

        started = asyncio.create_task(once_started())
        try:
            await run(settings, stop=stop, ready=ready)
        finally:
            started.cancel()

    try:
        return run_until_signalled(body)
    except ConfigurationError as exc:
        print(f"bss-relay: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_until_signalled(
        lambda stop: run_demo(stop, amqp_url=args.amqp_url, timeout_s=args.timeout)
    )


def _asyncapi(args: argparse.Namespace) -> int:
    from service.asyncapi import render_yaml

    print(render_yaml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from service.sandbox.server import register_cli

    parser = argparse.ArgumentParser(prog="bss-relay", description=DESCRIPTION)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = verbs.add_parser(
        "serve",
        help="run the service",
        description="Consume commands, call the BSS API, publish events. Stops cleanly on "
        "SIGTERM/SIGINT: intake stops, commands in progress drain within "
        "RELAY_SHUTDOWN_GRACE_S, the rest is redelivered later.",
    )
    serve.add_argument("--env-file", default=None, help="read settings from this file too")
    serve.set_defaults(func=_serve)

    register_cli(verbs)

    demo = verbs.add_parser(
        "demo",
        help="sandbox + service + one command of each type, events printed",
        description="Start the sandbox and the service in this process against the local "
        "broker, publish one command of each type (and one malformed), print each event as it "
        "arrives, exit 0 when all have arrived.",
    )
    demo.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for events")
    demo.set_defaults(func=_demo)

    asyncapi = verbs.add_parser(
        "asyncapi",
        help="print the AsyncAPI document",
        description="Print the AsyncAPI 3.0 "
        "document generated from the message schemas (docs/asyncapi.yaml).",
    )
    asyncapi.set_defaults(func=_asyncapi)
    _register_optional(verbs)
    return parser


def _register_optional(verbs: Any) -> None:
    """Verbs that live in their own modules."""
    from service.bench import register_cli as register_bench
    from service.replay import register_cli as register_replay

    register_replay(verbs)
    register_bench(verbs)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
