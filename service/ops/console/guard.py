"""Who is asking, and may they: the console's middlewares (CONTRACT §10).

::

    request ──▶ protect (headers on every answer; errors as JSON or a page)
            ──▶ guard:  public route (sign-in, static files, /healthz)? ─────────▶ handler
                        Authorization: Bearer <token> ─▶ that user, or 401
                        else the session cookie ─▶ its user; else 401 (pages: to sign-in)
                        acting (POST)?  with the cookie: anti-forgery token or 403
                                        a viewer: 403 (signing out excepted)
            ──▶ handler (reads ``request[PRINCIPAL]``)

A bearer token is never ambient (a browser does not attach it on its own), so requests made
with one need no anti-forgery token; a cookie is, so every acting request made with it must
carry the session's token: the ``X-CSRF-Token`` header (JSON API) or the hidden ``csrf_token``
form field (pages).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web

from service.ops.console.sessions import COOKIE, Session, Sessions, same_token
from service.ops.console.users import User, Users

__all__ = [
    "CSP",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "PRINCIPAL",
    "Principal",
    "Refusal",
    "guard",
    "is_api",
    "principal_of",
    "protect",
]

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# /favicon.ico: browsers ask for it on their own; a redirect to the sign-in page would set a
# new sign-in cookie behind the form's back.
PUBLIC_PATHS = frozenset({"/login", "/healthz", "/favicon.ico"})
STATIC_PREFIX = "/static/"
SIGN_OUT = "/logout"  # acting, but open to every signed-in user

# Scripts and styles only from this origin, as files (no inline script, no eval); nothing may
# frame the console; forms post only back to it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000"


@dataclass(frozen=True, slots=True)
class Principal:
    user: User
    session: Session | None  # None: the request carried a bearer token


PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """Who made this request (set by ``guard`` on every route that is not public)."""
    return request[PRINCIPAL]


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _public(request: web.Request) -> bool:
    return request.path in PUBLIC_PATHS or request.path.startswith(STATIC_PREFIX)


class Refusal(Exception):
    """An answer of ``status`` with ``message``: JSON ``{"error": message}`` under /api/, a
    page elsewhere (``protect`` renders it). Messages are ours; a page escapes them anyway."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _unauthorized() -> Refusal:
    challenge = {"WWW-Authenticate": 'Bearer realm="bss-relay console"'}
    return Refusal(401, "sign in first: no valid console user", headers=challenge)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def identify(request: web.Request, users: Users, sessions: Sessions) -> Principal | None:
    """The requester, or None. A request with an Authorization header is judged by it alone:
    a wrong token is not rescued by a cookie."""
    token = _bearer(request)
    if token is not None:
        user = users.authenticate(token) if token else None
        return Principal(user, None) if user is not None else None
    session = sessions.get(request.cookies.get(COOKIE))
    return Principal(session.user, session) if session is not None else None


async def _forged(request: web.Request, session: Session) -> bool:
    given = request.headers.get(CSRF_HEADER)
    if given is None and not is_api(request) and request.content_type in _FORMS:
        field = (await request.post()).get(CSRF_FIELD)
        given = field if isinstance(field, str) else None
    return not same_token(given, session.csrf)


_FORMS = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _unauthenticated(request: web.Request) -> web.StreamResponse:
    if is_api(request) or request.method not in SAFE_METHODS:
        raise _unauthorized()
    target = request.path_qs if request.path != "/" else ""
    where = f"/login?next={quote(target, safe='')}" if target else "/login"
    raise web.HTTPSeeOther(where)


def guard(users: Users, sessions: Sessions) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _public(request):
            return await handler(request)
        principal = identify(request, users, sessions)
        if principal is None:
            return _unauthenticated(request)
        request[PRINCIPAL] = principal
        if request.method not in SAFE_METHODS:
            if principal.session is not None and await _forged(request, principal.session):
                log.warning("console_forged_request", user=principal.user.name, path=request.path)
                raise Refusal(403, "forged request: anti-forgery token missing or wrong")
            if not principal.user.may_act and request.path != SIGN_OUT:
                raise Refusal(403, f"a {principal.user.role} may not act: operators only")
        return await handler(request)

    return middleware


def _headers(response: web.StreamResponse, *, secure: bool, static: bool) -> None:
    response.headers.update(HEADERS)
    response.headers.setdefault("Cache-Control", "max-age=300" if static else "no-store")
    if secure:
        response.headers["Strict-Transport-Security"] = HSTS


ErrorPage = Callable[[web.Request, int, str], web.Response]


def _refused(request: web.Request, status: int, message: str, page: ErrorPage) -> web.Response:
    if is_api(request):
        return web.json_response({"error": message}, status=status)
    return page(request, status, message)


def protect(*, secure: bool, render_error: ErrorPage) -> Any:
    """The outermost middleware: security headers on every answer (errors included); HTTP
    errors as JSON under /api/ and as a page elsewhere; an unexpected error logged and
    answered 500 without its text (it might carry what a page must not show)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        static = request.path.startswith(STATIC_PREFIX)
        try:
            response = await handler(request)
        except Refusal as refusal:
            response = _refused(request, refusal.status, refusal.message, render_error)
            response.headers.update(refusal.headers)
        except web.HTTPException as exc:  # the router's 404 and 405, our redirects
            if exc.status < 400:
                response = web.Response(status=exc.status, headers=exc.headers)
            else:
                response = _refused(request, exc.status, exc.reason, render_error)
        except Exception:
            log.exception("console_request_failed", method=request.method, path=request.path)
            message = "internal error: see the console's log"
            response = _refused(request, 500, message, render_error)
        _headers(response, secure=secure, static=static)
        return response

    return middleware
