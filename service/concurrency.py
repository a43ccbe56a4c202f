"""One ``asyncio.Lock`` per key, existing only while someone holds or waits for it.

Used wherever work on one key must run one at a time in this process (a customer's renewals,
a customer's credential fetch) while the number of keys seen is unbounded: memory follows the
keys in use now, not every key ever seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

__all__ = ["KeyedLock"]

K = TypeVar("K", bound=Hashable)


class KeyedLock(Generic[K]):
    def __init__(self) -> None:
        # key -> (lock, holders and waiters); an entry is deleted when its count drops to 0
        self._entries: dict[K, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._entries.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._entries[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._entries[key]
            if users == 1:
                del self._entries[key]
            else:
                self._entries[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._entries)
