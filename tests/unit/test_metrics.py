"""The typed metric methods expose what their names promise, in the exposition format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from service.telemetry.metrics import Metrics, age_s, serve_metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histograms_count_sum_and_bucket_per_label_set() -> None:
    metrics = Metrics()
    metrics.observe_api("renewal_resources", "200", 0.2)
    metrics.observe_api("renewal_resources", "200", 0.4)
    metrics.observe_api("renewal_resources", "RELAY.TIMEOUT", 30.0)
    metrics.observe_command("renew", "succeeded", 3.0)
    metrics.observe_quota_wait("renewal_resources", 0.5)
    got = samples(metrics)
    ok = frozenset({("api", "renewal_resources"), ("status", "200")})
    assert got[("bss_relay_api_request_duration_seconds_count", ok)] == 2
    assert abs(got[("bss_relay_api_request_duration_seconds_sum", ok)] - 0.6) < 1e-9
    assert got[("bss_relay_api_request_duration_seconds_bucket", ok | {("le", "0.25")})] == 1
    timeout = frozenset({("api", "renewal_resources"), ("status", "RELAY.TIMEOUT")})
    assert got[("bss_relay_api_request_duration_seconds_count", timeout)] == 1
    command = frozenset({("type", "renew"), ("outcome", "succeeded")})
    assert got[("bss_relay_command_duration_seconds_count", command)] == 1
    assert got[("bss_relay_command_duration_seconds_bucket", command | {("le", "2.5")})] == 0
    assert got[("bss_relay_command_duration_seconds_bucket", command | {("le", "5.0")})] == 1
    wait = frozenset({("api", "renewal_resources")})
    assert got[("bss_relay_quota_wait_seconds_sum", wait)] == 0.5


def test_gauges_read_their_callbacks_at_scrape_time() -> None:
    metrics = Metrics()
    parked = [0]
    metrics.set_parked(lambda: parked[0])
    assert samples(metrics)[("bss_relay_commands_parked_now", frozenset())] == 0
    parked[0] = 7
    assert samples(metrics)[("bss_relay_commands_parked_now", frozenset())] == 7
    metrics.store_error()
    assert samples(metrics)[("bss_relay_store_errors_total", frozenset())] == 1


def test_age_is_never_negative() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert age_s(now - timedelta(seconds=90), now) == 90
    assert age_s(now + timedelta(seconds=5), now) == 0  # producer's clock ahead of ours


async def test_healthy_gauge_follows_healthz() -> None:
    metrics = Metrics()
    problems: list[str] = ["not consuming"]
    async with serve_metrics(
        metrics, host="127.0.0.1", port=0, problems=lambda: list(problems)
    ) as runner:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 503
            assert samples(metrics)[("bss_relay_healthy", frozenset())] == 0
            problems.clear()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert "bss_relay_healthy 1.0" in await resp.text()
