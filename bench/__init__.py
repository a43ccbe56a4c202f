"""``bss-relay bench``: the service, the broker and the sandbox, measured side by side.

* ``cli`` — the ``bench`` verb; ``runner`` — one run: vhost, sandbox, scenarios, report;
* ``stage`` — what scenarios run on (driver, sandbox, service and baseline starters, sizes);
* ``processes`` — the subprocesses and the vhost, each cleaned up on exit; ``/proc`` readers;
* ``driver`` — publishing commands, timestamping events, the sandbox's inspection routes;
* ``dataset`` — a generated sandbox data set of N customers, and the benchmark's command;
* ``baseline`` — the minimal relay loop the service is compared with;
* scenarios: ``quota`` (hot-key, many-keys, fair-share), ``latency`` (light-key,
  light-load), ``overhead``, ``memory``;
* ``measures`` (rates, windows, percentiles, shares) and ``report`` (the table), both pure.
"""

from bench.cli import register_cli

__all__ = ["register_cli"]
