"""What commands leave behind: a debugging run, not a scenario (``python -m bench.leaks``).

The service (``service.runtime.start``, what ``bss-relay serve`` runs) and the sandbox run in
this process, on a fresh vhost, limits lifted, with the ``soak`` scenario's mix of commands.
After a warm-up round, each further round of ``--per-round`` commands is followed by:

* the objects only the cyclic collector could free (``gc.DEBUG_SAVEALL``, then
  ``gc.collect()``): counts by type, per command. A command must leave nothing there: what is
  freed only by the collector piles up between its rare full collections;
* what is still allocated after a full collection and was not before the round
  (``tracemalloc``, grouped by line, ``--frames`` deep): memory the round really kept.

The sandbox shares the process, so some lines are its own (``service/sandbox``): it keeps a
request log, orders and coupons by design.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import tracemalloc
import types
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.dataset import generate, mixed_command
from bench.driver import Driver, driver
from bench.processes import vhost
from service.runtime import start
from service.sandbox.server import SandboxServer
from service.settings import Settings
from service.telemetry.logging import configure_logging

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
OUR_MODULES = ("service.", "handlers.", "schemas.")
NOT_OURS = ("service/sandbox/", "aiohttp/web_", os.path.basename(__file__))
# Errors and lost answers, so that retries and reconciliation run too.
FAULTS = {
    "seed": 7,
    "rules": [
        {
            "kind": "error",
            "rate": 0.02,
            "operations": ["renewal_resources", "auto_renewal_resources"],
        },
        {"kind": "drop_after_apply", "rate": 0.02, "operations": ["create_partner_coupons"]},
        {"kind": "drop_after_apply", "rate": 0.02, "operations": ["renewal_resources"]},
    ],
}


async def _round(drv: Driver, data_round: list[tuple[str, bytes]], timeout_s: float) -> int:
    batch = drv.expect(cid for cid, _ in data_round)
    await drv.publish_many(data_round)
    if not await batch.wait(timeout_s):
        raise TimeoutError(f"{len(batch.arrived)} of {len(data_round)} events")
    drv.forget(batch)
    return batch.failed()


def _name(thing: object) -> str:
    kind = f"{type(thing).__module__}.{type(thing).__qualname__}"
    if isinstance(thing, types.FrameType):  # whose frame: what a traceback kept alive
        code = thing.f_code
        return f"{kind} {os.path.relpath(code.co_filename)}:{code.co_name}"
    if isinstance(thing, types.CoroutineType):
        return f"{kind} {thing.cr_code.co_qualname}"
    return kind


def _cyclic_garbage() -> Counter[str]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    counts = Counter(_name(o) for o in gc.garbage)
    size = sum(sys.getsizeof(o) for o in gc.garbage)
    print(f"cyclic garbage: {len(gc.garbage)} objects, {size / 1024:.1f} KiB (shallow)")
    gc.garbage.clear()
    gc.set_debug(0)
    gc.collect()  # what the list held is unreachable again: free it for good
    return counts


def _where(trace: tracemalloc.Traceback) -> str:
    return " <- ".join(f"{os.path.relpath(f.filename)}:{f.lineno}" for f in trace)


def _report(
    n: int,
    per: int,
    *,
    failed: int,
    garbage: Counter[str],
    before: tracemalloc.Snapshot,
    after: tracemalloc.Snapshot,
    top: int,
) -> None:
    print(f"\n== round {n}: {per} commands, {failed} not succeeded")
    for name, count in garbage.most_common(top):
        print(f"  {count / per:8.2f}/cmd  {count:7d}  {name}")
    ours_left = {n: c for n, c in garbage.items() if n.startswith(OUR_MODULES)}
    print(f"of which our own classes: {sum(ours_left.values())}")
    for name, count in sorted(ours_left.items(), key=lambda item: -item[1]):
        print(f"  {count / per:8.2f}/cmd  {count:7d}  {name}")
    # the in-process sandbox keeps orders, coupons and its log by design
    ours = [tracemalloc.Filter(False, f"*{p}*", all_frames=True) for p in NOT_OURS]
    stats = after.filter_traces(ours).compare_to(before.filter_traces(ours), "traceback")
    kept = sum(s.size_diff for s in stats)
    print(f"kept after a full collection: {kept / 1024:.1f} KiB")
    for stat in stats[:top]:
        if stat.size_diff > 0:
            where = _where(stat.traceback)
            print(f"  {stat.size_diff / 1024:8.1f} KiB {stat.count_diff:+6d}  {where}")


async def probe(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bss-relay-leaks-"))
    data = generate(args.customers, tmp / "data.json")
    store_url = args.store_url or f"sqlite:///{tmp}/store.db"
    async with (
        vhost(args.amqp_url, f"bss-relay-leaks-{uuid.uuid4().hex[:8]}") as amqp_url,
        driver(amqp_url) as drv,
        SandboxServer(
            data=data.path, limits={"*": 0}, log_size=1_000, faults=args.faults
        ) as sandbox,
    ):
        prefix = f"leaks-{uuid.uuid4().hex[:6]}"
        await drv.declare_service_queues(prefix)
        values: dict[str, Any] = {
            "amqp_url": amqp_url,
            "bss_endpoint": sandbox.url,
            "iam_endpoint": sandbox.url,
            "store_url": store_url,
            "relay_queue_prefix": prefix,
            "relay_rate_limits": {"*": 0},
            "relay_log_level": args.log_level,
            **{k.lower(): v for k, v in data.partner_env().items()},
        }
        settings = Settings(**values)
        configure_logging(settings.operations.log_level)
        serial = 0

        def commands(count: int) -> list[tuple[str, bytes]]:
            nonlocal serial
            out = []
            for _ in range(count):
                customer = data.customers[serial % len(data.customers)]
                cid = f"leak-{serial}"
                step = serial + serial // len(data.customers)  # every customer every type
                out.append((cid, mixed_command(cid, customer, step, data)))
                serial += 1
            return out

        async with start(settings):
            failed = await _round(drv, commands(args.warmup), 300)
            print(f"warm-up: {args.warmup} commands, {failed} not succeeded", file=sys.stderr)
            _cyclic_garbage()
            tracemalloc.start(args.frames)
            if args.idle:
                gc.disable()
                await asyncio.sleep(args.idle)
                print(f"\n== idle for {args.idle:g} s")
                idle = _cyclic_garbage()
                gc.enable()
                for name, count in idle.most_common(args.top):
                    print(f"  {count:7d}  {name}")
            for n in range(args.rounds):
                before = tracemalloc.take_snapshot()
                gc.disable()  # what only the collector frees stays for _cyclic_garbage to see
                failed = await _round(drv, commands(args.per_round), 300)
                await asyncio.sleep(1.0)  # let what finishes after the events finish
                garbage = _cyclic_garbage()
                gc.enable()
                after = tracemalloc.take_snapshot()
                _report(
                    n + 1,
                    args.per_round,
                    failed=failed,
                    garbage=garbage,
                    before=before,
                    after=after,
                    top=args.top,
                )
        await drv.delete_service_queues(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.leaks", description=__doc__)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--per-round", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--idle", type=float, default=0.0, help="seconds without commands")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--faults",
        type=json.loads,
        default=FAULTS,
        metavar="JSON",
        help="the sandbox's fault rules (default: a few 500s and answers lost after applying)",
    )
    parser.add_argument("--store-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    asyncio.run(probe(parser.parse_args()))


if __name__ == "__main__":
    main()
