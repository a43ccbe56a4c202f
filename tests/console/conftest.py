"""Console fixtures: the real console (``start_console``, the code ``bss-relay console`` runs)
over a real SQLite command store, the store-backed Deployment and the real broker, in a vhost
of this module's own with the service's topology declared; HTTP clients that speak to it with
a bearer token, or sign in through the page like a browser.

Every test starts with an empty ``bss.commands.dlq`` and a fresh store.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from pydantic import SecretStr

from service.broker.topology import COMMANDS_EXCHANGE, DLQ, Topology, declare
from service.ops.console import RunningConsole, Users, start_console
from service.ops.console.sessions import COOKIE
from service.ops.console.users import Role
from service.settings import Settings
from service.store.steering import BucketReport, Publication, WaitingEntry
from service.store.types import CommandStore
from tests.conftest import fresh_vhost
from tests.replay.conftest import put_dead_letter

OPERATOR_TOKEN = "op-token-7d0c5b2e9a41f3c6-alice"
VIEWER_TOKEN = "view-token-1b8e4f02c7d9a653-bob"
PARTNER_SECRET = "SK-partner-secret-0f9e8d7c6b5a4"
TOKENS: dict[str, tuple[Role, str]] = {
    "alice": ("operator", OPERATOR_TOKEN),
    "bob": ("viewer", VIEWER_TOKEN),
}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def users() -> Users:
    return Users.of({name: (role, sha256_hex(token)) for name, (role, token) in TOKENS.items()})


@pytest.fixture(scope="module")
async def console_amqp_url() -> AsyncIterator[str]:
    async with fresh_vhost("relay-console") as url:
        connection = await aio_pika.connect(url)
        async with connection:
            await declare(await connection.channel(), Topology(f"console-{uuid.uuid4().hex[:6]}"))
        yield url


@dataclass
class Broker:
    channel: AbstractChannel
    tap: AbstractQueue  # every copy published to bss.commands

    async def dead_letter(
        self,
        body: dict[str, Any] | bytes,
        *,
        message_id: str | None = None,
        reason: str = "RELAY.RETRIES_EXHAUSTED",
        reason_message: str | None = None,
        failed_at: datetime | None = None,
    ) -> None:
        """A dead letter with the headers ``Publisher.dead_letter`` writes."""
        await put_dead_letter(
            self.channel,
            body,
            message_id=message_id,
            reason=reason,
            reason_message=reason_message,
            attempts=3,
            failed_at=failed_at or datetime.now(UTC),
            routing_key=None,
        )

    async def dlq_count(self) -> int:
        queue = await self.channel.declare_queue(DLQ, passive=True)
        return queue.declaration_result.message_count or 0

    async def tapped(self) -> list[str | None]:
        seen: list[str | None] = []
        while (message := await self.tap.get(no_ack=True, fail=False)) is not None:
            seen.append(message.message_id)
        return seen


@pytest.fixture
async def broker(console_amqp_url: str) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(console_amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        dlq = await channel.declare_queue(DLQ, passive=True)
        await dlq.purge()
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(COMMANDS_EXCHANGE, routing_key="#")
        yield Broker(channel, tap)
        await dlq.purge()


def console_settings(amqp_url: str, store_url: str, **more: Any) -> Settings:
    return Settings(
        amqp_url=amqp_url,
        store_url=store_url,
        bss_partner_id="partner-1",
        bss_access_key="AK-partner-1",
        bss_secret_key=SecretStr(PARTNER_SECRET),
        **more,
    )


@pytest.fixture
async def running(
    console_amqp_url: str, broker: Broker, tmp_path: Path
) -> AsyncIterator[RunningConsole]:
    settings = console_settings(console_amqp_url, f"sqlite:///{tmp_path}/store.db")
    async with start_console(settings, users(), host="127.0.0.1", port=0) as console:
        yield console


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    cookies: list[str]  # Set-Cookie lines
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Client:
    """One HTTP client: with ``token`` every request carries ``Authorization: Bearer``; signed
    in (``sign_in``), it holds the session cookie like a browser and knows the page's
    anti-forgery token."""

    def __init__(self, url: str, http: aiohttp.ClientSession, token: str | None = None) -> None:
        self.url = url
        self.http = http
        self.token = token
        self.csrf = ""

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: dict[str, Any] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        async with self.http.request(
            method,
            self.url + path,
            json=json_body,
            data=form,
            headers=sent,
            allow_redirects=False,
        ) as response:
            return Answer(
                response.status,
                dict(response.headers),
                response.headers.getall("Set-Cookie", []),
                await response.text(),
            )

    async def get(self, path: str) -> Answer:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return await self.request("POST", path, json_body=body, **kwargs)

    async def sign_in(self, token: str) -> Answer:
        page = await self.get("/login")
        nonce = hidden(page.text, "csrf_token")
        answer = await self.request(
            "POST", "/login", form={"csrf_token": nonce, "token": token, "next": "/"}
        )
        if answer.status == 303:
            self.csrf = hidden((await self.get("/")).text, "csrf_token")
        return answer

    @property
    def session_id(self) -> str | None:
        for cookie in self.http.cookie_jar:
            if cookie.key == COOKIE:
                return cookie.value
        return None


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no hidden field {name!r} in the page"
    return found.group(1)


@pytest.fixture
async def clients(running: RunningConsole) -> AsyncIterator[dict[str, Client]]:
    """``anonymous``; ``alice``/``bob`` with bearer tokens; ``alice_page``/``bob_page`` signed
    in through the sign-in page (cookie + anti-forgery token)."""
    sessions: list[aiohttp.ClientSession] = []

    def http() -> aiohttp.ClientSession:
        # unsafe: the jar keeps cookies of an IP-address host (127.0.0.1) as a browser does
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        sessions.append(session)
        return session

    made = {
        "anonymous": Client(running.url, http()),
        "alice": Client(running.url, http(), OPERATOR_TOKEN),
        "bob": Client(running.url, http(), VIEWER_TOKEN),
        "alice_page": Client(running.url, http()),
        "bob_page": Client(running.url, http()),
    }
    assert (await made["alice_page"].sign_in(OPERATOR_TOKEN)).status == 303
    assert (await made["bob_page"].sign_in(VIEWER_TOKEN)).status == 303
    yield made
    for session in sessions:
        await session.close()


def command(command_id: str, *, customer: str = "c-1", kind: str = "renew") -> dict[str, Any]:
    """A command valid under today's schemas."""
    if kind == "issue_coupon":
        payload: dict[str, Any] = {
            "quota_id": "q-1",
            "customer_ids": [customer, "c-2"],
            "face_value": "5",
        }
    else:
        payload = {
            "customer_id": customer,
            "resource_ids": ["r-1"],
            "period_type": "month",
            "period_num": 1,
        }
    return {"command_id": command_id, "type": kind, "partner_id": "partner-1", "payload": payload}


