"""The deploy definitions file declares exactly what the service declares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.broker.topology import (
    DELAY_LEVELS_MS,
    DLQ,
    WORK_DELIVERY_LIMIT,
    QueueType,
    Topology,
    definitions,
)

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq-definitions.json"
DEPLOY_FILES: dict[QueueType, Path] = {
    "classic": DEFINITIONS,
    "quorum": DEFINITIONS.with_name("rabbitmq-definitions-quorum.json"),
}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_definitions_file_matches_the_code(queue_type: QueueType) -> None:
    generated = definitions(Topology(queue_type=queue_type))
    assert json.loads(DEPLOY_FILES[queue_type].read_text()) == generated


def test_classic_queues_keep_the_arguments_existing_deployments_have() -> None:
    topology = Topology("p")
    assert topology.work_arguments() == {}
    assert topology.dlq_arguments() == {}
    assert topology.delay_arguments(250) == {
        "x-message-ttl": 250,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "p.work",
    }


def test_quorum_declares_every_service_queue_as_quorum() -> None:
    doc = definitions(Topology("p", "quorum"))
    types = {q["name"]: q["arguments"].get("x-queue-type") for q in doc["queues"]}
    assert len(types) == 2 + len(DELAY_LEVELS_MS)
    assert set(types.values()) == {"quorum"}
    assert DLQ in types


def test_quorum_moves_between_queues_at_least_once() -> None:
    topology = Topology("p", "quorum")
    for arguments, target in [
        *((topology.delay_arguments(ms), "p.work") for ms in DELAY_LEVELS_MS),
        (topology.work_arguments(), DLQ),
    ]:
        assert arguments["x-dead-letter-routing-key"] == target
        assert arguments["x-dead-letter-exchange"] == ""
        assert arguments["x-dead-letter-strategy"] == "at-least-once"
        assert arguments["x-overflow"] == "reject-publish"  # required by at-least-once


def test_quorum_work_queue_has_a_delivery_limit_and_dlq_none() -> None:
    topology = Topology("p", "quorum")
    assert topology.work_arguments()["x-delivery-limit"] == WORK_DELIVERY_LIMIT
    assert topology.dlq_arguments() == {"x-queue-type": "quorum"}  # the end of the line


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
    assert set(services) == {"rabbitmq", "sandbox", "postgres", "relay-a", "relay-b", "console"}
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
    # the console: the replicas' store and broker, its users file mounted where it is named
    console = services["console"]
    assert console["command"][0] == "console"
    assert console["environment"]["STORE_URL"] == services["relay-a"]["environment"]["STORE_URL"]
    assert console["environment"]["AMQP_URL"] == services["relay-a"]["environment"]["AMQP_URL"]
    users = console["environment"]["RELAY_CONSOLE_USERS_FILE"]
    assert any(volume.endswith(f":{users}:ro") for volume in console["volumes"])


def test_cluster_compose_file_runs_quorum_queues_on_three_nodes() -> None:
    import yaml

    from service.broker.connection import parse_urls

    compose = yaml.safe_load((DEFINITIONS.parent / "compose-cluster.yaml").read_text())
    services = compose["services"]
    nodes = {name for name in services if name.startswith("rmq-")}
    assert nodes == {"rmq-1", "rmq-2", "rmq-3"}
    env = services["relay"]["environment"]
    assert env["RELAY_QUEUE_TYPE"] == "quorum"
    assert {url.host for url in parse_urls(env["AMQP_URL"])} == nodes
    assert set(services["relay"]["depends_on"]) == {*nodes, "sandbox"}
    cookies = {services[n]["environment"]["RABBITMQ_ERLANG_COOKIE"] for n in nodes}
    assert len(cookies) == 1
    for name in nodes:
        mounts = " ".join(services[name]["volumes"])
        assert "rabbitmq-definitions-quorum.json" in mounts
        assert "rabbitmq-cluster.conf" in mounts
    conf = (DEFINITIONS.parent / "rabbitmq-cluster.conf").read_text()
    for name in nodes:
        assert f"rabbit@{name}" in conf
