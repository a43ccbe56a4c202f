"""The console's pages: server-rendered HTML that works without JavaScript. Every action is a
plain ``POST`` form with the session's anti-forgery token in a hidden field, answered with a
redirect (303) to a page that shows the outcome once (post/redirect/get: reloading the page
never repeats an action)."""

from __future__ import annotations

import secrets
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

from aiohttp import web

from service.api.operations import OPERATIONS
from service.ops.console import actions
from service.ops.console.asks import PauseAsk, QuotaAsk, ReplayAsk, bounded_limit, parse
from service.ops.console.guard import CSRF_FIELD, Principal, Refusal, principal_of
from service.ops.console.letters import (
    BrokerUnavailable,
    Letter,
    ReplayFailed,
    view_body,
    with_dead_letter,
)
from service.ops.console.sessions import COOKIE, LOGIN_COOKIE, LOGIN_COOKIE_S, same_token
from service.ops.console.state import Console, console_of

__all__ = ["add_routes", "error_page"]

NONCE_CHARS = 43  # secrets.token_urlsafe(32)
PAGE_DEAD_LETTERS = 100
MAX_DEAD_LETTERS = 1000
THROTTLED_APIS = sorted(name for name, op in OPERATIONS.items() if op.limit_per_second)


def _context(request: web.Request, active: str) -> dict[str, Any]:
    principal = principal_of(request)
    session = principal.session
    return {
        "user": principal.user,
        "csrf_field": CSRF_FIELD,
        "csrf": session.csrf if session is not None else "",
        "active": active,
        "notices": session.take_notices() if session is not None else [],
    }


def _notify(principal: Principal, **notice: Any) -> None:
    if principal.session is not None:
        principal.session.notices.append(notice)


def _redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def _see_other(location: str) -> web.Response:
    """A redirect that can carry cookies (an HTTPException's would be dropped)."""
    return web.Response(status=303, headers={"Location": location})


# --- signing in and out -----------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path of this console (no scheme, no host, not ``//host``) is followed."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc and "\\" not in target else "/"


def _login_page(request: web.Request, *, status: int = 200, error: str = "") -> web.Response:
    console = console_of(request)
    # One nonce per browser while it lasts: two sign-in pages (two tabs) stay valid together.
    held = request.cookies.get(LOGIN_COOKIE, "")
    nonce = held if len(held) == NONCE_CHARS and held.isascii() else secrets.token_urlsafe(32)
    response = console.templates.page(
        "login.html",
        status=status,
        error=error,
        nonce=nonce,
        next=_safe_next(request.query.get("next")),
        csrf_field=CSRF_FIELD,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_COOKIE_S,
        path="/login",
        httponly=True,
        samesite="Strict",
        secure=console.secure,
    )
    return response


