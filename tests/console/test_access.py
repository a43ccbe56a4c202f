"""Who may do what (CONTRACT §10): every JSON route and every page refuses a request without a
valid user (401 / a redirect to sign-in), a viewer's action (403) and a forged action, one
made with the session cookie but without the anti-forgery token (403); nothing is changed by
a refused request. Headers: CSP everywhere, cookie attributes."""

from __future__ import annotations

from typing import Any

import pytest

from service.ops.console import RunningConsole
from service.ops.console.guard import CSP
from service.ops.console.sessions import COOKIE, Sessions
from service.ops.console.users import User
from tests.console.conftest import (
    OPERATOR_TOKEN,
    Client,
    console_settings,
    sha256_hex,
    users,
)

READS = [
    "/api/quota",
    "/api/commands/cmd-1",
    "/api/dead-letters",
    "/api/dead-letters?limit=5",
    "/api/audit",
    "/api/audit?command_id=cmd-1&customer_id=c-1&limit=3",
]
ACTS: list[tuple[str, dict[str, Any]]] = [
    ("/api/quota", {"api": "renewal_resources", "rate": 2}),
    ("/api/quota", {"api": "renewal_resources", "rate": None, "customer": "c-1"}),
    ("/api/dead-letters/replay", {"command_ids": ["cmd-1"], "dry_run": True}),
    ("/api/dead-letters/replay", {"command_ids": ["cmd-1"], "dry_run": False}),
    ("/api/pause", {"customer": "c-1"}),
    ("/api/resume", {"customer": "c-1", "api": "renewal_resources"}),
]
PAGES = ["/", "/dead-letters", "/audit", "/audit?command_id=x", "/commands/cmd-1"]
PAGE_ACTS: list[tuple[str, dict[str, str]]] = [
    ("/quota", {"op": "set", "api": "renewal_resources", "scope": "all", "rate": "2"}),
    ("/quota", {"op": "reset", "api": "renewal_resources", "scope": "all"}),
    ("/pause", {"customer": "c-1"}),
    ("/resume", {"customer": "c-1"}),
    ("/dead-letters/replay", {"command_id": "cmd-1", "mode": "dry_run"}),
    ("/dead-letters/replay", {"command_id": "cmd-1", "mode": "replay"}),
]
ACT_IDS = [f"{path}:{sorted(body.items())}" for path, body in ACTS]


async def operators_actions(running: RunningConsole) -> list[str]:
    return [
        row.action
        for row in await running.console.deployment.audit()
        if row.action in ("replay", "quota_set", "quota_reset", "pause", "resume")
    ]


# --- no valid user ------------------------------------------------------------------------


@pytest.mark.parametrize("path", READS)
async def test_a_read_without_a_user_is_401(clients: dict[str, Client], path: str) -> None:
    answer = await clients["anonymous"].get(path)
    assert answer.status == 401
    assert answer.json() == {"error": "sign in first: no valid console user"}
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("path", "body"), ACTS, ids=ACT_IDS)
async def test_an_action_without_a_user_is_401_and_changes_nothing(
    clients: dict[str, Client], running: RunningConsole, path: str, body: dict[str, Any]
) -> None:
    answer = await clients["anonymous"].post(path, body)
    assert answer.status == 401
    assert await operators_actions(running) == []


@pytest.mark.parametrize("token", ["", "wrong", OPERATOR_TOKEN + "x", sha256_hex(OPERATOR_TOKEN)])
async def test_a_wrong_bearer_token_is_401_even_with_a_session_cookie(
    clients: dict[str, Client], token: str
) -> None:
    """A request with an Authorization header is judged by it alone."""
    signed_in = clients["alice_page"]
    signed_in.token = token
    assert (await signed_in.get("/api/quota")).status == 401
    answer = await signed_in.get("/")
    assert (answer.status, answer.headers["Location"]) == (303, "/login")
    answer = await signed_in.post("/api/pause", {"customer": "c-1"})
    assert answer.status == 401


