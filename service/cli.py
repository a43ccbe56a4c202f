"""``bss-relay``: the command line. Each verb has its own ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.lifecycle import give_back_free_memory, run_until_signalled, tune_gc, tune_malloc

__all__ = ["main"]

DESCRIPTION = """\
bss-relay carries out commands from RabbitMQ (exchange bss.commands) against the Huawei Cloud
BSS partner API within its rate limits, and publishes one result event per command (exchange
bss.events). Configuration comes from the environment; see README.md."""


def _serve(args: argparse.Namespace) -> int:
    from service.broker.topology import TopologyMismatch
    from service.guardrails.policy import PolicyError, PolicyHolder
    from service.runtime import ConfigurationError, start
    from service.settings import Settings
    from service.telemetry.logging import configure_logging

    try:
        settings = Settings(_env_file=args.env_file)
    except ValidationError as exc:
        print(f"bss-relay: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    operations = settings.operations
    configure_logging(operations.log_level)
    try:  # validated before anything starts; SIGHUP re-reads it (an invalid file keeps this)
        policy = PolicyHolder.load(settings.relay_policy_file)
    except PolicyError as exc:
        print(f"bss-relay: invalid policy file: {exc}", file=sys.stderr)
        return 2
    from service.telemetry.tracing import configure_tracing

    try:  # the OTEL_* variables: a no-op when they ask for nothing
        tracer_provider = configure_tracing(operations.tracing)
    except ValueError as exc:
        print(f"bss-relay: invalid OpenTelemetry configuration: {exc}", file=sys.stderr)
        return 2

    tune_malloc()

    async def body(stop: asyncio.Event) -> None:
        async with start(settings, policy=policy):
            tune_gc()
            trimming = asyncio.create_task(give_back_free_memory())
            try:
                await stop.wait()
            finally:
                trimming.cancel()

    try:
        return run_until_signalled(body, on_hangup=policy.request_reload)
    except (ConfigurationError, TopologyMismatch) as exc:
        print(f"bss-relay: {exc}", file=sys.stderr)
        return 2
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # after the loop: exports the spans still batched


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_until_signalled(
        lambda stop: run_demo(stop, amqp_url=args.amqp_url, timeout_s=args.timeout)
    )


def _asyncapi(args: argparse.Namespace) -> int:
    from service.ops.asyncapi import render_yaml

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
        "RELAY_SHUTDOWN_GRACE_S, the rest is redelivered later. SIGHUP re-reads "
        "RELAY_POLICY_FILE without stopping work (an invalid file keeps the policy in force). "
        "Traces go to an OTLP/HTTP collector when OTEL_EXPORTER_OTLP_ENDPOINT (or "
        "OTEL_TRACES_EXPORTER) is set.",
        epilog="AMQP_URL may list several broker nodes of a cluster, comma-separated; the "
        "service moves to the next that answers when it loses one. Exit code 2: invalid "
        "configuration, or queues on the broker of another type than RELAY_QUEUE_TYPE "
        "(classic|quorum) declares.",
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
    from service.ops.audit import register_cli as register_audit
    from service.ops.console import register_cli as register_console
    from service.ops.replay import register_cli as register_replay
    from service.ops.steering import register_cli as register_steering

    register_replay(verbs)
    register_audit(verbs)
    register_steering(verbs)
    register_console(verbs)
    _register_bench(verbs)


def _register_bench(verbs: Any) -> None:
    """``bench`` is a harness, not the product: the ``bench`` package lives at the top of a
    source checkout and ships in neither the wheel nor the image. From a checkout (an editable
    install, or ``python -m bench``) the verb is the harness's; elsewhere it says where to run."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "bench" / "__init__.py").is_file() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        from bench import register_cli as register_bench
    except ImportError:
        unavailable = verbs.add_parser(
            "bench",
            help="benchmark harness (source checkout only)",
            description="The benchmark harness ships only in a source checkout: run "
            "`bss-relay bench` (or `python -m bench`) from one.",
        )
        unavailable.set_defaults(func=_bench_unavailable)
        return
    register_bench(verbs)


def _bench_unavailable(_: argparse.Namespace) -> int:
    print(
        "bss-relay bench: the harness is not installed; run it from a source checkout",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
