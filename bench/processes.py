"""What a benchmark runs besides itself, each an async context manager that cleans up.

* ``vhost`` — a fresh RabbitMQ vhost (``rabbitmqctl``), deleted on exit with all its queues;
* ``Child`` — one subprocess with its output in a log file, stopped with SIGTERM then SIGKILL;
* ``sandbox_process`` — ``bss-relay sandbox --port 0 --data FILE``, its URL read from its log;
* ``service_process`` — ``bss-relay serve`` with the environment a scenario gives it;
* ``baseline_process`` — ``python -m bench.baseline`` with the same environment.

Children run in their own session (a Ctrl-C in the terminal reaches only the benchmark, which
then stops them in order) and get SIGTERM if the benchmark dies without cleaning up.
``/proc/<pid>`` readers give peak RSS (``VmHWM``) and CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "Child",
    "ProcessFailed",
    "baseline_process",
    "clean_environment",
    "cpu_seconds",
    "memory_kib",
    "other_checkout",
    "rabbitmqctl",
    "sandbox_process",
    "service_process",
    "vhost",
]

STOP_GRACE_S = 15.0  # after SIGTERM, before SIGKILL
SANDBOX_START_S = 120.0  # loading a 100,000-customer data set takes a while on a busy box
POLL_S = 0.1
SANDBOX_NICE = -10  # the sandbox's scheduling priority (see sandbox_process)
TRACE_DIR = os.environ.get("BSS_RELAY_BENCH_TRACE_DIR", "")  # see bench.traced
_PR_SET_PDEATHSIG = 1
_LISTENING = re.compile(r"listening on (http://\S+)")
# Settings read these (case-insensitively): the caller's own must not leak into a scenario.
_SETTINGS_PREFIXES = ("relay_", "bss_", "iam_")
_SETTINGS_NAMES = frozenset({"amqp_url", "store_url"})


class ProcessFailed(RuntimeError):
    """A child exited or never became ready; the message carries the tail of its log."""


async def rabbitmqctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ProcessFailed(f"rabbitmqctl {' '.join(args)} failed: {err.decode().strip()}")
    return out.decode()


@asynccontextmanager
async def vhost(base_url: str, name: str) -> AsyncIterator[str]:
    """Create vhost ``name`` for the user of ``base_url``; yield the AMQP URL of it."""
    parts = urlsplit(base_url)
    user = parts.username or "guest"
    await rabbitmqctl("add_vhost", name)
    try:
        await rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    finally:
        await asyncio.shield(rabbitmqctl("delete_vhost", name))


CHECKOUT = str(Path(__file__).resolve().parent.parent)


def clean_environment(extra: Mapping[str, str], *, checkout: str = CHECKOUT) -> dict[str, str]:
    """This process's environment without any service setting, plus ``extra``; imports find
    ``checkout`` first (this one, or another one's for ``--compare-with``)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith(_SETTINGS_PREFIXES) and key.lower() not in _SETTINGS_NAMES
    }
    env.update(extra)
    # The harness is not installed (it ships in neither the wheel nor the image): children
    # that import it (the baseline loop) find it in this checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, env.get("PYTHONPATH")]))
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark process dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failed(self, why: str) -> ProcessFailed:
        return ProcessFailed(f"{self.name} {why}; last lines of {self.log}:\n{self.tail()}")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if not self.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def child(
    name: str, argv: list[str], *, env: Mapping[str, str], log: Path
) -> AsyncIterator[Child]:
    """Run ``argv``; on exit (also on cancellation) stop it and wait for it."""
    with log.open("wb") as out:  # a fresh log: the sandbox's first line is how it is found
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    running = Child(name, process, log)
    try:
        yield running
    finally:
        await asyncio.shield(running.stop())


def relay_command(*args: str) -> list[str]:
    """``bss-relay ARGS`` run by this interpreter (independent of PATH)."""
    return [sys.executable, "-m", "service.cli", *args]


@asynccontextmanager
async def sandbox_process(
    data: Path | None, *, log: Path, log_size: int
) -> AsyncIterator[tuple[Child, str]]:
    """``bss-relay sandbox`` on a free port (on ``data``, or its demo data set when None);
    yields the child and its URL once it listens.

    The sandbox stands in for a remote gateway, which does not share the relay's cores: it
    runs at a raised scheduling priority where allowed (``SANDBOX_NICE``, as root), so that
    the arrival instants it logs and throttles by are those of the requests, not of the moment
    a loaded 2-core machine found a core for it (seen: 20-100 ms late at load average 2)."""
    argv = relay_command("sandbox", "--port", "0", "--log-size", str(log_size))
    if data is not None:
        argv += ["--data", str(data)]
    async with child("sandbox", argv, env=clean_environment({}), log=log) as sandbox:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, sandbox.pid, SANDBOX_NICE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SANDBOX_START_S
        while True:
            found = _LISTENING.search(sandbox.tail(5))
            if found:
                break
            if not sandbox.alive:
                raise sandbox.failed("exited at start")
            if loop.time() > deadline:
                raise sandbox.failed(f"did not listen within {SANDBOX_START_S:g} s")
            await asyncio.sleep(POLL_S)
        yield sandbox, found.group(1)


def other_checkout(path: Path) -> Path:
    """``path``'s own ``bss-relay`` (its virtualenv's), for ``--compare-with``; raises
    ``ValueError`` naming what is missing."""
    program = path / ".venv" / "bin" / "bss-relay"
    if not os.access(program, os.X_OK):
        raise ValueError(f"{program} is not there: run `make .venv/.installed` in {path}")
    return program


@asynccontextmanager
async def service_process(
    env: Mapping[str, str],
    *,
    log: Path,
    name: str = "service",
    other: Path | None = None,
    presence: bool = True,
) -> AsyncIterator[Child]:
    """``bss-relay serve`` with exactly the settings in ``env`` (under ``bench.traced``, which
    reports its memory on SIGUSR1, when ``BSS_RELAY_BENCH_TRACE_DIR`` is set); with ``other``
    (a checkout), that checkout's own ``bss-relay`` in its own virtualenv, importing its own
    code (an absolute path: the child runs elsewhere); ``presence=False``: through
    ``bench.quiet_serve``, which publishes the replica's presence once, at start."""
    argv, environment = relay_command("serve"), clean_environment(env)
    if other is not None:
        argv = [str(other_checkout(other)), "serve"]
        environment = clean_environment(env, checkout=str(other))
    elif not presence:
        argv = [sys.executable, "-m", "bench.quiet_serve"]
    elif TRACE_DIR:
        extra = ["--tracemalloc"] if os.environ.get("BSS_RELAY_BENCH_TRACEMALLOC") else []
        argv = [sys.executable, "-m", "bench.traced", f"{TRACE_DIR}/{log.stem}", *extra, "serve"]
    async with child(name, argv, env=environment, log=log) as proc:
        yield proc


@asynccontextmanager
async def baseline_process(
    env: Mapping[str, str], *, queue: str, log: Path
) -> AsyncIterator[Child]:
    """The baseline loop (``bench.baseline``) on ``queue``, same settings as ours."""
    argv = [sys.executable, "-m", "bench.baseline", "--queue", queue]
    async with child("baseline", argv, env=clean_environment(env), log=log) as proc:
        yield proc


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a live process, in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (NaN once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
