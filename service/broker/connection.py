"""The broker connection: one robust connection to whichever node of ``AMQP_URL`` answers.

``AMQP_URL`` may name several nodes of one cluster, comma-separated, each a full URL with its
own credentials and vhost::

    amqp://u:p@node1:5672/vh,amqp://u:p@node2:5672/vh,amqp://u:p@node3:5672/vh

:class:`ClusterConnection` is aio-pika's ``RobustConnection`` with one change: each connection
attempt goes through the nodes in turn, starting after the node last used, until one answers.
Everything else is aio-pika's: after a reconnect the robust channels are reopened (publisher
confirms included), the declared exchanges, queues and bindings restored, the consumers
re-attached and ``reconnect_callbacks`` called. Only when every node refused does aio-pika wait
``reconnect_interval`` before the next round; the first connect fails fast instead.

aio-pika has no public hook for the address of an attempt: ``RobustConnection`` calls
``Connection.connect(self)``, which reads ``self.url``. So the attempt itself
(``RobustConnection.__connect_transport``, reached through its mangled name) is wrapped to set
``self.url`` to each node in turn. :data:`_ATTEMPT` is looked up at import, so an aio-pika
release that renames it fails at start (and in the unit tests), never silently at failover.

Channels are restored in the order they were opened (aio-pika keeps them in a ``WeakSet``, in
no order): the runtime opens its publishing channel before its consuming one, so after a
failover no redelivered command reaches the service before the channel it publishes its event
on is back. Seen on the cluster: restored the other way round, a redelivery arrived first, its
publish failed on the closed channel, and the message stayed unacknowledged on the live one.

A password never reaches a log: :func:`mask_url` masks every node's, aio-pika masks the one
it prints.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import aio_pika
import structlog
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

__all__ = [
    "ClusterConnection",
    "connect_broker",
    "connect_once",
    "mask_url",
    "open_broker",
    "parse_urls",
]

log = structlog.get_logger(__name__)

SCHEMES = ("amqp", "amqps")
MASK = "******"
# Seconds to wait for one node to accept a connection before trying the next.
DEFAULT_NODE_TIMEOUT_S = 5.0
# Seconds between rounds once every node refused (aio-pika's reconnect_interval).
DEFAULT_RETRY_INTERVAL_S = 1.0

# getattr: a private name of aio-pika's, looked up once so that a rename fails at import.
_ATTEMPT: Callable[[RobustConnection], Awaitable[None]] = getattr(  # noqa: B009
    RobustConnection, "_RobustConnection__connect_transport"
)
_CHANNELS = "_RobustConnection__channels"
_USERINFO = re.compile(r"^(?P<scheme>[^:/]*://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def parse_urls(amqp_url: str) -> list[URL]:
    """The nodes named in ``AMQP_URL``, in order; each keeps its own vhost.

    Raises ``ValueError`` (without echoing a password) when an entry is not an AMQP URL.
    """
    nodes: list[URL] = []
    for index, entry in enumerate(amqp_url.split(","), start=1):
        text = entry.strip()
        try:
            url = URL(text)
        except ValueError as exc:
            raise ValueError(f"AMQP_URL entry {index} is not a URL: {mask_url(text)}") from exc
        if url.scheme not in SCHEMES or not url.host:
            raise ValueError(
                f"AMQP_URL entry {index} must be amqp://user:password@host:port/vhost, "
                f"got {mask_url(text)!r}"
            )
        nodes.append(url)
    return nodes


def mask_url(amqp_url: str) -> str:
    """``AMQP_URL`` fit for a log: every node's password replaced, whatever else the text is."""
    return ",".join(
        _USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", entry.strip())
        for entry in amqp_url.split(",")
    )


T = TypeVar("T")


class OpeningOrder(Generic[T]):
    """A weak set that iterates in the order items were added (what ``RobustConnection``
    needs of its channel set: ``add``, iteration, ``len``)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[T]] = {}

    def add(self, item: T) -> None:
        key = id(item)
        known = self._refs.get(key)
        if known is not None and known() is item:
            return

        def forget(_: weakref.ref[T]) -> None:
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(item, forget)

    def __iter__(self) -> Iterator[T]:
        return iter([item for ref in list(self._refs.values()) if (item := ref()) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class ClusterConnection(RobustConnection):
    """A robust connection that reconnects to the next node of a cluster that answers."""

    def __init__(self, nodes: Sequence[URL], **kwargs: Any) -> None:
        if not nodes:
            raise ValueError("no broker node given")
        self.nodes: tuple[URL, ...] = tuple(nodes)
        self._current = 0  # index of the node connected to, or last tried
        self._attempts = 0
        super().__init__(self.nodes[0], **kwargs)
        if not hasattr(self, _CHANNELS):
            raise RuntimeError("aio-pika's RobustConnection changed: no channel set to order")
        setattr(self, _CHANNELS, OpeningOrder())  # restore channels in the order opened

    @property
    def node(self) -> str:
        """The node connected to (or last tried), password masked."""
        return str(self)

    def _order(self) -> list[int]:
        """Node indexes for one attempt: the first connect starts at the first node; a
        reconnect starts after the node it lost (which may be the one that is down)."""
        start = 0 if self._attempts == 0 else self._current + 1
        return [(start + i) % len(self.nodes) for i in range(len(self.nodes))]

    async def _RobustConnection__connect_transport(self) -> None:
        last: BaseException | None = None
        for index in self._order():
            self._current = index
            self.url = self.nodes[index]
            try:
                await _ATTEMPT(self)
            except CONNECTION_EXCEPTIONS as exc:
                log.warning("broker_node_unavailable", node=str(self), error=repr(exc))
                last = exc
                continue
            finally:
                self._attempts += 1
            log.info("broker_connected", node=str(self))
            return
        assert last is not None
        raise last


async def connect_broker(
    amqp_url: str,
    *,
    node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S,
    retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
) -> ClusterConnection:
    """Connect to the first node of ``amqp_url`` that answers; raise if none does.

    The caller closes the connection (``open_broker`` does it for you)."""
    connection = ClusterConnection(parse_urls(amqp_url), reconnect_interval=retry_interval_s)
    try:
        await connection.connect(timeout=node_timeout_s)
    except BaseException:
        await connection.close()
        raise
    return connection


@asynccontextmanager
async def open_broker(
    amqp_url: str,
    *,
    node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S,
    retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
) -> AsyncIterator[ClusterConnection]:
    """``connect_broker`` as an async context manager that closes the connection on exit."""
    connection = await connect_broker(
        amqp_url, node_timeout_s=node_timeout_s, retry_interval_s=retry_interval_s
    )
    try:
        yield connection
    finally:
        await connection.close()


async def connect_once(
    amqp_url: str, *, node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S
) -> AbstractConnection:
    """A plain (not robust) connection to the first node of ``amqp_url`` that answers, for
    tools that would rather stop than carry on over a reconnect (``bss-relay replay``). Nodes
    that do not answer are passed over silently (a tool's stdout may be JSON lines); the last
    error is raised if none answers."""
    last: BaseException | None = None
    for node in parse_urls(amqp_url):
        try:
            return await aio_pika.connect(node, timeout=node_timeout_s)
        except CONNECTION_EXCEPTIONS as exc:
            last = exc
    assert last is not None
    raise last
