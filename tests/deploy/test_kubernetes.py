"""deploy/kubernetes: every manifest valid for Kubernetes (kubernetes-validate, strict, its own
schemas), and what the service needs of them — one writer, a stop long enough for the drain and
the final snapshots, probes that speak TLS, Redis's append-only file on a volume, leases' DNS names."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from atp_service.app.cli import SHUTDOWN_SNAPSHOT_S
from atp_service.app.healthcheck import DEFAULT_TIMEOUT_S, ENV_CLIENT_CERT, ENV_CLIENT_KEY, ENV_SERVER_NAME
from atp_service.config import ServiceConfig
from atp_service.config_settings import settings_of
from tests.deploy.manifests import (
    HEALTH_COMMAND,
    KUBE,
    LAYOUTS,
    ROOT,
    Doc,
    Layout,
    documents,
    environment,
    gather,
    pod_specs,
    service_workload,
)

K8S_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests are written for: its schemas check them."""
MANIFESTS = sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")
SETTINGS = {setting.env for setting in settings_of(ServiceConfig)}
HEALTH_SETTINGS = {ENV_SERVER_NAME, ENV_CLIENT_CERT, ENV_CLIENT_KEY}
RECOVERY_BUDGET_S = 300
"""The least time the startup probe leaves a start (waiting for Redis, recovery)."""


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> Layout:
    return gather(LAYOUTS[request.param])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(KUBE)))
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validation_refuses_a_misspelt_field_or_a_wrong_type() -> None:
    (deployment,) = documents(KUBE / "deployment.yaml")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["replica"] = 1
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "90s"
    for doc in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_manifest_is_applied_by_a_layout_and_secret_files_stay_out_of_git() -> None:
    layouts = [gather(directory) for directory in LAYOUTS.values()]
    assert sorted({path for found in layouts for path in found.files}) == MANIFESTS
    for found in layouts:
        for keys in found.secrets.values():
            for source in keys.values():
                ignored = subprocess.run(["git", "check-ignore", "-q", str(source)], cwd=ROOT, check=False)
                assert ignored.returncode == 0, f"{source} would be committed"


def test_the_single_writer_runs_one_pod_never_two() -> None:
    found = gather(LAYOUTS["keyspace"])
    workload, _, container = service_workload(found)
    assert workload["kind"] == "Deployment"
    assert (workload["spec"]["replicas"], workload["spec"]["strategy"]) == (1, {"type": "Recreate"})
    assert environment(found, container)["ATP_OWNERSHIP"] == "keyspace"
    assert not found.of_kind("StatefulSet") or all(
        s["metadata"]["name"] != "atp-service" for s in found.of_kind("StatefulSet"))


def test_a_stop_has_time_to_drain_and_snapshot(layout: Layout) -> None:
    _, spec, container = service_workload(layout)
    grace = float(environment(layout, container).get("ATP_SHUTDOWN_GRACE_S", ServiceConfig().shutdown_grace_s))
    assert spec["terminationGracePeriodSeconds"] >= grace + SHUTDOWN_SNAPSHOT_S


def test_probes_run_the_health_check_and_leave_room_for_recovery(layout: Layout) -> None:
    _, _, container = service_workload(layout)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == HEALTH_COMMAND, probe
        assert container[probe]["timeoutSeconds"] > DEFAULT_TIMEOUT_S, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= RECOVERY_BUDGET_S


def test_every_setting_is_one_the_service_or_its_health_check_reads(layout: Layout) -> None:
    _, _, container = service_workload(layout)
    env = environment(layout, container)
    unknown = {name for name in env if name.startswith("ATP_")} - SETTINGS - HEALTH_SETTINGS
    assert not unknown
    ServiceConfig.from_env({k: re.sub(r"\$\(\w+\)", "x", v) for k, v in env.items()})  # the values parse
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert (int(env["ATP_PORT"]), int(env["ATP_METRICS_PORT"])) == (ports["grpc"], ports["metrics"])
    assert env["ATP_HOST"] == env["ATP_METRICS_HOST"] == "0.0.0.0"


def test_variables_refer_only_to_variables_defined_before_them(layout: Layout) -> None:
    for _, spec in pod_specs(layout):
        for container in spec["containers"]:
            defined: set[str] = set()
            for var in container.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                    assert ref in defined, f"{var['name']} uses $({ref}) before it is defined"
                defined.add(var["name"])
            for arg in container.get("args", []):
                assert set(re.findall(r"\$\((\w+)\)", arg)) <= defined


def _secret_keys(layout: Layout, name: str) -> set[str]:
    assert name in layout.secrets, f"Secret {name} is made by no generator of the layout"
    return set(layout.secrets[name])