async def get_login(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    if console.sessions.get(request.cookies.get(COOKIE)) is not None:
        raise _redirect(_safe_next(request.query.get("next")))
    return _login_page(request)


async def post_login(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    form = await request.post()
    nonce, token = form.get(CSRF_FIELD), form.get("token")
    expected = request.cookies.get(LOGIN_COOKIE)
    if not isinstance(nonce, str) or expected is None or not same_token(nonce, expected):
        raise Refusal(403, "forged sign-in: open the sign-in page and try again")
    user = console.users.authenticate(token) if isinstance(token, str) and token else None
    if user is None:
        return _login_page(request, status=401, error="That token is not valid.")
    session = console.sessions.open(user)
    target = form.get("next")
    response = _see_other(_safe_next(target if isinstance(target, str) else None))
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=int(console.sessions.lifetime_s),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=console.secure,
    )
    response.del_cookie(LOGIN_COOKIE, path="/login")
    return response


async def post_logout(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    session = principal_of(request).session
    if session is not None:
        console.sessions.close(session.id)
    response = _see_other("/login")
    response.del_cookie(COOKIE, path="/")
    return response


# --- reading ----------------------------------------------------------------------------


async def _dead_letter_count(console: Console) -> int | None:
    try:
        return await console.letters.count()
    except BrokerUnavailable:
        return None


async def overview(request: web.Request) -> web.Response:
    console = console_of(request)
    deployment = console.deployment
    rows = await deployment.quota()
    return console.templates.page(
        "overview.html",
        **_context(request, "overview"),
        rows=[row.as_json() for row in rows],
        limits=await deployment.limits(),
        pauses=await deployment.pauses(),
        dead_letters=await _dead_letter_count(console),
        apis=THROTTLED_APIS,
    )


async def find_command(request: web.Request) -> web.StreamResponse:
    command_id = request.query.get("command_id", "").strip()
    if not command_id:
        raise _redirect("/")
    raise _redirect(f"/commands/{quote(command_id, safe='')}")


def _letter_row(letter: Letter) -> dict[str, Any]:
    return {"letter": letter.letter, "view": letter.view(), "at": letter.dead_lettered_at}


async def command_page(request: web.Request) -> web.Response:
    console = console_of(request)
    command_id = request.match_info["command_id"]
    answer = await console.deployment.why(command_id)
    try:
        letters: list[Letter] | None = await console.letters.of_command(command_id)
    except BrokerUnavailable:
        letters = None
    record = await console.store.get(command_id)
    return console.templates.page(
        "command.html",
        **_context(request, "command"),
        command_id=command_id,
        why=with_dead_letter(answer, letters or []),
        record=record,
        event=view_body(record.event) if record is not None and record.event else None,
        body=view_body(record.body) if record is not None and record.body else None,
        letters=None if letters is None else [_letter_row(x) for x in letters],
        audit=await console.deployment.audit(command_id=command_id, limit=100),
    )


async def dead_letters_page(request: web.Request) -> web.Response:
    console = console_of(request)
    limit = bounded_limit(
        request.query.get("limit"), default=PAGE_DEAD_LETTERS, most=MAX_DEAD_LETTERS
    )
    try:
        letters: list[Letter] | None = await console.letters.newest(limit)
        error = ""
    except BrokerUnavailable as exc:
        letters, error = None, str(exc)
    return console.templates.page(
        "dead_letters.html",
        **_context(request, "dead-letters"),
        letters=None if letters is None else [_letter_row(x) for x in letters],
        limit=limit,
        error=error,
    )


async def audit_page(request: web.Request) -> web.Response:
    console = console_of(request)
    command_id = request.query.get("command_id", "").strip() or None
    customer_id = request.query.get("customer_id", "").strip() or None
    limit = bounded_limit(request.query.get("limit"), default=100, most=1000)
    rows = await console.deployment.audit(
        command_id=command_id, customer_id=customer_id, limit=limit
    )
    return console.templates.page(
        "audit.html",
        **_context(request, "audit"),
        audit=rows,
        command_id=command_id or "",
        customer_id=customer_id or "",
        limit=limit,
    )


# --- acting -----------------------------------------------------------------------------


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value.strip() or None if isinstance(value, str) else None


async def quota_form(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    scope, key = _field(form, "scope") or "all", _field(form, "key")
    if scope not in ("all", "customer", "egress"):
        _fail(request, "/", "the scope is all, customer or egress")
    if scope != "all" and key is None:
        _fail(request, "/", f"name the {scope} whose limit to change")
    rate_text = _field(form, "rate") if _field(form, "op") != "reset" else None
    try:
        rate = None if rate_text is None else float(rate_text)
    except ValueError:
        _fail(request, "/", "rate: a number of requests per second")
    data = {"api": _field(form, "api"), "rate": rate, **({scope: key} if key else {})}
    if scope == "all":
        data = {"api": data["api"], "rate": rate}
    principal = principal_of(request)
    try:
        ask = parse(QuotaAsk, data)
        done = await actions.change_quota(console_of(request), ask, principal.user)
    except Refusal as refusal:
        _fail(request, "/", refusal.message)
    _notify(principal, kind="ok", text=_said(done))
    raise _redirect("/")


async def pause_form(request: web.Request) -> web.StreamResponse:
    return await _pause(request, pause=True)


async def resume_form(request: web.Request) -> web.StreamResponse:
    return await _pause(request, pause=False)


async def _pause(request: web.Request, *, pause: bool) -> web.StreamResponse:
    form = await request.post()
    data = {"customer": _field(form, "customer"), "api": _field(form, "api")}
    principal = principal_of(request)
    try:
        ask = parse(PauseAsk, data)
        done = await actions.steer_pause(console_of(request), ask, principal.user, pause=pause)
    except Refusal as refusal:
        _fail(request, "/", refusal.message)
    _notify(principal, kind="ok", text=_said(done))
    raise _redirect("/")


def _said(done: dict[str, Any]) -> str:
    shown = {k: v for k, v in done.items() if v is not None and k != "action"}
    return f"{done['action']}: " + ", ".join(f"{k} {v}" for k, v in shown.items())


def _fail(request: web.Request, back: str, message: str) -> NoReturn:
    """A form's input refused: said on the page ``back`` (without a session: an error page)."""
    principal = principal_of(request)
    if principal.session is None:
        raise Refusal(400, message)
    _notify(principal, kind="error", text=message)
    raise _redirect(back)


async def replay_form(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    ids = [v.strip() for v in form.getall("command_id", []) if isinstance(v, str) and v.strip()]
    if not ids:
        _fail(request, "/dead-letters", "select at least one dead letter")
    dry_run = _field(form, "mode") != "replay"
    principal = principal_of(request)
    try:
        ask = parse(ReplayAsk, {"command_ids": ids, "dry_run": dry_run})
        answers = await actions.replay(console_of(request), ask, principal.user)
    except Refusal as refusal:
        _fail(request, "/dead-letters", refusal.message)
    except ReplayFailed as failed:
        answers = failed.answers
        _notify(principal, kind="error", text=str(failed))
    results = [a.as_json() for a in answers]
    _notify(principal, kind="replay", dry_run=dry_run, results=results)
    raise _redirect("/dead-letters")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    console = console_of(request)
    return console.templates.page("error.html", status=status, status_code=status, message=message)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/login", get_login)
    router.add_post("/login", post_login)
    router.add_post("/logout", post_logout)
    router.add_get("/", overview)
    router.add_get("/commands", find_command)
    router.add_get("/commands/{command_id:.+}", command_page)
    router.add_get("/dead-letters", dead_letters_page)
    router.add_post("/dead-letters/replay", replay_form)
    router.add_get("/audit", audit_page)
    router.add_post("/quota", quota_form)
    router.add_post("/pause", pause_form)
    router.add_post("/resume", resume_form)
