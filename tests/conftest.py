"""Fixtures shared by every suite that talks to the real RabbitMQ.

``amqp_url`` is a fresh vhost ``relay-test-<uuid>`` for the whole test session (created with
``rabbitmqctl``, deleted at the end), so test runs never see each other's queues or messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest


async def rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out!r} {err!r}")


@contextlib.asynccontextmanager
async def fresh_vhost(prefix: str) -> AsyncIterator[str]:
    """A vhost of its own on the local broker, guest allowed everything; its AMQP URL."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    await rabbitmqctl("add_vhost", vhost)
    try:
        await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        await rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
async def amqp_url() -> AsyncIterator[str]:
    async with fresh_vhost("relay-test") as url:
        yield url
