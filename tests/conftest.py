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
* ``timing`` and ``timing-b``: the tests that count requests per 1-s window or time a
  resumption against a bound, in two lanes of one test at a time (``pytest.mark.timing`` joins
  the first, ``pytest.mark.timing("b")`` the second): at most two of them load the machine at
  once, each at full priority (:func:`_priority`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog
from _pytest.nodeid import NodeId


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``timing`` and in no other group joins its timing lane's group; then
    the ``xdist_group`` marks go into the node ids, as ``--dist loadgroup`` needs.

    xdist does the latter itself (``<nodeid>@<group>``, which its controller reads back), but
    3.8 does it by writing ``Item._nodeid``, which pytest 9.2 no longer reads (its ids are
    structured): the groups are silently dropped and a group's tests spread over the workers
    (xdist issue 1386). Where xdist's suffix is missing, this sets it the way pytest 9.2 keeps
    ids; where that does not take either, the run stops rather than run the groups apart.
    """
    for item in items:
        timing = item.get_closest_marker("timing")
        if timing and not item.get_closest_marker("xdist_group"):
            lane = "-".join(("timing", *timing.args))
            item.add_marker(pytest.mark.xdist_group(lane))
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


@pytest.fixture(autouse=True)
def _priority(request: pytest.FixtureRequest) -> None:
    """Tests marked ``timing`` run at the worker's own scheduling priority, every other test
    (and what it starts) at ``nice`` +10: when a timing test needs the CPU it gets it first,
    as it would on a machine that runs nothing else, and the other workers take the rest.
    Going back from +10 needs privilege (root, as here and in CI); without it a worker stays
    where it is. What a test starts inherits its priority: the cluster's nodes boot at +19
    (tests/e2e/test_cluster.py)."""
    if worker() == "main":
        return  # not distributed: nothing else of this run competes
    timing = request.node.get_closest_marker("timing") is not None
    wanted = _BASE_NICE if timing else _BASE_NICE + 10
    if os.getpriority(os.PRIO_PROCESS, 0) != wanted:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, wanted)


_BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)


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
