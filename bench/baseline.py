"""The baseline loop: relaying a command with nothing but what cannot be avoided.

Per message: consume, one signed HTTP call to the API, publish the event (persistent, publisher
confirms), ack. Customer credentials come from IAM once per customer and are kept in a dict.
There is no validation, no command store, no idempotency, no limiter or scheduler, no retry.
It runs with the service's settings (``AMQP_URL``, ``BSS_ENDPOINT``, the partner,
``RELAY_PREFETCH``, ``RELAY_HTTP_CONNECTIONS``, timeouts) and the service's garbage-collector
tuning (``service.lifecycle.tune_gc``), in its own process as the service does, so "ours /
baseline" compares the service with the floor under the same conditions.

``python -m bench.baseline --queue NAME`` consumes ``set_auto_renew`` commands from
``NAME`` until SIGTERM. Any answer but 2xx is published as a ``failed`` event, so the benchmark
notices instead of hanging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from service.api.credentials import partner_signer
from service.api.operations import OPERATIONS, Operation
from service.api.signer import Signer
from service.broker.topology import EVENTS_EXCHANGE
from service.lifecycle import run_until_signalled, tune_gc
from service.settings import PartnerAccount, Settings

__all__ = ["BaselineLoop", "main"]

CALL = OPERATIONS["auto_renewal_resources"]
IAM = OPERATIONS["create_temporary_access_key_by_agency"]
ENABLE_BODY = b"{}"


class BaselineLoop:
    def __init__(
        self,
        *,
        http: aiohttp.ClientSession,
        events: AbstractExchange,
        settings: Settings,
        partner: PartnerAccount,
    ) -> None:
        self._http = http
        self._events = events
        self._settings = settings
        self._partner = partner
        self._partner_signer = partner_signer(partner)
        self._signers: dict[str, Signer] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    async def _send(
        self, op: Operation, signer: Signer, path: str, body: bytes, domain_id: str
    ) -> tuple[int, bytes]:
        base = self._settings.iam_endpoint if op.service == "iam" else self._settings.bss_endpoint
        base = base.rstrip("/")
        headers = {"Content-Type": "application/json", "X-Domain-Id": domain_id}
        signed = signer.sign(
            op.method, urlsplit(base).netloc, path, query="", headers=headers, body=body
        )
        async with self._http.request(op.method, base + path, headers=signed, data=body) as resp:
            return resp.status, await resp.read()

    async def _signer(self, customer_id: str) -> Signer:
        """The customer's temporary credentials, fetched from IAM the first time only."""
        lock = self._fetching.setdefault(customer_id, asyncio.Lock())
        async with lock:
            signer = self._signers.get(customer_id)
            if signer is None:
                body = json.dumps(
                    {
                        "auth": {
                            "identity": {
                                "methods": ["assume_role"],
                                "assume_role": {
                                    "agency_name": self._partner.agency_name,
                                    "domain_id": customer_id,
                                    "duration_seconds": self._settings.relay_credential_duration_s,
                                },
                            }
                        }
                    }
                ).encode()
                status, answer = await self._send(
                    IAM, self._partner_signer, IAM.path, body, self._partner.partner_id
                )
                if status != 201:
                    raise RuntimeError(f"IAM answered {status}: {answer[:200]!r}")
                credential = json.loads(answer)["credential"]
                signer = Signer(
                    credential["access"], credential["secret"], credential["securitytoken"]
                )
                self._signers[customer_id] = signer
        return signer

    async def handle(self, message: AbstractIncomingMessage) -> None:
        command: dict[str, Any] = json.loads(message.body)
        payload = command["payload"]
        customer = payload["customer_id"]
        signer = await self._signer(customer)
        path = CALL.render(resource_id=payload["resource_id"])
        status, _ = await self._send(CALL, signer, path, ENABLE_BODY, customer)
        outcome = "succeeded" if 200 <= status < 300 else "failed"
        event = {
            "event_id": f"evt-{uuid.uuid4().hex}",
            "command_id": command["command_id"],
            "type": command["type"],
            "outcome": outcome,
            "occurred_at": datetime.now(UTC).isoformat(),
            "attempts": 1,
            "duplicate": False,
            "partner_id": None,
            "customer_id": customer,
            "result": {"resource_id": payload["resource_id"], "enabled": True},
            "error": None if outcome == "succeeded" else {"http_status": status},
        }
        routing_key = f"{command['type']}.{outcome}"
        await self._events.publish(
            aio_pika.Message(
                json.dumps(event).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=event["event_id"],
                correlation_id=command["command_id"],
                type=routing_key,
            ),
            routing_key=routing_key,
        )
        await message.ack()


async def run_baseline(settings: Settings, *, queue: str, stop: asyncio.Event) -> None:
    partner = next(iter(settings.partners().values()))
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=settings.relay_http_timeout_s, sock_connect=settings.relay_connect_timeout_s
        ),
        connector=aiohttp.TCPConnector(limit=settings.relay_http_connections),
    )
    connection = await aio_pika.connect_robust(settings.amqp_url)
    async with session, connection:
        publish_channel = await connection.channel(publisher_confirms=True)
        events = await publish_channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=settings.relay_prefetch)
        work = await consume_channel.declare_queue(queue, durable=True)
        loop = BaselineLoop(http=session, events=events, settings=settings, partner=partner)
        async with asyncio.TaskGroup() as tasks:

            async def on_message(message: AbstractIncomingMessage) -> None:
                tasks.create_task(loop.handle(message))

            tag = await work.consume(on_message)
            tune_gc()  # the interpreter set up as the service's (`bss-relay serve`)
            await stop.wait()
            await work.cancel(tag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--queue", required=True, help="queue to consume commands from")
    args = parser.parse_args(argv)
    settings = Settings()
    return run_until_signalled(lambda stop: run_baseline(settings, queue=args.queue, stop=stop))


if __name__ == "__main__":
    raise SystemExit(main())
