"""deploy/k8s/ validates against a pinned Kubernetes version and keeps its promises.

``kubernetes-validate`` carries the Kubernetes OpenAPI schemas, so this runs offline; strict
mode also refuses unknown fields (a misspelt ``readOnlyRootFilesytem`` would otherwise be
silently ignored by the API server's older versions and the pod would run writable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # pinned: bump deliberately, with the cluster


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


DOCS = _documents()


# The relay's own objects, by kind; the console (console.yaml) has objects of the same kinds.
RELAY = {
    "Deployment": "bss-relay",
    "ConfigMap": "bss-relay-config",
    "Secret": "bss-relay-secrets",
    "Service": "bss-relay-metrics",
    "PodDisruptionBudget": "bss-relay",
    "ServiceAccount": "bss-relay",
}
CONSOLE = {
    "Deployment": "bss-relay-console",
    "ConfigMap": "bss-relay-console-config",
    "Secret": "bss-relay-console-users",
    "Service": "bss-relay-console",
}


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    wanted = name or RELAY[kind]
    [doc] = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == wanted]
    return doc


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[f"{n}:{d['kind']}" for n, d in DOCS])
def test_manifest_validates_against_the_pinned_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_catches_a_misspelt_field() -> None:
    bad = _one("Deployment")
    container = bad["spec"]["template"]["spec"]["containers"][0]
    bad = yaml.safe_load(yaml.safe_dump(bad))  # a copy
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {
        **container["securityContext"],
        "readOnlyRootFilesytem": True,
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_every_kind_is_there() -> None:
    kinds = {d["kind"] for _, d in DOCS}
    assert {
        "Deployment",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    } <= kinds


def test_deployment_two_replicas_probes_grace_and_security() -> None:
    deployment, config = _one("Deployment"), _one("ConfigMap")["data"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] > float(config["RELAY_SHUTDOWN_GRACE_S"])

    [port] = container["ports"]
    assert port["containerPort"] == int(config["RELAY_METRICS_PORT"])
    assert config["RELAY_METRICS_HOST"] == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    # Every writable mount is an emptyDir; the secrets are mounted read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume:
            assert mount["readOnly"] is True
        else:
            assert "emptyDir" in volume, mount
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_configuration_and_secrets_are_wired_by_name() -> None:
    deployment, secret = _one("Deployment"), _one("Secret")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": _one("ConfigMap")["metadata"]["name"]}}
    ]
    # No secret as a plain environment variable.
    assert "env" not in container
    [secret_volume] = [v for v in pod["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == secret["metadata"]["name"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == secret_volume["name"]]
    env_file = container["args"][container["args"].index("--env-file") + 1]
    assert env_file == f"{mount['mountPath']}/relay.env"
    assert "relay.env" in secret["stringData"]
    config = _one("ConfigMap")["data"]
    assert config["BSS_PARTNERS_FILE"] == f"{mount['mountPath']}/partners.yaml"
    assert "partners.yaml" in secret["stringData"]


def test_configuration_is_what_the_service_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's keys and the Secret's env file are Settings the service accepts, and
    the store is PostgreSQL (two replicas share it)."""
    config = _one("ConfigMap")["data"]
    fields = {name.upper() for name in Settings.model_fields}
    assert set(config) <= fields, sorted(set(config) - fields)
    secret = _one("Secret")["stringData"]
    env_file = tmp_path / "relay.env"
    env_file.write_text(secret["relay.env"])
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=env_file)
    assert settings.store_url.startswith("postgresql://")
    assert settings.relay_metrics_host == "0.0.0.0"
    partners = yaml.safe_load(secret["partners.yaml"])["partners"]
    assert {"partner_id", "access_key", "secret_key"} <= set(partners[0])


def test_pdb_and_service_select_the_pods() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb, service = _one("PodDisruptionBudget"), _one("Service")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"


# --- the console (console.yaml) ------------------------------------------------------------


def test_console_one_pod_probes_and_security() -> None:
    deployment = _one("Deployment", CONSOLE["Deployment"])
    config = _one("ConfigMap", CONSOLE["ConfigMap"])["data"]
    assert deployment["spec"]["replicas"] == 1  # sessions live in the console's memory
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][0] == "console"
    [port] = container["ports"]
    assert port["containerPort"] == int(config["RELAY_CONSOLE_PORT"])
    assert config["RELAY_CONSOLE_HOST"] == "0.0.0.0"
    assert config["RELAY_CONSOLE_SECURE_COOKIE"] == "true"  # TLS ends at the Ingress
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_console_reads_its_users_and_the_store_from_files() -> None:
    deployment = _one("Deployment", CONSOLE["Deployment"])
    config = _one("ConfigMap", CONSOLE["ConfigMap"])["data"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "env" not in container  # no secret as a plain environment variable
    assert container["envFrom"] == [{"configMapRef": {"name": CONSOLE["ConfigMap"]}}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    users_dir, _, users_name = config["RELAY_CONSOLE_USERS_FILE"].rpartition("/")
    users = volumes[mounts[users_dir]["name"]]["secret"]
    assert users["secretName"] == CONSOLE["Secret"]
    assert users_name in _one("Secret", CONSOLE["Secret"])["stringData"]
    env_file = container["args"][container["args"].index("--env-file") + 1]
    env_dir, _, env_name = env_file.rpartition("/")
    relay_env = volumes[mounts[env_dir]["name"]]["secret"]
    assert relay_env["secretName"] == RELAY["Secret"]
    assert relay_env["items"] == [{"key": env_name, "path": env_name}]  # not partners.yaml
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        assert mount.get("readOnly") is True if "secret" in volume else "emptyDir" in volume
    fields = {name.upper() for name in Settings.model_fields}
    assert set(config) <= fields, sorted(set(config) - fields)


def test_console_and_relay_select_only_their_own_pods() -> None:
    relay_pods = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    console = _one("Deployment", CONSOLE["Deployment"])
    console_pods = console["spec"]["template"]["metadata"]["labels"]
    service = _one("Service", CONSOLE["Service"])
    assert service["spec"]["selector"].items() <= console_pods.items()
    assert not service["spec"]["selector"].items() <= relay_pods.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "console"
    for selector in (
        _one("Service")["spec"]["selector"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _one("Deployment")["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= console_pods.items()
