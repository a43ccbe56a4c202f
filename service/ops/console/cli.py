"""``bss-relay console``: the command line over ``service.ops.console.server``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import ssl
import sys
from pathlib import Path

from aio_pika.exceptions import AMQPError
from pydantic import ValidationError

from service.lifecycle import run_until_signalled
from service.ops.console.letters import BrokerUnavailable
from service.ops.console.server import DeploymentOf, start_console, tls_context
from service.ops.console.users import Users, UsersFileError
from service.ops.steering import deployment_over
from service.settings import Settings
from service.telemetry.logging import configure_logging

__all__ = ["register_cli"]

DESCRIPTION = """\
Serve the operator console: web pages and a JSON API for the deployment named by STORE_URL and
AMQP_URL (the same as serve's). It shows the buckets with waiting commands and the rate each is
sent at (live), one command's whereabouts, the dead letters, the audit trail, and the pauses and
limit changes in force; operators replay dead letters (dry runs too), change limits and pause
customers. One process beside the replicas; it never consumes the work queue."""

EPILOG = """\
users (RELAY_CONSOLE_USERS_FILE, YAML or JSON; required):
  users:
    alice: {role: operator, token_sha256: <64 lowercase hex digits>}
    bob:   {role: viewer,   token_sha256: <...>}
  token_sha256 is the SHA-256 of the token's UTF-8 bytes, e.g.
    printf %s "$TOKEN" | sha256sum
  A viewer reads everything; an operator also acts (replay, dry runs included; limits; pause).

the JSON API (Authorization: Bearer <token>):
  GET  /api/quota                      POST /api/quota {"api", "rate", "customer"|"egress"}
  GET  /api/commands/COMMAND_ID        GET  /api/audit?command_id=&customer_id=&limit=N
  GET  /api/dead-letters?limit=N       POST /api/dead-letters/replay {"command_ids", "dry_run"}
  POST /api/pause {"customer", "api"}  POST /api/resume {"customer", "api"}

TLS: --tls-cert/--tls-key (or RELAY_CONSOLE_TLS_CERT/_KEY) serve HTTPS; behind a reverse proxy
that terminates TLS set RELAY_CONSOLE_SECURE_COOKIE=true. Either way the session cookie is then
Secure and HSTS is sent. Listens on 127.0.0.1:8090 unless told otherwise.

exit status: 0 stopped by SIGTERM/SIGINT; 2 bad configuration (no or an invalid users file,
TLS files); 1 the store or the broker could not be reached at start."""


def register_cli(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    deployment: DeploymentOf = deployment_over,
) -> None:
    """Add the ``console`` verb to ``bss-relay``."""
    parser = subparsers.add_parser(
        "console",
        help="serve the operator console (web pages and JSON API)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-file", default=None, help="read settings from this file too")
    parser.add_argument("--host", default=None, help="default: $RELAY_CONSOLE_HOST, 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $RELAY_CONSOLE_PORT, 8090")
    parser.add_argument(
        "--users-file", type=Path, default=None, help="default: $RELAY_CONSOLE_USERS_FILE"
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    parser.set_defaults(func=functools.partial(_run, deployment=deployment))


def _fail(message: str, code: int = 2) -> int:
    print(f"bss-relay console: {message}", file=sys.stderr)
    return code


def _users(args: argparse.Namespace, settings: Settings) -> Users:
    path = args.users_file or settings.relay_console_users_file
    if path is None:
        raise UsersFileError(
            "no users file: set RELAY_CONSOLE_USERS_FILE (or --users-file); "
            "see `bss-relay console --help` for its format"
        )
    return Users.load(path)


def _tls(args: argparse.Namespace, settings: Settings) -> ssl.SSLContext | None:
    cert = args.tls_cert or settings.relay_console_tls_cert
    key = args.tls_key or settings.relay_console_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    try:
        return tls_context(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the TLS certificate or key: {exc}") from None


def _run(args: argparse.Namespace, *, deployment: DeploymentOf) -> int:
    try:
        settings = Settings(_env_file=args.env_file)
    except ValidationError as exc:
        return _fail(f"invalid configuration:\n{exc}")
    try:
        users = _users(args, settings)
        tls = _tls(args, settings)
    except (UsersFileError, ValueError) as exc:
        return _fail(str(exc))
    configure_logging(settings.relay_log_level)

    async def body(stop: asyncio.Event) -> None:
        async with start_console(
            settings, users, deployment_of=deployment, host=args.host, port=args.port, tls=tls
        ):
            await stop.wait()

    try:
        return run_until_signalled(body)
    except BrokerUnavailable as exc:
        return _fail(f"{exc}: check AMQP_URL", 1)
    except (AMQPError, OSError, RuntimeError) as exc:  # the store's, or the port in use
        return _fail(f"cannot start: {type(exc).__name__}: {_safe(exc)}", 1)


def _safe(exc: BaseException) -> str:
    """An OSError's own words (a port in use) without anything a URL might add."""
    return exc.strerror or "" if isinstance(exc, OSError) else ""
