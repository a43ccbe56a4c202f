"""How many signed requests per second the sandbox serves: ``python -m service.sandbox.loadcheck``.

Without ``--url`` it starts its own sandbox in a separate process (so client and server do not
share a CPU core) with every limit off. With ``--url`` it lifts the limits of that sandbox for the
run and puts the previous overrides back afterwards. Clients fire a mix of signed requests as fast
as answers come back: a partner-key resource query, and with customers' temporary keys a renewal
price inquiry and an auto-renew switch (a write). Faults are not touched; run it without any.

Besides the end-to-end rate (bounded by the client when client and sandbox share the CPUs), it
reports the sandbox process's CPU time per request and the rate one core can therefore serve.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from service.api.signer import Signer
from service.sandbox.signed_client import SignedClient

__all__ = ["main"]

PARTNER = ("HPUADEMOPARTNER00001", "DemoPartnerSecretKey00000000000000000001", "bss_partner_demo")
CUSTOMERS = {  # demo customers that granted the agency, with a renewable primary resource each
    "5195dd1a71a41647de36d9e21345bd0b": "acme-ecs-01",
    "bc86300f80b56f9ead58dfcb2ffa4237": "globex-ecs-01",
    "496a8e80facdb32725729fb5ecc44cd8": "initech-ecs-01",
}


Step = tuple[
    str, SignedClient, str, dict[str, str], dict[str, Any]
]  # label, client, op, params, body


def _plan(partner: SignedClient, customers: list[tuple[SignedClient, str, str]]) -> Iterator[Step]:
    """An endless cycle of the requests to send."""
    plan: list[Step] = []
    for client, customer_id, resource in customers:
        body = {"customer_id": customer_id, "limit": 10}
        plan.append(
            ("partner:list_resources", partner, "list_pay_per_use_customer_resources", {}, body)
        )
        renew = {"resource_ids": [resource], "period_type": 2, "period_num": 1}
        plan.append(("customer:renew_rate", client, "list_renew_rate_on_period", {}, renew))
        plan.append(
            ("customer:auto_renew", client, "auto_renewal_resources", {"resource_id": resource}, {})
        )
    return itertools.cycle(plan)


async def _worker(plan: Iterator[Step], deadline: float, counts: Counter[str]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        label, client, op, params, body = next(plan)
        answer = await client.op(op, params=params, body=body)
        counts[label if answer.status < 300 else f"{label}:{answer.status}"] += 1


async def _run_client(url: str, duration: float, concurrency: int) -> tuple[dict[str, int], float]:
    """Counts by kind, and the seconds they took (set-up excluded)."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        partner = SignedClient(http, url, Signer(PARTNER[0], PARTNER[1]))
        customers = [
            (await partner.assume(PARTNER[2], cid, duration_seconds=3600), cid, rid)
            for cid, rid in CUSTOMERS.items()
        ]
        plan = _plan(partner, customers)
        counts: Counter[str] = Counter()
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + duration
        await asyncio.gather(*(_worker(plan, deadline, counts) for _ in range(concurrency)))
        return dict(counts), time.monotonic() - started


def _client_process(url: str, duration: float, concurrency: int) -> tuple[dict[str, int], float]:
    return asyncio.run(_run_client(url, duration, concurrency))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux ``/proc``); None where unavailable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def _own_sandbox() -> AsyncIterator[tuple[str, int | None]]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.sandbox", "--port", str(port), "--limits", '{"*": null}',
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        await asyncio.wait_for(proc.stderr.readline(), 30)  # the "listening on" line
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def _unlimited(url: str) -> AsyncIterator[tuple[str, int | None]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/_sandbox/limits") as resp:
            previous = (await resp.json())["overrides"]
        async with http.put(f"{url}/_sandbox/limits", json={"*": None}) as resp:
            resp.raise_for_status()
        try:
            yield url, None
        finally:
            async with http.put(f"{url}/_sandbox/limits", json=previous) as resp:
                resp.raise_for_status()


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    target = _unlimited(args.url) if args.url else _own_sandbox()
    async with target as (url, pid):
        cpu_before = _cpu_seconds(pid)
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.processes) as pool:
            jobs = [
                loop.run_in_executor(
                    None, pool.apply, _client_process, (url, args.duration, args.concurrency)
                )
                for _ in range(args.processes)
            ]
            results = await asyncio.gather(*jobs)
        cpu_after = _cpu_seconds(pid)
    totals: Counter[str] = Counter()
    for counts, _ in results:
        totals.update(counts)
    rate = sum(sum(counts.values()) / seconds for counts, seconds in results)
    served = sum(totals.values())
    out: dict[str, Any] = {
        "requests": served,
        "seconds": round(max(seconds for _, seconds in results), 2),
        "per_second": round(rate),
        "by_kind": dict(sorted(totals.items())),
    }
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        # What one core of this machine could serve if the clients were elsewhere.
        busy = cpu_after - cpu_before
        out["server_cpu_seconds"] = round(busy, 2)
        out["server_cpu_us_per_request"] = round(busy / served * 1e6)
        out["server_capacity_per_core"] = round(served / busy)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.sandbox.loadcheck", description=__doc__
    )
    parser.add_argument("--url", help="a running sandbox (default: start one in a subprocess)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight per process"
    )
    parser.add_argument("--processes", type=int, default=1, help="client processes (default 1)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_measure(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
