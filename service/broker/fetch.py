"""``basic.get`` that honours cancellation.

aiormq awaits the broker's answer through ``asyncio.wait_for``, which on Python 3.11 can
return a result, or raise a channel error, and drop a cancellation that arrived meanwhile: a
task cancelled during ``queue.get()`` goes on as if nothing happened, and whoever awaits it
(a shutdown, a test's teardown) waits for ever. Every ``basic.get`` of the service goes
through :func:`get_one`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

__all__ = ["cancel_pending", "get_one"]


def cancel_pending() -> bool:
    """Whether the running task was asked to stop (and the request may have been dropped)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def get_one(
    queue: AbstractQueue, *, hold: Callable[[AbstractIncomingMessage], None]
) -> AbstractIncomingMessage | None:
    """One message, unacknowledged, or None when the queue is empty. A cancellation that
    arrived during the call is raised here, also when the call ended in a channel error; a
    message got meanwhile goes to ``hold`` first (its owner gives it back)."""
    try:
        message = await queue.get(no_ack=False, fail=False)
    except Exception:
        if cancel_pending():
            raise asyncio.CancelledError from None
        raise
    if cancel_pending():
        if message is not None:
            hold(message)
        raise asyncio.CancelledError
    return message
