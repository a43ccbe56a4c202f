"""``bss-relay replay``: list dead letters, check them against today's schemas, replay them.

* ``letter`` — a dead letter as data (``DeadLetter``) and the ``Filter`` that picks them;
* ``scanner`` — one pass over ``bss.commands.dlq``: ``scan`` lists, ``replay`` dry-runs or moves
  (confirmed copy first, then the ack: a crash leaves a duplicate, never a loss);
* ``audited`` — the rules against a deployment: the command store says which commands are
  finished (only re-announced), the audit records who moved what;
* ``cli`` — the ``replay`` verb of ``bss-relay``.
"""

from service.ops.replay.audited import finished_in, record_replays
from service.ops.replay.cli import register_cli
from service.ops.replay.letter import REPLAY_COUNT, REPLAYED_AT, DeadLetter, Filter
from service.ops.replay.scanner import Action, Finished, Report, Result, replay, scan

__all__ = [
    "REPLAYED_AT",
    "REPLAY_COUNT",
    "Action",
    "DeadLetter",
    "Filter",
    "Finished",
    "Report",
    "Result",
    "finished_in",
    "record_replays",
    "register_cli",
    "replay",
    "scan",
]
