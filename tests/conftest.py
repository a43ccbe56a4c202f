"""Fixtures and names shared by every suite that talks to the real servers.

The suite runs on several pytest-xdist workers (``make test``), each its own pytest session in
its own process, or serially (plain ``pytest``). Whatever a test creates on a shared server is
named by :func:`unique_name`: the prefix, the worker (``gw0``, ``gw1``, ..., ``main`` when
serial) and a random part, so workers and runs never meet and a leftover says who left it.

``amqp_url`` is a fresh vhost ``relay-test-<worker>-<hex>`` for the worker's whole session
(created with ``rabbitmqctl``, deleted at the end); ``vhosts`` makes more, one per call, for a
test that needs a vhost to itself (it closes every connection of its vhost, or declares the
fixed names with other arguments); ``fresh_vhost`` is the same as a context manager.

What cannot be named apart is grouped instead: tests marked ``xdist_group(NAME)`` all run on
one worker, one after the other (``--dist loadgroup``, set in pyproject). The groups:

* ``cluster``: the three-node cluster of ``scripts/rabbitmq-cluster`` (fixed node names, ports
  and data directory), started once for the group;
* ``bench``: ``bss-relay bench`` runs, which compare the broker's ``bss-relay-bench-*`` vhosts
  before and after;
* ``timing``: the tests that count requests per 1-s window or time a resumption against a
  bound, so that two of them never load the machine at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import structlog
from _pytest.nodeid import NodeId


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``timing`` and in no other group joins the ``timing`` group; then
    the ``xdist_group`` marks go into the node ids, as ``--dist loadgroup`` needs.

    xdist does the latter itself (``<nodeid>@<group>``, which its controller reads back), but
    3.8 does it by writing ``Item._nodeid``, which pytest 9.2 no longer reads (its ids are
    structured): the groups are silently dropped and a group's tests spread over the workers
    (xdist issue 1386). Where xdist's suffix is missing, this sets it the way pytest 9.2 keeps
    ids; where that does not take either, the run stops rather than run the groups apart.
    """
    for item in items:
        if item.get_closest_marker("timing") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("timing"))
    if not getattr(config.option, "loadgroup", False):  # set on workers under --dist loadgroup
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if not names:
            continue
        suffix = "@" + "_".join(sorted(names))
        if item.nodeid.endswith(suffix):
            continue  # xdist's own suffix took
        item._id = NodeId.parse(item.nodeid + suffix)
        if not item.nodeid.endswith(suffix):
            raise pytest.UsageError(f"cannot put {item.nodeid} in xdist group {suffix[1:]}")


def pytest_configure(config: pytest.Config) -> None:
    """The service in the test process logs from INFO up, as ``serve`` does by default (the
    subprocesses the tests start are given RELAY_LOG_LEVEL=INFO): unconfigured, structlog
    renders every debug line, which was about 40 % of a 5,000-command test's time."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))


@pytest.fixture(scope="session")
def _quiet_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lock file of this run: in the directory above the workers' own temporary ones (one
    per run, removed with pytest's old temporary directories)."""
    return tmp_path_factory.getbasetemp().parent / "quiet.lock"


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        yield fd
    finally:
        os.close(fd)  # releases any lock held on it


@pytest.fixture(autouse=True)
def _priority(request: pytest.FixtureRequest, _quiet_lock: Path) -> Iterator[None]:
    """Tests marked ``timing`` run at the worker's own scheduling priority, every other test
    (and what it starts) at ``nice`` +10: when a timing test needs the CPU it gets it first,
    as it would on a machine that runs nothing else, and the other workers take the rest.
    Going back from +10 needs privilege (root, as here and in CI); without it a worker stays
    where it is.

    ``nice`` does not reach processes in a session of their own (the cluster's nodes): a timing
    test holds the run's quiet lock shared, and starting the cluster holds it exclusively
    (:func:`quiet`), so the two never overlap (three nodes booting took the
    5,000-command pacing test from 9 s to 18 s, past its latency bound)."""
    if worker() == "main":
        yield  # not distributed: nothing else of this run competes
        return
    timing = request.node.get_closest_marker("timing") is not None
    wanted = _BASE_NICE if timing else _BASE_NICE + 10
    if os.getpriority(os.PRIO_PROCESS, 0) != wanted:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, wanted)
    if not timing:
        yield
        return
    with _opened(_quiet_lock) as fd:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield


_BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)

Quiet = Callable[[], contextlib.AbstractAsyncContextManager[None]]


@pytest.fixture(scope="session")
def quiet(_quiet_lock: Path) -> Quiet:
    """``async with quiet():`` holds off this run's timing tests (waiting for the one running
    to end) while a step that takes the whole machine runs outside the workers' ``nice``."""

    @contextlib.asynccontextmanager
    async def hold() -> AsyncIterator[None]:
        if worker() == "main":
            yield
            return
        with _opened(_quiet_lock) as fd:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield

    return hold


def worker() -> str:
    """This process's xdist worker id (``gw0``, ``gw1``, ...), ``main`` when not distributed:
    the value of xdist's ``worker_id`` fixture, for helpers that have no fixture request."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def unique_name(prefix: str, *, sep: str = "-", length: int = 12) -> str:
    """``<prefix><sep><worker><sep><random hex>``: a vhost, schema, queue prefix or user name
    that no other worker or run uses."""
    return sep.join((prefix, worker(), uuid.uuid4().hex[:length]))


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
    vhost = unique_name(prefix)
    await rabbitmqctl("add_vhost", vhost)
    try:
        await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        await rabbitmqctl("delete_vhost", vhost)


VhostFactory = Callable[[str], Awaitable[str]]


@pytest.fixture
async def vhosts() -> AsyncIterator[VhostFactory]:
    """``await vhosts(prefix)``: the AMQP URL of a new vhost, deleted after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(prefix: str) -> str:
            return await stack.enter_async_context(fresh_vhost(prefix))

        yield make


@pytest.fixture(scope="session")
async def amqp_url() -> AsyncIterator[str]:
    async with fresh_vhost("relay-test") as url:
        yield url