async def test_other_schemes_are_not_tokens(clients: dict[str, Client]) -> None:
    anonymous = clients["anonymous"]
    answer = await anonymous.request(
        "GET", "/api/quota", headers={"Authorization": f"Basic {OPERATOR_TOKEN}"}
    )
    assert answer.status == 401


@pytest.mark.parametrize("path", PAGES)
async def test_a_page_without_a_user_redirects_to_sign_in(
    clients: dict[str, Client], path: str
) -> None:
    answer = await clients["anonymous"].get(path)
    assert answer.status == 303
    assert answer.headers["Location"].startswith("/login")
    assert answer.text == ""  # no data rides along with the redirect


@pytest.mark.parametrize(("path", "form"), PAGE_ACTS)
async def test_a_form_without_a_user_is_401(
    clients: dict[str, Client], running: RunningConsole, path: str, form: dict[str, str]
) -> None:
    answer = await clients["anonymous"].request("POST", path, form=form)
    assert answer.status == 401
    assert "Sign in" in answer.text
    assert await operators_actions(running) == []


# --- a viewer ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", READS)
async def test_a_viewer_reads_everything(clients: dict[str, Client], path: str) -> None:
    for name in ("bob", "bob_page"):
        answer = await clients[name].get(path)
        assert answer.status == 200, (name, answer.text)
        assert answer.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("path", PAGES)
async def test_a_viewer_sees_every_page(clients: dict[str, Client], path: str) -> None:
    answer = await clients["bob_page"].get(path)
    assert answer.status == 200
    assert "bob (viewer)" in answer.text


@pytest.mark.parametrize(("path", "body"), ACTS, ids=ACT_IDS)
async def test_a_viewers_action_is_403_and_changes_nothing(
    clients: dict[str, Client], running: RunningConsole, path: str, body: dict[str, Any]
) -> None:
    bob = clients["bob_page"]
    for answer in (
        await clients["bob"].post(path, body),
        await bob.post(path, body, headers={"X-CSRF-Token": bob.csrf}),  # not forged: a viewer
    ):
        assert answer.status == 403
        assert answer.json() == {"error": "a viewer may not act: operators only"}
    assert await operators_actions(running) == []
    assert await running.console.deployment.pauses() == []
    assert await running.console.deployment.limits() == []


@pytest.mark.parametrize(("path", "form"), PAGE_ACTS)
async def test_a_viewers_form_is_403(
    clients: dict[str, Client], running: RunningConsole, path: str, form: dict[str, str]
) -> None:
    bob = clients["bob_page"]
    answer = await bob.request("POST", path, form={**form, "csrf_token": bob.csrf})
    assert answer.status == 403
    assert "a viewer may not act" in answer.text
    assert await operators_actions(running) == []


# --- forged: the cookie without the anti-forgery token ------------------------------------


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
@pytest.mark.parametrize(("path", "body"), ACTS, ids=ACT_IDS)
async def test_a_forged_json_action_is_403_and_changes_nothing(
    clients: dict[str, Client],
    running: RunningConsole,
    path: str,
    body: dict[str, Any],
    csrf: str | None,
) -> None:
    headers = {} if csrf is None else {"X-CSRF-Token": csrf}
    answer = await clients["alice_page"].post(path, body, headers=headers)
    assert answer.status == 403
    assert answer.json() == {"error": "forged request: anti-forgery token missing or wrong"}
    assert await operators_actions(running) == []


@pytest.mark.parametrize("csrf", [None, "forged-token"])
@pytest.mark.parametrize(("path", "form"), PAGE_ACTS)
async def test_a_forged_form_is_403(
    clients: dict[str, Client],
    running: RunningConsole,
    path: str,
    form: dict[str, str],
    csrf: str | None,
) -> None:
    sent = form if csrf is None else {**form, "csrf_token": csrf}
    answer = await clients["alice_page"].request("POST", path, form=sent)
    assert answer.status == 403
    assert "forged request" in answer.text
    assert await operators_actions(running) == []


