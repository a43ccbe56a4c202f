"""Hostile content stays text, and no secret is ever shown.

Producers and the API write bodies, ids, error messages and memos; every page shows them
escaped (a dead letter's body too, when it is not JSON or not even UTF-8). No page, answer or
log line of the console carries the partners' secret keys or the console users' tokens.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import structlog

from service.ops.console import RunningConsole
from service.ops.console.letters import view_body
from tests.console.conftest import (
    OPERATOR_TOKEN,
    PARTNER_SECRET,
    VIEWER_TOKEN,
    Answer,
    Broker,
    Client,
    command,
    sha256_hex,
)
from tests.console.test_access import ACTS, PAGES, READS

SCRIPT_ID = '<script>alert("id")</script>'
MEMO = "</pre><img src=x onerror=alert(1)><script>alert(2)</script>"
REASON = "<b>bold</b> from the API"
NOT_UTF8 = b"\xff\xfe<script>alert(3)</script>\x00\x1b[31m"
BIDI = "invoice\u202egnp.exe"
RAW = ("<script>alert", "<img src=x", "<b>bold", "</pre><img", "\u202e", "\x1b[31m")


async def hostile_dead_letters(broker: Broker) -> None:
    await broker.dead_letter(
        {**command("x"), "command_id": SCRIPT_ID}, reason="RELAY.SCHEMA", reason_message=REASON
    )
    coupon = command("coupon-1", kind="issue_coupon")
    coupon["payload"]["memo"] = MEMO + BIDI
    await broker.dead_letter(coupon, reason="CBC.0999", reason_message=MEMO)
    await broker.dead_letter(NOT_UTF8, message_id="bytes-1", reason="RELAY.INVALID_JSON")
    await broker.dead_letter(b"plain <text> & stuff", message_id="text-1", reason="RELAY.SCHEMA")


def assert_escaped(page: str) -> None:
    for raw in RAW:
        assert raw not in page, raw


async def test_hostile_dead_letters_stay_text_on_every_page(
    clients: dict[str, Client], running: RunningConsole, broker: Broker
) -> None:
    await hostile_dead_letters(broker)
    alice = clients["alice_page"]
    page = (await alice.get("/dead-letters")).text
    assert_escaped(page)
    assert "&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; from the API" in page
    assert "&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "\\u202egnp.exe" in page  # the override is shown, not obeyed
    assert "\\xff\\xfe&lt;script&gt;alert(3)&lt;/script&gt;\\u0000\\u001b[31m" in page
    assert "plain &lt;text&gt; &amp; stuff" in page
    # the id travels as a path segment and a form value, escaped in both
    assert f'href="/commands/{quote(SCRIPT_ID, safe="")}"' in page
    assert 'value="&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;"' in page

    command_page = (await alice.get(f"/commands/{quote(SCRIPT_ID, safe='')}")).text
    assert_escaped(command_page)
    assert "dead_lettered" in command_page
    assert "&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;" in command_page

    answer = await clients["alice"].post(
        "/api/dead-letters/replay", {"command_ids": [SCRIPT_ID], "dry_run": True}
    )
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["results"][0]["command_id"] == SCRIPT_ID  # JSON: the text itself

    form = [("csrf_token", alice.csrf), ("command_id", SCRIPT_ID), ("mode", "dry_run")]
    await alice.request("POST", "/dead-letters/replay", form=form)
    results = (await alice.get("/dead-letters")).text
    assert_escaped(results)
    assert "would be rejected again: RELAY.SCHEMA" in results


async def test_operator_input_stays_text_in_the_overview_and_the_audit(
    clients: dict[str, Client], running: RunningConsole
) -> None:
    customer = '"><script>alert(4)</script>'
    assert (await clients["alice"].post("/api/pause", {"customer": customer})).status == 200
    await running.console.deployment.record(
        "replay", actor="<b>bold</b>", command_id=SCRIPT_ID, detail={"note": MEMO}
    )
    for path in ("/", "/audit", f"/audit?customer_id={quote(customer)}"):
        page = (await clients["bob_page"].get(path)).text
        assert_escaped(page)
        assert "&#34;&gt;&lt;script&gt;alert(4)&lt;/script&gt;" in page


def test_body_views() -> None:
    pretty = view_body(json.dumps({"a": [1, {"b": "<i>"}]}).encode())
    assert (pretty.kind, pretty.text) == (
        "json",
        '{\n  "a": [\n    1,\n    {\n      "b": "<i>"\n    }\n  ]\n}',
    )
    assert view_body(b"line\nnext\tcol").text == "line\nnext\tcol"
    binary = view_body(b"\x80abc")
    assert (binary.kind, binary.text) == ("bytes", "\\x80abc")
    cut = view_body(b"x" * 100, max_chars=10)
    assert (cut.text, cut.size, cut.truncated) == ("x" * 10, 100, True)


async def test_no_secret_on_any_page_in_any_answer_or_in_the_log(
    clients: dict[str, Client], running: RunningConsole, broker: Broker
) -> None:
    """Every page and answer the console gives, to every kind of requester, after real
    actions, holds none of the partner's secret key, the users' tokens or their digests; nor
    does its log."""
    secrets = [
        PARTNER_SECRET,
        OPERATOR_TOKEN,
        VIEWER_TOKEN,
        sha256_hex(OPERATOR_TOKEN),
        sha256_hex(VIEWER_TOKEN),
    ]
    await hostile_dead_letters(broker)
    await broker.dead_letter(command("replay-me"))
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs:
        anonymous = clients["anonymous"]
        for path in ["/login", "/", "/no-such-page", "/api/quota", "/healthz", "/static/x"]:
            seen.append(_all(await anonymous.get(path)))
        seen.append(_all(await anonymous.sign_in("wrong-" + OPERATOR_TOKEN)))
        for who in ("alice", "bob", "alice_page", "bob_page"):
            client = clients[who]
            for path in [*READS, *PAGES, "/dead-letters", "/commands/replay-me"]:
                seen.append(_all(await client.get(path)))
            for path, body in ACTS:
                headers = {"X-CSRF-Token": client.csrf} if client.csrf else {}
                seen.append(_all(await client.post(path, body, headers=headers)))
            seen.append(_all(await client.post("/api/quota", {"api": "x", "rate": "fast"})))
        replay = {"command_ids": ["replay-me", SCRIPT_ID], "dry_run": False}
        seen.append(_all(await clients["alice"].post("/api/dead-letters/replay", replay)))
        seen.append(_all(await clients["alice_page"].get("/audit")))
    seen.append(json.dumps(logs, default=str))
    everything = "\n".join(seen)
    assert "alice (operator)" in everything  # the crawl saw signed-in pages
    assert "replayed" in everything
    for secret in secrets:
        assert secret not in everything
        assert secret.lower() not in everything.lower()


def _all(answer: Answer) -> str:
    """An answer's status line, headers (its cookies too) and body as one text."""
    headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
    return f"{answer.status}\n{headers}\n{chr(10).join(answer.cookies)}\n{answer.text}"
