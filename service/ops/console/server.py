"""The console's composition root: ``start_console`` opens, in order, the command store, the
deployment over it, the broker link and the HTTP listener, and closes them in reverse.

It reads the store and the broker and never consumes the work queue: the broker is used only
for short walks over ``bss.commands.dlq`` and for publishing replayed copies.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import structlog
from aiohttp import web

from service.ops.console.app import build_app
from service.ops.console.letters import BrokerLink, DeadLetters
from service.ops.console.sessions import Sessions
from service.ops.console.state import Console
from service.ops.console.templates import Templates
from service.ops.console.users import Users
from service.ops.deployment import Deployment
from service.ops.steering import deployment_over
from service.settings import Settings
from service.store import open_store
from service.store.types import CommandStore

__all__ = ["RunningConsole", "start_console", "tls_context"]

log = structlog.get_logger(__name__)

# The deployment over the open store (``service.ops.steering.deployment_over``).
DeploymentOf = Callable[[CommandStore, Settings], Deployment]


@dataclass(frozen=True, slots=True)
class RunningConsole:
    url: str  # where it listens (the port the system chose, when asked for port 0)
    console: Console
    app: web.Application


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for HTTPS from PEM files (TLS 1.2 or newer)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _url(runner: web.AppRunner, *, tls: bool) -> str:
    host, port = runner.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}"


@asynccontextmanager
async def start_console(
    settings: Settings,
    users: Users,
    *,
    deployment_of: DeploymentOf = deployment_over,
    host: str | None = None,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[RunningConsole]:
    """Serve the console until the block ends. Fails fast: an unreachable store or broker, or
    a port in use, raises before anything is served."""
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings.store_url))
        broker = BrokerLink(settings.amqp_url)
        stack.push_async_callback(broker.close)
        await broker.connection()
        console = Console(
            users=users,
            sessions=Sessions(lifetime_s=settings.relay_console_session_s),
            deployment=deployment_of(store, settings),
            store=store,
            letters=DeadLetters(broker, store, max_body_bytes=settings.relay_max_body_bytes),
            templates=Templates(),
            secure=tls is not None or settings.relay_console_secure_cookie,
        )
        app = build_app(console)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(
            runner,
            host or settings.relay_console_host,
            settings.relay_console_port if port is None else port,
            ssl_context=tls,
        )
        await site.start()
        url = _url(runner, tls=tls is not None)
        log.info("console_started", url=url, users=len(users.digests))
        yield RunningConsole(url=url, console=console, app=app)