def test_files_the_settings_name_are_keys_of_mounted_secrets(layout: Layout) -> None:
    _, spec, container = service_workload(layout)
    env = environment(layout, container)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    files = [env[name] for name in env if name.endswith(("_FILE", "_CERT", "_KEY", "_CA")) and name.startswith("ATP_")]
    assert len(files) >= 3  # callers, certificate, key (and the peer token under leases)
    for path in files:
        directory, _, key = path.rpartition("/")
        assert key in _secret_keys(layout, mounts[directory]["secret"]["secretName"]), path
    for _, pod in pod_specs(layout):
        for c in pod["containers"]:
            for var in c.get("env", []):
                if "valueFrom" in var and "secretKeyRef" in var["valueFrom"]:
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in _secret_keys(layout, ref["name"])
            for source in c.get("envFrom", []):
                layout.named("ConfigMap", source["configMapRef"]["name"])


def _restricted(where: str, pod: Doc, container: Doc) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True, where
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
    context = container["securityContext"]
    assert (context["allowPrivilegeEscalation"], context["readOnlyRootFilesystem"]) == (False, True), where
    assert context["capabilities"] == {"drop": ["ALL"]}, where


def test_pods_run_unprivileged_on_a_read_only_root(layout: Layout) -> None:
    for workload, spec in pod_specs(layout):
        assert spec["enableServiceLinks"] is False  # no ATP_* variables made from Service names
        for container in spec["containers"]:
            _restricted(workload["metadata"]["name"], spec, container)
    _, spec, container = service_workload(layout)
    assert spec["securityContext"]["runAsUser"] == 10001
    assert "limits" in container["resources"] and "requests" in container["resources"]


def test_services_reach_the_service_pods_by_named_ports(layout: Layout) -> None:
    workload, _, container = service_workload(layout)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    grpc = layout.named("Service", "atp-service")
    metrics = layout.named("Service", "atp-service-metrics")
    for service in (grpc, metrics):
        assert service["spec"]["selector"].items() <= labels.items()
        assert all(port["targetPort"] in ports for port in service["spec"]["ports"])
    notes = metrics["metadata"]["annotations"]
    assert (notes["prometheus.io/scrape"], int(notes["prometheus.io/port"])) == ("true", ports["metrics"])


def _redis_conf(layout: Layout) -> dict[str, str]:
    (redis,) = [w for w in layout.of_kind("StatefulSet") if w["metadata"]["name"] == "atp-redis"]
    (volume,) = [v for v in redis["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    text = layout.named("ConfigMap", volume["configMap"]["name"])["data"]["redis.conf"]
    lines = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key: value.strip('"') for key, value in lines}


def test_redis_keeps_an_append_only_file_on_a_persistent_volume(layout: Layout) -> None:
    conf = _redis_conf(layout)
    assert (conf["appendonly"], conf["maxmemory-policy"]) == ("yes", "noeviction")
    assert conf["appendfsync"] in ("everysec", "always")
    (redis,) = [w for w in layout.of_kind("StatefulSet") if w["metadata"]["name"] == "atp-redis"]
    claims = {claim["metadata"]["name"] for claim in redis["spec"]["volumeClaimTemplates"]}
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    (data,) = [m for m in container["volumeMounts"] if m["mountPath"] == conf["dir"]]
    assert data["name"] in claims
    assert container["args"][0] == "/etc/redis/redis.conf"
    _, _, service = service_workload(layout)
    url = {var["name"]: var.get("value") for var in service["env"]}["ATP_REDIS_URL"]
    assert url.startswith(f"redis://:$(REDIS_PASSWORD)@{redis['spec']['serviceName']}:{conf['port']}/")


def test_leased_processes_advertise_their_pod_dns_names() -> None:
    found = gather(LAYOUTS["leases"])
    workload, _, container = service_workload(found)
    assert workload["kind"] == "StatefulSet" and workload["spec"]["replicas"] > 1
    assert not found.of_kind("Deployment")
    env: dict[str, Any] = {var["name"]: var for var in container["env"]}
    assert env["ATP_OWNERSHIP"]["value"] == "leases"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    peers = found.named("Service", workload["spec"]["serviceName"])
    (port,) = peers["spec"]["ports"]
    grpc = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    assert env["ATP_ADVERTISE_ADDRESS"]["value"] == (
        f"$(POD_NAME).{peers['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local:{grpc}")
    assert (peers["spec"]["clusterIP"], peers["spec"]["publishNotReadyAddresses"], port["port"]) == ("None", True, grpc)
    assert peers["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    assert "ATP_PEER_TOKEN_FILE" in env  # auth is on: order steps between processes carry the peer token
