"""Settings from the environment and the partners file; start-up fails fast and clearly."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from service.runtime import ConfigurationError, run
from service.settings import Settings, load_partners_file


def test_contract_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AMQP_URL", "BSS_ENDPOINT", "IAM_ENDPOINT", "STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert settings.bss_endpoint == "https://bss.myhuaweicloud.com"
    assert settings.iam_endpoint == "https://iam.myhuaweicloud.com"
    assert settings.store_url == "sqlite:///bss-relay.db"


def test_one_partner_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BSS_PARTNER_ID", "p1")
    monkeypatch.setenv("BSS_ACCESS_KEY", "AK")
    monkeypatch.setenv("BSS_SECRET_KEY", "SK-secret")
    monkeypatch.setenv("BSS_AGENCY_NAME", "agency")
    monkeypatch.setenv("RELAY_RATE_LIMITS", '{"renewal_resources": 5}')
    settings = Settings()
    [partner] = settings.partners().values()
    assert (partner.partner_id, partner.agency_name) == ("p1", "agency")
    assert partner.secret_key.get_secret_value() == "SK-secret"
    assert "SK-secret" not in repr(settings)
    assert settings.relay_rate_limits == {"renewal_resources": 5}


def test_each_group_hands_on_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's steps get one group each; the variables keep their contract names."""
    env = {
        "AMQP_URL": "amqp://u:p@node-1/vh",
        "RELAY_QUEUE_TYPE": "quorum",
        "STORE_URL": "postgresql://db/relay",
        "RELAY_LEASE_S": "4",
        "RELAY_RATE_GUARD_MS": "3",
        "RELAY_EGRESS": "nat-a",
        "BSS_ENDPOINT": "http://127.0.0.1:9/",
        "RELAY_THROTTLE_RETRIES": "2",
        "RELAY_DEFERRED_AFTER_S": "7",
        "RELAY_METRICS_PORT": "9100",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_SERVICE_NAME": "relay-a",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.broker.url, settings.broker.queue_type) == (env["AMQP_URL"], "quorum")
    assert (settings.store.url, settings.store.lease.total_seconds()) == (env["STORE_URL"], 4)
    assert (settings.pacing.guard_s, settings.pacing.egress) == (0.003, "nat-a")
    assert (settings.api.bss_endpoint, settings.api.throttle_retries) == (env["BSS_ENDPOINT"], 2)
    assert settings.messages.deferred_after_s == 7
    operations = settings.operations
    assert operations.metrics_port == 9100
    assert operations.tracing.endpoint == "http://collector:4318"
    assert operations.tracing.service_name == "relay-a"


def test_egress_defaults_to_the_source_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_EGRESS", raising=False)
    monkeypatch.delenv("RELAY_SOURCE_ADDRESS", raising=False)
    assert (Settings().relay_egress, Settings().relay_source_address) == ("default", None)
    monkeypatch.setenv("RELAY_SOURCE_ADDRESS", "127.0.0.2")
    assert (Settings().relay_egress, Settings().relay_source_address) == ("127.0.0.2", "127.0.0.2")
    monkeypatch.setenv("RELAY_EGRESS", "nat-a")
    assert (Settings().relay_egress, Settings().relay_source_address) == ("nat-a", "127.0.0.2")
    monkeypatch.setenv("RELAY_SOURCE_ADDRESS", "not-an-address")
    with pytest.raises(ValidationError, match="does not appear to be an IPv4 or IPv6 address"):
        Settings()


def test_partial_partner_variables_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BSS_PARTNER_ID", "p1")
    monkeypatch.delenv("BSS_ACCESS_KEY", raising=False)
    monkeypatch.delenv("BSS_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="go together"):
        Settings()


def test_partners_file_json_and_yaml(tmp_path: Path) -> None:
    rows = [
        {"partner_id": "p1", "access_key": "A1", "secret_key": "S1", "agency_name": "g1"},
        {"partner_id": "p2", "access_key": "A2", "secret_key": "S2"},
    ]
    as_json = tmp_path / "partners.json"
    as_json.write_text(json.dumps({"partners": rows}))
    as_yaml = tmp_path / "partners.yaml"
    as_yaml.write_text(
        "partners:\n"
        "  - {partner_id: p1, access_key: A1, secret_key: S1, agency_name: g1}\n"
        "  - {partner_id: p2, access_key: A2, secret_key: S2}\n"
    )
    for path in (as_json, as_yaml):
        partners = load_partners_file(path)
        assert set(partners) == {"p1", "p2"}
        assert partners["p2"].agency_name is None


def test_partners_file_errors(tmp_path: Path) -> None:
    dup = tmp_path / "dup.json"
    row = {"partner_id": "p1", "access_key": "A", "secret_key": "S"}
    dup.write_text(json.dumps({"partners": [row, row]}))
    with pytest.raises(ValueError, match="unique"):
        load_partners_file(dup)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"partners": []}))
    with pytest.raises(ValueError, match="non-empty"):
        load_partners_file(empty)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


async def test_start_fails_fast_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(
        amqp_url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/",
        store_url=f"sqlite:///{tmp_path}/s.db",
        bss_partner_id="p",
        bss_access_key="a",
        bss_secret_key=SecretStr("s"),
    )
    with pytest.raises((ConnectionError, OSError)):
        await asyncio.wait_for(run(settings, stop=asyncio.Event()), 20)


async def test_start_fails_without_partner(tmp_path: Path, amqp_url: str) -> None:
    settings = Settings(amqp_url=amqp_url, store_url=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(ConfigurationError, match="no partner account"):
        await asyncio.wait_for(run(settings, stop=asyncio.Event()), 20)
