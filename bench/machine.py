"""What the benchmark ran on (machine and code), for the header of its table."""

from __future__ import annotations

import asyncio
import os
import platform
from pathlib import Path

from bench.processes import rabbitmqctl

__all__ = ["describe_machine"]

SOURCE_TREE = Path(__file__).resolve().parents[1]  # the checkout (bench/ is at its root)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


async def _rabbitmq() -> str:
    try:
        return (await rabbitmqctl("version")).strip().splitlines()[-1]
    except (OSError, RuntimeError):
        return "unknown"


async def _output(*argv: str, cwd: Path) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return ""
    out, _ = await proc.communicate()
    return out.decode().strip() if proc.returncode == 0 else ""


async def _revision() -> str:
    """The commit measured, and whether the working tree differed from it."""
    tree = SOURCE_TREE
    commit = await _output("git", "rev-parse", "--short", "HEAD", cwd=tree)
    if not commit:
        return "unknown (not a git checkout)"
    changed = await _output("git", "status", "--porcelain", "--untracked-files=no", cwd=tree)
    dirty = len(changed.splitlines())
    return commit + (f" + uncommitted changes in {dirty} files" if dirty else "")


async def describe_machine() -> dict[str, str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPU": f"{cores} x {_cpu_model()} (nproc {cores})",
        "memory": _memory(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "RabbitMQ": await _rabbitmq(),
        "load average at start": load,
        "code": await _revision(),
    }