async def test_another_sessions_token_is_forged(
    clients: dict[str, Client], running: RunningConsole
) -> None:
    bob, alice = clients["bob_page"], clients["alice_page"]
    answer = await alice.post("/api/pause", {"customer": "c-1"}, headers={"X-CSRF-Token": bob.csrf})
    assert answer.status == 403
    assert await operators_actions(running) == []


async def test_sign_out_needs_the_token_and_ends_the_session(clients: dict[str, Client]) -> None:
    bob = clients["bob_page"]
    assert (await bob.request("POST", "/logout")).status == 403
    answer = await bob.request("POST", "/logout", form={"csrf_token": bob.csrf})
    assert (answer.status, answer.headers["Location"]) == (303, "/login")
    assert (await bob.get("/api/quota")).status == 401  # the server forgot the session


# --- the operator, properly -----------------------------------------------------------------


async def test_an_operator_acts_by_token_or_by_cookie_with_the_token(
    clients: dict[str, Client], running: RunningConsole
) -> None:
    alice = clients["alice_page"]
    assert (await clients["alice"].post("/api/pause", {"customer": "c-1"})).status == 200
    answer = await alice.post(
        "/api/resume", {"customer": "c-1"}, headers={"X-CSRF-Token": alice.csrf}
    )
    assert answer.status == 200
    form = {"csrf_token": alice.csrf, "customer": "c-2"}
    answer = await alice.request("POST", "/pause", form=form)
    assert (answer.status, answer.headers["Location"]) == (303, "/")
    assert [(r.actor, r.action, r.customer_id) for r in await running.console.deployment.audit()][
        :3
    ] == [("alice", "pause", "c-2"), ("alice", "resume", "c-1"), ("alice", "pause", "c-1")]


# --- signing in -----------------------------------------------------------------------------


async def test_sign_in_sets_a_strict_http_only_session_cookie(clients: dict[str, Client]) -> None:
    client = clients["anonymous"]
    answer = await client.sign_in(OPERATOR_TOKEN)
    assert answer.status == 303
    [cookie] = [c for c in answer.cookies if c.startswith(f"{COOKIE}=")]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie
    assert "secure" not in attributes  # plain HTTP here: see the next test
    assert OPERATOR_TOKEN not in cookie
    assert client.session_id is not None
    assert len(client.session_id) >= 43  # 256 random bits


