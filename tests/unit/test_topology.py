"""The deploy definitions file declares exactly what the service declares."""

from __future__ import annotations

import json
from pathlib import Path

from service.topology import DELAY_LEVELS_MS, Topology, definitions

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq-definitions.json"


def test_definitions_file_matches_the_code() -> None:
    assert json.loads(DEFINITIONS.read_text()) == definitions(Topology())


def test_contract_names_are_declared() -> None:
    doc = definitions(Topology())
    exchanges = {e["name"]: e for e in doc["exchanges"]}
    assert exchanges["bss.commands"]["type"] == "topic"
    assert exchanges["bss.events"]["durable"] is True
    assert "bss.commands.dlq" in {q["name"] for q in doc["queues"]}


def test_delay_queues_dead_letter_back_to_work() -> None:
    topology = Topology("p")
    for level in DELAY_LEVELS_MS:
        args = topology.delay_arguments(level)
        assert args["x-message-ttl"] == level
        assert args["x-dead-letter-routing-key"] == "p.work"


def test_delay_for_rounds_down_to_a_step() -> None:
    assert Topology.delay_for(0.1) == 250
    assert Topology.delay_for(3.0) == 2000
    assert Topology.delay_for(10_000) == 300_000


def test_delay_for_at_least_rounds_up_to_a_step() -> None:
    assert Topology.delay_for(0.1, at_least=True) == 250
    assert Topology.delay_for(0.7, at_least=True) == 1000
    assert Topology.delay_for(2.0, at_least=True) == 2000
    assert Topology.delay_for(10_000, at_least=True) == 300_000


def test_compose_file_runs_two_replicas_on_postgresql() -> None:
    import yaml

    from service.settings import Settings

    compose = yaml.safe_load((DEFINITIONS.parent / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"rabbitmq", "sandbox", "postgres", "relay-a", "relay-b"}
    egresses = set()
    for name in ("relay-a", "relay-b"):
        env = services[name]["environment"]
        assert env["BSS_ENDPOINT"] == env["IAM_ENDPOINT"] == "http://sandbox:18080"
        assert env["STORE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["STORE_URL"]
        assert services[name]["command"] == ["serve"]
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        settings = Settings(**{k.lower(): v for k, v in env.items()})
        egresses.add(settings.relay_egress)
    assert egresses == {"relay-a", "relay-b"}  # each container leaves from its own address
    assert "rabbitmq-definitions.json" in services["rabbitmq"]["volumes"][0]