async def finish(store: CommandStore, command_id: str, outcome: str = "succeeded") -> None:
    """A command the store holds as finished (its terminal event stored and published)."""
    await store.claim(command_id, "renew", owner="test", lease=timedelta(seconds=5))
    event = {"event_id": f"ev-{command_id}", "command_id": command_id, "outcome": outcome}
    await store.finish(command_id, owner="test", event=json.dumps(event).encode())
    await store.mark_published(command_id)


async def publish_backlog(store: CommandStore, *, customer: str, waiting: int) -> None:
    """What a replica publishes about a bucket with a backlog (as the pacing engine does about
    once a second): its report and the commands waiting for it."""
    now = datetime.now(UTC)
    entries = [
        WaitingEntry(
            command_id=f"wait-{customer}-{n}",
            state="waiting",
            api="renewal_resources",
            kind="customer",
            key=customer,
            priority="normal",
            since=now - timedelta(seconds=30 - n),
            expected_at=now + timedelta(seconds=n),
            until=now + timedelta(minutes=5),
        )
        for n in range(waiting)
    ]
    report = BucketReport(
        api="renewal_resources",
        kind="customer",
        key=customer,
        limit=10.0,
        rate=7.5,
        throttled_5m=2,
        used_at=now,
    )
    await store.steering.publish(
        Publication(
            owner="replica-test",
            egress="default",
            started_at=now,
            renew_until=now + timedelta(minutes=5),
            waiting=entries,
            reports=[report],
        )
    )
