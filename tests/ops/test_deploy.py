"""deploy/ is checked by the schemas its consumers apply, not only parsed.

The Kubernetes manifests are rendered as ``kubectl apply -k deploy/`` renders them (the
kustomization's namespace, generated ConfigMap and image tag) and every rendered document is
validated, strictly, by ``kubernetes-validate`` against the Kubernetes OpenAPI schemas it ships.
``deploy/compose.yaml`` is validated against the Compose Specification's JSON schema,
``tests/ops/compose-spec.json``: ``schema/compose-spec.json`` of
github.com/compose-spec/compose-spec at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6, unchanged.

Then what an operator relies on: probes and resource requests on every container, the migration
Job before any process, and every secret taken from a Secret (Kubernetes) or the environment
file (compose), never written in the files.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kernel.processes import PROCESSES
from tests.cli.conftest import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
KUBERNETES_VERSION = kubernetes_validate.latest_version()
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|DATABASE_URL")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def render() -> list[dict[str, Any]]:
    """The documents ``kubectl apply -k deploy/`` sends: the kustomization's transformations."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((DEPLOY / resource).read_text()) if d)
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (DEPLOY / f).read_text() for f in generator["files"]}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    namespace = kustomization.get("namespace")
    tags = {i["name"]: i for i in kustomization.get("images", [])}
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        for container in _containers(doc):
            name, _, _tag = container["image"].partition(":")
            if name in tags:
                image = tags[name]
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return docs


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] not in WORKLOADS:
        return None
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(doc)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec["containers"]]


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render()


def test_the_kustomization_renders_every_manifest_into_the_soma_namespace(
    rendered: list[dict[str, Any]],
) -> None:
    kinds = {d["kind"] for d in rendered}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Job", "Deployment", "Service"} <= kinds
    namespaced = [d for d in rendered if d["kind"] not in CLUSTER_SCOPED]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"soma"}


def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    failures = []
    for doc in rendered:
        try:
            kubernetes_validate.validate(copy.deepcopy(doc), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{doc['kind']} {doc['metadata']['name']}: {exc.message}")
    assert failures == []


def test_the_validator_refuses_a_manifest_that_breaks_the_schema(
    rendered: list[dict[str, Any]],
) -> None:
    """The check above can fail: a misspelt field in a Deployment is caught."""
    deployment = copy.deepcopy(_of_kind(rendered, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_container_requests_cpu_and_memory(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        for container in _containers(doc):
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= requests.keys(), (doc["metadata"]["name"], container)


def test_every_long_running_container_has_liveness_and_readiness_probes(
    rendered: list[dict[str, Any]],
) -> None:
    for doc in rendered:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert container["readinessProbe"]["httpGet"]["path"].startswith("/healthz") or (
                    container["readinessProbe"]["httpGet"]["path"] == "/readyz"
                )


def test_the_migration_job_creates_the_streams_as_the_nats_admin(
    rendered: list[dict[str, Any]],
) -> None:
    (job,) = _of_kind(rendered, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NATS_URL"]["value"].startswith("nats://admin:$(NATS_PASSWORD)@")
    assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "admin"


def test_no_process_starts_before_the_migration_job_has_completed(
    rendered: list[dict[str, Any]],
) -> None:
    (job,) = _of_kind(rendered, "Job")
    waits = ["wait", "--for=condition=complete", f"job/{job['metadata']['name']}"]
    deployments = _of_kind(rendered, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {f"soma-{p}" for p in PROCESSES}
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        assert init["args"][:3] == waits, deployment["metadata"]["name"]
        account = spec["serviceAccountName"]
        _assert_may_watch_jobs(rendered, account)


def _assert_may_watch_jobs(rendered: list[dict[str, Any]], account: str) -> None:
    assert any(a["metadata"]["name"] == account for a in _of_kind(rendered, "ServiceAccount"))
    roles = {
        b["roleRef"]["name"]
        for b in _of_kind(rendered, "RoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])
    }
    rules = [
        rule
        for role in _of_kind(rendered, "Role")
        if role["metadata"]["name"] in roles
        for rule in role["rules"]
    ]
    assert any(
        "batch" in r["apiGroups"]
        and "jobs" in r["resources"]
        and {"get", "watch"} <= set(r["verbs"])
        for r in rules
    ), f"{account} may not watch the migration Job"


def test_every_secret_comes_from_a_secret_object_never_a_literal(
    rendered: list[dict[str, Any]],
) -> None:
    for doc in rendered:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "soma-config":
            assert not [k for k in doc["data"] if SECRET_NAME.search(k)]
        for container in _containers(doc):
            for entry in container.get("env", []):
                where = (doc["metadata"]["name"], entry["name"])
                if SECRET_NAME.search(entry["name"]):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), where
                if entry["name"] == "NATS_URL":
                    assert re.fullmatch(r"nats://\w+:\$\(NATS_PASSWORD\)@[\w.:-]+", entry["value"])


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose


def test_compose_validates_against_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(_compose(), schema)


def test_the_compose_schema_refuses_a_file_that_breaks_it() -> None:
    """The check above can fail: an unknown service key is refused."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    compose = _compose()
    compose["services"]["gateway"]["helthcheck"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(compose, schema)


def test_compose_takes_every_secret_from_the_environment_file() -> None:
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or key == "NATS_URL":
                assert re.search(r"\$\{[A-Z_]+(:[?-][^}]*)?\}", str(value)), (name, key)
                assert not re.search(r"://[^:/]+:[^$][^@]*@", str(value)), (name, key, value)


def test_compose_processes_have_healthchecks_and_wait_for_migrate() -> None:
    services = _compose()["services"]
    for name in PROCESSES:
        service = services[name]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_image_installs_bubblewrap_for_the_python_tool() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"apt-get install[^\n]*\bbubblewrap\b", dockerfile)
