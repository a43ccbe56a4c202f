"""The operator console in a real headless browser (Debian's Chromium, through Selenium),
against a running deployment: the real service on PostgreSQL with traffic from the sandbox, a
fresh vhost, dead letters of several kinds, a backlog.

An operator signs in, sees the buckets refresh live, finds a command, dry-runs and then
replays dead letters (a finished command is only re-announced, and the service does so); a
viewer's action is refused. The test leaves a screenshot of the overview (for the README:
``RELAY_TEST_SCREENSHOTS=docs`` copies it there).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from service.ops.console import RunningConsole, start_console
from service.settings import Settings
from tests.console.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, users
from tests.e2e.browser import Browser, open_browser
from tests.e2e.conftest import Relay, RelayFactory, Sandbox, eventually, new_id, partner_env
from tests.sandbox import demo_ids as ids

pytestmark = pytest.mark.e2e

HOSTILE_ID = "<script>alert(1)</script>"


def renew(customer: str, **extra: Any) -> dict[str, Any]:
    return {
        "command_id": new_id("renew"),
        "type": "renew",
        "payload": {
            "customer_id": customer,
            "resource_ids": ["acme-ecs-01"],
            "period_type": "month",
            "period_num": 1,
        },
        **extra,
    }


def coupon(face: str) -> dict[str, Any]:
    return {
        "command_id": new_id("coupon"),
        "type": "issue_coupon",
        "payload": {"quota_id": ids.QUOTA_MAIN, "customer_ids": [ids.ACME], "face_value": face},
    }


async def traffic(relay: Relay) -> dict[str, str]:
    """Finished commands and dead letters of five kinds; their command ids by name."""
    done = renew(ids.ACME)
    await relay.publish(done)
    first = coupon("2.00")
    await relay.publish(first)
    for command in (done, first):
        [event] = await relay.events.wait_for(command["command_id"], within=60)
        assert event["outcome"] == "succeeded"
    # the same id re-used for another command: re-announced, a copy dead-lettered (conflict)
    await relay.publish({**first, "payload": {**first["payload"], "face_value": "900.00"}})
    await relay.events.wait_for(first["command_id"], count=2)
    schema = {"command_id": new_id("schema"), "type": "renew", "payload": {"customer_id": "x"}}
    late = renew(ids.ACME, deadline=(datetime.now(UTC) - timedelta(hours=1)).isoformat())
    await relay.publish(schema)
    await relay.publish(late)
    await relay.publish(b"{not json", routing_key="command.renew")
    await relay.publish(
        {"command_id": HOSTILE_ID, "type": "renew", "payload": {"memo": "<img src=x onerror=1>"}}
    )

    async def all_dead() -> bool:
        return len(await relay.dead_letters()) == 5

    await eventually(all_dead, within=60)
    return {
        "done": done["command_id"],
        "conflict": first["command_id"],
        "schema": schema["command_id"],
        "late": late["command_id"],
    }


BACKLOG_API = "auto_renewal_resources"
BACKLOG = 15


def enable_auto_renew(customer: str) -> dict[str, Any]:
    return {
        "command_id": new_id("auto"),
        "type": "set_auto_renew",
        "payload": {"customer_id": customer, "resource_id": "acme-ecs-01", "enabled": True},
    }


async def backlog_waiting(browser: Browser) -> int:
    """The overview's `waiting` for the backlog's bucket, -1 when its row is gone."""
    for row in await browser.texts("#quota-rows tr"):
        words = row.split()
        if words[:3] == [BACKLOG_API, "customer", ids.ACME]:
            return int(words[5])
    return -1


async def sign_in(browser: Browser, token: str) -> None:
    await browser.open("/")
    assert browser.path.startswith("/login"), browser.path  # no page before signing in
    await browser.fill("#token", token)
    await browser.click("#sign-in")
    await browser.wait_for_text("#who", "(")


async def select(browser: Browser, *command_ids: str) -> None:
    def ticks(driver: WebDriver) -> None:
        for box in driver.find_elements(By.CSS_SELECTOR, "input[name=command_id]"):
            if box.get_attribute("value") in command_ids:
                box.click()

    await asyncio.to_thread(ticks, browser.driver)


async def choose(browser: Browser, css: str, value: str) -> None:
    def picking() -> None:
        Select(browser.driver.find_element(By.CSS_SELECTOR, css)).select_by_value(value)

    await asyncio.to_thread(picking)


async def results(browser: Browser) -> dict[str, str]:
    rows = await browser.texts("#replay-results tr.result")
    return {row.split(" ")[0]: row.split(" ")[1] for row in rows}


async def keep_screenshot(browser: Browser, tmp_path: Path) -> Path:
    shot = tmp_path / "console-overview.png"
    await browser.screenshot(shot)
    assert shot.stat().st_size > 10_000
    wanted = os.environ.get("RELAY_TEST_SCREENSHOTS")
    if wanted:
        await asyncio.to_thread(shutil.copy, shot, Path(wanted) / shot.name)
    return shot


@pytest.mark.parametrize("e2e_store", ["postgres"], indirect=True)
async def test_an_operator_and_a_viewer_in_a_real_browser(
    start_relay: RelayFactory, bss: Sandbox, amqp_url: str, e2e_store: str, tmp_path: Path
) -> None:
    relay = await start_relay(relay_rate_limits=json.dumps({BACKLOG_API: 1}))
    named = await traffic(relay)
    state = await bss.state()
    settings = Settings(amqp_url=amqp_url, store_url=e2e_store, **partner_env(state))
    async with start_console(settings, users(), port=0) as console:
        # A real backlog: one customer's commands at 1/s, which the replica publishes about
        # once a second, as every replica does.
        for _ in range(BACKLOG):
            await relay.publish(enable_auto_renew(ids.ACME))
        seen: list[str] = []
        async with open_browser(console.url, tmp_path / "alice") as alice:
            await operator_session(alice, console, relay, named, tmp_path, seen)
        async with open_browser(console.url, tmp_path / "bob") as bob:
            await viewer_session(bob, console, seen)
    secrets = [p["secret_key"] for p in state["partners"]] + [OPERATOR_TOKEN, VIEWER_TOKEN]
    for page in seen:
        for secret in secrets:
            assert secret not in page


async def operator_session(
    alice: Browser,
    console: RunningConsole,
    relay: Relay,
    named: dict[str, str],
    tmp_path: Path,
    seen: list[str],
) -> None:
    await sign_in(alice, OPERATOR_TOKEN)
    assert await alice.text("#who") == "alice (operator)"

    # The overview: the backlog, refreshed live without a reload as it drains.
    await alice.wait(lambda d: d.find_element(By.ID, "quota-updated").get_attribute("data-live"))
    await alice.wait_for_text("#quota-rows tr.waiting", f"{BACKLOG_API} customer {ids.ACME}")
    first = await backlog_waiting(alice)
    assert 0 < first <= BACKLOG
    assert await alice.text("#dead-letter-count") == "5 in bss.commands.dlq"
    await alice.script("window.stillHere = true;")

    for _ in range(40):  # 1/s: a few seconds for the count to fall
        if 0 <= await backlog_waiting(alice) < first:
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError(f"the overview still shows {first} waiting")
    assert await alice.script("return window.stillHere === true;")  # no full reload

    # Steering through the page's forms: a customer's limit, a pause.
    await alice.fill("#set-limit input[name=api]", "renewal_resources")
    await choose(alice, "#set-limit select[name=scope]", "customer")
    await alice.fill("#set-limit input[name=key]", ids.GLOBEX)
    await alice.fill("#set-limit input[name=rate]", "3")
    await alice.click("#set-limit button")
    await alice.wait_for_text("p.notice.ok", "quota_set")
    assert ids.GLOBEX in await alice.text("#limits")
    await alice.fill("#pause input[name=customer]", ids.INITECH)
    await alice.click("#pause button")
    await alice.wait_for_text("p.notice.ok", "pause")
    assert ids.INITECH in await alice.text("#pauses")
    steering = await console.console.deployment.audit()
    assert [(e.actor, e.action) for e in steering[:2]] == [
        ("alice", "pause"),
        ("alice", "quota_set"),
    ]
    await alice.open("/")
    await alice.wait(lambda d: d.find_element(By.ID, "quota-updated").get_attribute("data-live"))
    await keep_screenshot(alice, tmp_path)
    seen.append(await alice.source())

    # One command's whereabouts, found with the search form.
    await alice.fill("#find-command", named["done"])
    await alice.click(".find button")
    await alice.wait_for_text("#state", "finished")
    assert named["done"] in await alice.text("#command-id")
    assert "succeeded" in await alice.text("#event")
    seen.append(await alice.source())

    # The dead letters: hostile content is text, not markup.
    await alice.open("/dead-letters")
    assert len(await alice.texts("#dead-letters tbody tr")) == 5
    assert HOSTILE_ID in await alice.text("#dead-letters")
    assert await alice.script("return document.querySelectorAll('script, img').length;") == 0
    seen.append(await alice.source())

    # A dry run moves nothing and says what a replay would do.
    await select(alice, named["conflict"], named["schema"], named["late"])
    await alice.click("#dry-run")
    await alice.wait_for_text("#replay-results", "would_")
    assert await results(alice) == {
        named["conflict"]: "would_reannounce",
        named["schema"]: "would_replay",
        named["late"]: "would_replay",
    }
    assert "would be rejected again: RELAY.DEADLINE_PASSED" in await alice.text("#replay-results")
    assert len(await relay.dead_letters()) == 5

    # The replay: the finished command is only re-announced, and the service does so.
    before = len(relay.events.by_command[named["conflict"]])
    await select(alice, named["conflict"], named["schema"])
    await alice.click("#replay")
    await alice.wait_for_text("#replay-results", "replayed")
    assert await results(alice) == {named["conflict"]: "reannounced", named["schema"]: "replayed"}
    again = await relay.events.wait_for(named["conflict"], count=before + 1, within=30)
    assert again[-1]["duplicate"] is True
    seen.append(await alice.source())

    # ... and it is in the audit with alice as the actor.
    await alice.open(f"/audit?command_id={named['conflict']}")
    audit = await alice.texts("table.audit tbody tr")
    assert any("alice" in row and "replay" in row and "reannounced" in row for row in audit)
    seen.append(await alice.source())


async def viewer_session(bob: Browser, console: RunningConsole, seen: list[str]) -> None:
    await sign_in(bob, VIEWER_TOKEN)
    assert await bob.text("#who") == "bob (viewer)"
    await bob.fill("#pause input[name=customer]", ids.ACME)
    await bob.click("#pause button")
    await bob.wait_for_text("#error-message", "a viewer may not act")
    assert "403" in await bob.text("h1")
    pauses = await console.console.deployment.pauses()
    assert [p.customer for p in pauses] == [ids.INITECH]  # alice's; bob's was refused
    seen.append(await bob.source())
