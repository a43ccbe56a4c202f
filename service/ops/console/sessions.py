"""Browser sessions, kept server-side: the cookie holds only a random id.

A session is opened when a user signs in with their token and ends at sign-out, after
``RELAY_CONSOLE_SESSION_S``, or when the console restarts (sessions live in this process's
memory: one console process serves a deployment). Each session has its own anti-forgery token,
which every acting request made with the session cookie must carry (a hidden form field, or the
``X-CSRF-Token`` header); a page from another site can send the cookie (were it not
``SameSite=Strict``) but cannot read the token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.ops.console.users import User

__all__ = ["COOKIE", "LOGIN_COOKIE", "Session", "Sessions", "same_token"]

COOKIE = "bss_console_session"
# Anti-forgery for the sign-in form itself (no session yet): the form's hidden field must equal
# this short-lived cookie, so another site cannot sign a browser in as someone else.
LOGIN_COOKIE = "bss_console_signin"
LOGIN_COOKIE_S = 600
MAX_SESSIONS = 10_000  # beyond this the oldest sessions are dropped: memory stays bounded
ID_BYTES = 32  # 256 bits of randomness per session id and per anti-forgery token


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented anti-forgery token."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(slots=True)
class Session:
    id: str
    user: User
    csrf: str
    expires_at: float  # on the sessions' monotonic clock
    # What the next page shows once: the outcome of the action a form just took.
    notices: list[dict[str, Any]] = field(default_factory=list)

    def take_notices(self) -> list[dict[str, Any]]:
        taken, self.notices = self.notices, []
        return taken


class Sessions:
    def __init__(
        self,
        *,
        lifetime_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._max = max_sessions
        self._open: dict[str, Session] = {}  # insertion order: oldest first

    def open(self, user: User) -> Session:
        self._sweep()
        while len(self._open) >= self._max:
            del self._open[next(iter(self._open))]
        session = Session(
            id=secrets.token_urlsafe(ID_BYTES),
            user=user,
            csrf=secrets.token_urlsafe(ID_BYTES),
            expires_at=self._clock() + self.lifetime_s,
        )
        self._open[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id; an expired one is ended here."""
        if not session_id:
            return None
        session = self._open.get(session_id)
        if session is not None and session.expires_at <= self._clock():
            del self._open[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._open.pop(session_id, None)

    def _sweep(self) -> None:
        now = self._clock()
        for expired in [s.id for s in self._open.values() if s.expires_at <= now]:
            del self._open[expired]

    def __len__(self) -> int:
        return len(self._open)
