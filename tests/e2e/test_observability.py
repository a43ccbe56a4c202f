"""The dashboard, the alert rules and the README name only metrics a running service exposes.

The service runs with its metrics port, real commands go through the sandbox, and its real
``/metrics`` is scraped: every ``bss_relay_*`` name that deploy/grafana-dashboard.json,
deploy/prometheus-rules.yaml or README.md uses must be in it (a histogram as its
``_bucket``/``_sum``/``_count`` series, a counter as ``_total``), and the metrics that the
traffic must have moved carry real observations.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RelayFactory, Sandbox, new_id
from tests.sandbox import demo_ids as ids

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bbss_relay_[a-z0-9_]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def _exprs(node: Any) -> Iterator[str]:
    """Every PromQL expression in a dashboard or rules document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def used_names() -> dict[str, set[str]]:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())
    readme = (ROOT / "README.md").read_text()
    metrics_section = readme.split("### Metrics", 1)[1].split("\n#", 1)[0]
    return {
        "deploy/grafana-dashboard.json": {n for e in _exprs(dashboard) for n in NAME.findall(e)},
        "deploy/prometheus-rules.yaml": {n for e in _exprs(rules) for n in NAME.findall(e)},
        "README.md": set(NAME.findall(metrics_section)),
    }


def exposed(text: str) -> tuple[set[str], set[str], dict[str, float]]:
    """(every series name the families declare, the histograms' family names,
    {series name: sum of its sample values})."""
    names: set[str] = set()
    histograms: set[str] = set()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        if family.type == "histogram":
            histograms.add(family.name)
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return names, histograms, totals


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_deploy_files_use_metrics_and_both_sources_are_named() -> None:
    used = used_names()
    assert used["deploy/grafana-dashboard.json"]
    assert used["deploy/prometheus-rules.yaml"]
    rules = (ROOT / "deploy" / "prometheus-rules.yaml").read_text()
    alerts = {r["alert"] for g in yaml.safe_load(rules)["groups"] for r in g["rules"]}
    assert {
        "BssRelayThrottled",
        "BssRelayUnknownOutcome",
        "BssRelayDeadLettersGrowing",
        "BssRelayOldestUnsettledTooOld",
        "BssRelayNoReplicaHealthy",
        "BssRelayNoConsumerOnWorkQueue",
        "BssRelayApiErrors",
        "BssRelayStoreErrors",
    } <= alerts
    assert 'rabbitmq_queue_messages_ready{queue="bss.commands.dlq"}' in rules


async def test_every_metric_used_exists_in_a_running_service(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    port = free_port()
    relay = await start_relay(relay_metrics_port=port)
    commands: list[dict[str, Any]] = [
        {
            "command_id": new_id("renew"),
            "type": "renew",
            "payload": {
                "customer_id": ids.ACME,
                "resource_ids": ["acme-ecs-01"],
                "period_type": "month",
                "period_num": 1,
            },
        },
        {
            "command_id": new_id("auto"),
            "type": "set_auto_renew",
            "payload": {"customer_id": ids.ACME, "resource_id": "acme-eip-01", "enabled": True},
        },
        {
            "command_id": new_id("coupon"),
            "type": "issue_coupon",
            "payload": {
                "quota_id": ids.QUOTA_MAIN,
                "customer_ids": [ids.GLOBEX],
                "face_value": "1.00",
            },
        },
    ]
    for command in commands:
        await relay.publish(command)
    for command in commands:
        [event] = await relay.events.wait_for(command["command_id"])
        assert event["outcome"] == "succeeded", event

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    names, histograms, totals = exposed(text)

    for source, used in used_names().items():
        # PromQL must name a histogram's series; the README names the histogram itself.
        missing = sorted(used - names - (histograms if source == "README.md" else set()))
        assert not missing, f"{source} uses metrics the service does not expose: {missing}"
    # The traffic above must have produced real observations in these.
    for series in (
        "bss_relay_commands_total",
        "bss_relay_api_requests_total",
        "bss_relay_api_request_duration_seconds_count",
        "bss_relay_api_request_duration_seconds_bucket",
        "bss_relay_api_request_duration_seconds_sum",
        "bss_relay_quota_wait_seconds_count",
        "bss_relay_healthy",
    ):
        assert totals.get(series, 0) > 0, f"{series} has no observation after traffic"
    # One renewal: the IAM call and the renewal itself, each timed with its status.
    for api, status in (
        ("create_temporary_access_key_by_agency", "201"),
        ("renewal_resources", "200"),
    ):
        series = f'bss_relay_api_request_duration_seconds_count{{api="{api}",status="{status}"}}'
        assert f"{series} 1.0" in text
    await relay.stop()
