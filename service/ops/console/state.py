"""What the console's handlers share: its collaborators, built once by ``server`` and handed to
the application (``CONSOLE``)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from service.ops.console.letters import DeadLetters
from service.ops.console.sessions import Sessions
from service.ops.console.templates import Templates
from service.ops.console.users import Users
from service.ops.deployment import Deployment
from service.store.types import CommandStore

__all__ = ["CONSOLE", "Console", "console_of"]


@dataclass(frozen=True, slots=True)
class Console:
    users: Users
    sessions: Sessions
    deployment: Deployment
    store: CommandStore
    letters: DeadLetters
    templates: Templates
    # Served over TLS, here or by a reverse proxy in front: cookies are Secure, HSTS is sent.
    secure: bool


CONSOLE = web.AppKey("console", Console)


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]
