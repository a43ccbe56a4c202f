"""Every verb of ``bss-relay`` answers ``--help``; serve refuses a bad configuration clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

VERBS = ["serve", "sandbox", "demo", "replay", "bench", "asyncapi", "audit", "console"]


def bss_relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_top_level_help_lists_every_verb() -> None:
    result = bss_relay("--help")
    assert result.returncode == 0
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb: str) -> None:
    result = bss_relay(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: bss-relay {verb}")


def test_serve_reports_an_invalid_configuration() -> None:
    env = {**os.environ, "BSS_PARTNER_ID": "p-only", "RELAY_PREFETCH": "0"}
    env.pop("BSS_ACCESS_KEY", None)
    result = bss_relay("serve", env=env)
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr


def test_tune_gc_raises_the_thresholds_and_freezes_what_start_up_made() -> None:
    # In a child: the collector's settings are process-wide.
    code = (
        "import gc; from service.lifecycle import GC_THRESHOLDS, tune_gc; "
        "assert gc.get_freeze_count() == 0; tune_gc(); "
        "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold(); "
        "assert gc.get_threshold()[0] > 700; "
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
