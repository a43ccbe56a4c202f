"""Nothing of a command stays in memory once it is settled (issue 17, item 9).

Checked with the cyclic garbage collector off: what only it could free (a reference cycle
through the command's journal, call scope, renewal lock or handler context) would pile up
between its rare full collections in ``serve`` (``service.lifecycle.GC_THRESHOLDS``) -- the
RSS growth per command the soak bench measures. Reference counting alone must free it all.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest

from handlers.errors import ApiRefused, ApiUnavailable, OutcomeUnknown, RelayError
from handlers.ports import HandlerContext
from service.api.client import CallScope
from service.messages.delivery import Delivery
from service.messages.journal import StoreJournal
from service.store import open_store
from service.store.locks import Held, LocalLocks
from tests.unit.test_settlement import FakeMessage, RecordingPublisher, Rig, ScriptedApi, auto_renew

PER_COMMAND = (StoreJournal, CallScope, HandlerContext, Delivery, Held, FakeMessage)


def alive() -> dict[str, int]:
    counts = dict.fromkeys((kind.__name__ for kind in PER_COMMAND), 0)
    for thing in gc.get_objects():
        for kind in PER_COMMAND:
            if isinstance(thing, kind):
                counts[kind.__name__] += 1
    return {name: n for name, n in counts.items() if n}


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with open_store("sqlite://:memory:") as store:
        yield Rig(store, RecordingPublisher(), ScriptedApi())


ERRORS: dict[str, Callable[[], list[RelayError]]] = {
    "succeeded": list,
    "retried": lambda: [ApiUnavailable("CBC.0999", "busy")],  # through the broker
    "failed": lambda: [ApiRefused("CBC.0100", "bad parameter")],  # for good
    "unknown": lambda: [OutcomeUnknown("RELAY.CONNECTION", "reset")],  # not money-moving
}


@pytest.mark.parametrize("outcome", list(ERRORS))
async def test_a_settled_command_leaves_nothing_for_the_collector(rig: Rig, outcome: str) -> None:
    await rig.process(FakeMessage(auto_renew("warm-up")))  # caches, pools, first-use state
    with collector_off():
        before = alive()
        for n in range(20):
            rig.api.errors = ERRORS[outcome]()  # a new error each time, as the API's are
            await rig.process(FakeMessage(auto_renew(f"c-{n}")))
        assert alive() == before


async def test_a_renewal_lock_is_freed_when_its_holder_lets_go() -> None:
    locks = LocalLocks()
    async with locks.hold("warm-up"):
        pass
    with collector_off():
        for n in range(20):
            async with locks.hold(f"cust-{n}") as held:
                held.check()
        del held
        assert not alive().get("Held")
        assert len(locks) == 0
