"""Running the sandbox: ``SandboxServer`` (in-process, for tests and demos), ``serve`` and the CLI.

    async with SandboxServer() as sandbox:        # port 0: a free port is chosen
        ...  # point BSS_ENDPOINT and IAM_ENDPOINT at sandbox.url

``bss-relay sandbox --port 18080`` runs the same server until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from service.lifecycle import run_until_signalled
from service.sandbox.app import build_app
from service.sandbox.journal import DEFAULT_LOG_SIZE
from service.sandbox.simulator import Simulator
from service.sandbox.state import SandboxState

__all__ = ["DEFAULT_PORT", "SandboxServer", "register_cli", "serve"]

DEFAULT_PORT = 18080
_SHUTDOWN_SECONDS = 2.0  # in-flight requests get this long; hung ones are released at once
_BACKLOG = 1024


class SandboxServer:
    """The simulated BSS + IAM APIs on one HTTP listener, as an async context manager."""

    def __init__(
        self,
        *,
        data: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: Mapping[str, float | None] | None = None,
        faults: dict[str, Any] | None = None,
        log_size: int = DEFAULT_LOG_SIZE,
    ) -> None:
        self._data, self._limits, self._faults, self._log_size = data, limits, faults, log_size
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._sim: Simulator | None = None
        self.port = 0
        self.url = ""

    @property
    def simulator(self) -> Simulator:
        if self._sim is None:
            raise RuntimeError("the sandbox is not running")
        return self._sim

    @property
    def state(self) -> SandboxState:
        """The live state (mutated by requests); read it, or call ``simulator.reset()``."""
        return self.simulator.state

    async def __aenter__(self) -> SandboxServer:
        self._sim = Simulator(
            data=self._data, limits=self._limits, faults=self._faults, log_size=self._log_size
        )
        runner = web.AppRunner(
            build_app(self._sim), access_log=None, shutdown_timeout=_SHUTDOWN_SECONDS
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=_BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        shown = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        self.url = f"http://{shown}:{self.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sim is not None:
            self._sim.closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    data: Path | None = None,
    limits: Mapping[str, float | None] | None = None,
    faults: dict[str, Any] | None = None,
    log_size: int = DEFAULT_LOG_SIZE,
    stop: asyncio.Event | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set, or until cancelled."""
    server = SandboxServer(
        data=data, host=host, port=port, limits=limits, faults=faults, log_size=log_size
    )
    async with server:
        source = str(data) if data else "the built-in demo data set"
        (announce or _stderr)(
            f"bss-relay sandbox listening on {server.url} ({source}); "
            f"inspect at {server.url}/_sandbox/state"
        )
        await (stop or asyncio.Event()).wait()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _json_option(value: str) -> dict[str, Any]:
    """Inline JSON (starts with ``{``) or the path of a JSON file."""
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text("utf-8")
        parsed = json.loads(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON and not a readable JSON file: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return parsed


DESCRIPTION = """\
Serve a stateful simulator of the Huawei Cloud BSS partner API and of the IAM call that issues
customers' temporary credentials (assume_role), on http://HOST:PORT. Point both BSS_ENDPOINT and
IAM_ENDPOINT at that URL. Requests must be signed with SDK-HMAC-SHA256 exactly as on Huawei Cloud;
the partner keys are in the data set (GET /_sandbox/state shows them).

Unsigned inspection and control routes live under /_sandbox/: state, requests (?since=EPOCH),
reset (POST), faults (GET/PUT), limits (GET/PUT), counters, health."""

EPILOG = """\
--limits JSON:  {"renewal_resources": 2, "*": 100}  requests/s per (API, ParentUid) and per
                (API, source IP), each window counted on its own;
                "*" applies to every operation, named ones win; null or 0 = unlimited.
--faults JSON:  {"seed": 1, "token_ttl_seconds": null, "rules": [
                  {"kind": "latency", "ms": 50},
                  {"kind": "error", "operations": ["renewal_resources"], "rate": 0.1},
                  {"kind": "hang", "rate": 0.01, "seconds": 30},
                  {"kind": "drop_after_apply", "operations": ["create_partner_coupons"],
                   "count": 1}]}
Both accept inline JSON or a file path, and can be changed at run time with PUT /_sandbox/limits
and PUT /_sandbox/faults.

Demo data set: partner AK HPUADEMOPARTNER00001, SK DemoPartnerSecretKey00000000000000000001,
agency bss_partner_demo; customers, resources and quotas: docs/sandbox.md."""


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sandbox`` verb to the ``bss-relay`` command line."""
    parser = subparsers.add_parser(
        "sandbox",
        help="serve the simulated BSS and IAM APIs (for rehearsals, tests, benchmarks)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="JSON data set to load instead of the built-in demo one (same shape as "
        "service/sandbox/demo-data.json and as GET /_sandbox/state)",
    )
    parser.add_argument(
        "--limits", type=_json_option, metavar="JSON|FILE", help="rate-limit overrides"
    )
    parser.add_argument(
        "--faults", type=_json_option, metavar="JSON|FILE", help="fault rules applied from start"
    )
    parser.add_argument(
        "--log-size",
        type=int,
        default=DEFAULT_LOG_SIZE,
        metavar="N",
        help=f"requests kept in the /_sandbox/requests ring buffer (default {DEFAULT_LOG_SIZE})",
    )
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    async def body(stop: asyncio.Event) -> None:
        await serve(
            host=args.host,
            port=args.port,
            data=args.data,
            limits=args.limits,
            faults=args.faults,
            log_size=args.log_size,
            stop=stop,
        )

    try:
        return run_until_signalled(body)
    except (ValueError, OSError) as exc:
        print(f"bss-relay sandbox: {exc}", file=sys.stderr)
        return 2
