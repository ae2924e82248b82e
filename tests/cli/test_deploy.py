"""deploy/: the compose file and Kubernetes manifests run every process the table knows.

Docker and Kubernetes do not run here, so these checks read the files: they parse, they name
every process with the command `soma run` understands, their probes hit the health routes the
processes serve, and their NATS configuration passes `nats-server -t`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.processes import PROCESSES
from tests.cli.conftest import ROOT, clean_env
from tests.cli.test_nats_conf import PASSWORDS
from tests.servers import nats_server_binary

DEPLOY = ROOT / "deploy"


def _k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_every_kubernetes_document_has_the_required_keys() -> None:
    docs = _k8s()
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert doc["metadata"].get("name"), doc


@pytest.mark.parametrize("name", list(PROCESSES))
def test_every_process_has_a_deployment_with_health_and_readiness_probes(name: str) -> None:
    deployment = _find("Deployment", f"soma-{name}")
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["run", name]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["port"] in ports
    expected_port = 8080 if name == "gateway" else 8081  # SOMA_HTTP_PORT / SOMA_HEALTH_PORT
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == expected_port
    nats_url = next(e["value"] for e in container["env"] if e["name"] == "NATS_URL")
    assert nats_url.startswith(f"nats://{name}:$(NATS_PASSWORD)@"), "its own NATS user"


def test_the_health_port_the_probes_use_is_the_one_the_config_sets() -> None:
    config = _find("ConfigMap", "soma-config")
    assert config["data"]["SOMA_HEALTH_PORT"] == "8081"
    assert config["data"]["SOMA_STREAM_REPLICAS"] == "3"


def test_nats_is_a_three_member_statefulset_with_persistent_jetstream() -> None:
    nats = _find("StatefulSet", "nats")
    spec = nats["spec"]
    assert spec["replicas"] == 3
    assert _find("Service", spec["serviceName"])["spec"]["clusterIP"] == "None"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["-c", "/etc/nats/nats-cluster.conf"]
    secret_keys = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {f"NATS_{k.upper()}_PASSWORD" for k in secret_keys} == set(PASSWORDS)
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "nats-config"


def test_the_cluster_routes_name_every_statefulset_member() -> None:
    conf = (DEPLOY / "nats-cluster.conf").read_text()
    routes = re.findall(r"nats://(nats-\d)\.nats-headless\.soma\.svc", conf)
    assert routes == ["nats-0", "nats-1", "nats-2"]


def test_the_gateway_service_selects_the_gateway_pods() -> None:
    service = _find("Service", "soma-gateway")
    pods = _find("Deployment", "soma-gateway")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()


def test_the_kustomization_lists_files_that_exist() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file(), resource
    listed = {r.split("/")[-1] for r in kustomization["resources"]}
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")}
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "nats-config"
    for name in generator["files"]:
        assert (DEPLOY / name).is_file(), name


def test_nats_cluster_conf_is_valid() -> None:
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(DEPLOY / "nats-cluster.conf")],
        env=clean_env(SERVER_NAME="nats-0", NATS_STORE_DIR="/data/jetstream", **PASSWORDS),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_process_as_its_own_nats_user() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for name in PROCESSES:
        service = services[name]
        assert service["command"] == ["run", name]
        assert service["environment"]["NATS_URL"].startswith(f"nats://{name}:")
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["migrate"]
    assert "8080:8080" in services["gateway"]["ports"]


def test_compose_gives_nats_the_repository_config_and_every_password() -> None:
    nats = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["nats"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in nats["volumes"]}
    assert mounts["../nats.conf"] == "/etc/nats/nats.conf"
    # nats.conf includes deploy/nats-accounts.conf relative to itself.
    assert mounts["./nats-accounts.conf"] == "/etc/nats/deploy/nats-accounts.conf"
    assert set(nats["environment"]) == set(PASSWORDS) | {"NATS_STORE_DIR"}


def test_the_dockerfile_copies_only_paths_that_exist() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    sources = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY")]
    assert sources
    for group in sources:
        for source in group:
            assert (ROOT / source).exists(), source
    packages = {Path(s).name for group in sources for s in group}
    assert {"bus", "schemas", "handlers", "sagas", "gateway", "soma"} <= packages