async def test_the_cookie_is_secure_behind_a_tls_proxy(
    console_amqp_url: str, tmp_path: Any
) -> None:
    import aiohttp

    from service.ops.console import start_console
    from service.ops.console.sessions import LOGIN_COOKIE
    from tests.console.conftest import hidden

    settings = console_settings(
        console_amqp_url, f"sqlite:///{tmp_path}/s.db", relay_console_secure_cookie=True
    )
    # The proxy speaks HTTPS to the browser; a client jar would not send a Secure cookie back
    # over this test's plain HTTP, so the cookie is carried by hand.
    async with (
        start_console(settings, users(), port=0) as running,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        client = Client(running.url, http)
        page = await client.get("/login")
        [signin] = [c for c in page.cookies if c.startswith(f"{LOGIN_COOKIE}=")]
        assert "Secure" in signin
        nonce = hidden(page.text, "csrf_token")
        answer = await client.request(
            "POST",
            "/login",
            form={"csrf_token": nonce, "token": OPERATOR_TOKEN},
            headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"},
        )
        [cookie] = [c for c in answer.cookies if c.startswith(f"{COOKIE}=")]
        assert "Secure" in cookie
        assert "SameSite=Strict" in cookie
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")


async def test_a_wrong_token_does_not_sign_in(clients: dict[str, Client]) -> None:
    client = clients["anonymous"]
    answer = await client.sign_in("not-a-token")
    assert answer.status == 401
    assert "That token is not valid." in answer.text
    assert client.session_id is None


async def test_a_forged_sign_in_is_refused(clients: dict[str, Client]) -> None:
    """Another site cannot sign a browser in: the form's hidden field must match the cookie
    the sign-in page set."""
    client = clients["anonymous"]
    form = {"csrf_token": "guessed", "token": OPERATOR_TOKEN}
    answer = await client.request("POST", "/login", form=form)
    assert answer.status == 403
    assert client.session_id is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dead-letters", "/dead-letters"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
async def test_sign_in_only_returns_to_this_console(
    clients: dict[str, Client], target: str, expected: str
) -> None:
    client = clients["anonymous"]
    page = await client.get("/login")
    from tests.console.conftest import hidden

    form = {"csrf_token": hidden(page.text, "csrf_token"), "token": OPERATOR_TOKEN, "next": target}
    answer = await client.request("POST", "/login", form=form)
    assert (answer.status, answer.headers["Location"]) == (303, expected)


def test_sessions_expire_and_stay_bounded() -> None:
    now = [0.0]
    sessions = Sessions(lifetime_s=60, clock=lambda: now[0], max_sessions=2)
    alice = User("alice", "operator")
    first = sessions.open(alice)
    assert sessions.get(first.id) is first
    now[0] = 59.9
    assert sessions.get(first.id) is first
    now[0] = 60.0
    assert sessions.get(first.id) is None
    a, b, c = sessions.open(alice), sessions.open(alice), sessions.open(alice)
    assert (sessions.get(a.id), len(sessions)) == (None, 2)  # the oldest made room
    assert sessions.get(b.id) is b
    assert sessions.get(c.id) is c
    assert len({a.id, b.id, c.id, a.csrf, b.csrf, c.csrf}) == 6


# --- headers ----------------------------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(clients: dict[str, Client]) -> None:
    answers = [
        await clients["anonymous"].get("/login"),
        await clients["anonymous"].get("/"),
        await clients["anonymous"].get("/api/quota"),
        await clients["anonymous"].get("/no-such-page"),
        await clients["bob_page"].get("/"),
        await clients["bob_page"].get("/static/console.js"),
        await clients["bob"].post("/api/pause", {"customer": "c"}),
        await clients["alice"].post("/api/pause", {"nonsense": 1}),
    ]
    for answer in answers:
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in CSP
    assert "unsafe-inline" not in CSP


async def test_pages_have_no_inline_script(clients: dict[str, Client]) -> None:
    import re

    for path in PAGES:
        page = (await clients["alice_page"].get(path)).text
        for tag in re.findall(r"<script[^>]*>", page):
            assert 'src="/static/' in tag, tag
        assert not re.search(r"<script[^>]*>\s*[^<\s]", page)
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", page)  # no event-handler attributes


async def test_healthz_needs_no_user_and_shows_nothing(clients: dict[str, Client]) -> None:
    answer = await clients["anonymous"].get("/healthz")
    assert (answer.status, answer.json()) == (200, {"ok": True})


async def test_bad_requests_are_400_with_a_reason(clients: dict[str, Client]) -> None:
    alice = clients["alice"]
    cases = [
        ("/api/quota", {"api": "renewal_resources"}),  # rate missing (null resets)
        ("/api/quota", {"api": "renewal_resources", "rate": -1}),
        ("/api/quota", {"api": "renewal_resources", "rate": True}),
        ("/api/quota", {"api": "renewal_resources", "rate": "2"}),
        ("/api/quota", {"api": "renewal_resources", "rate": 1, "customer": "a", "egress": "b"}),
        ("/api/quota", {"api": "no_such_operation", "rate": 1}),
        ("/api/pause", {}),
        ("/api/dead-letters/replay", {"command_ids": []}),
        ("/api/dead-letters/replay", {"command_ids": ["a"], "dry_run": "yes"}),
    ]
    for path, body in cases:
        answer = await alice.post(path, body)
        assert answer.status == 400, (path, body, answer.text)
        assert answer.json()["error"].startswith("invalid request")
    answer = await alice.request("POST", "/api/pause", form={"customer": "c-1"})
    assert answer.status == 415
    for path in ("/api/dead-letters?limit=0", "/api/dead-letters?limit=x", "/api/audit?limit=0"):
        assert (await alice.get(path)).status == 400, path
