"""docker-compose.yml: valid for Compose with the monitoring profile, demo ports on loopback only,
time enough for a graceful stop, images pinned, and the monitoring profile wired to the service."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from atp_service import ServiceConfig
from atp_service.app.cli import SHUTDOWN_SNAPSHOT_S
from publishers._config import PublisherConfig
from publishers._http import HttpSettings

from .monitoring_helpers import PROMETHEUS_CONFIG, ROOT, yaml_load, yaml_loads

COMPOSE = ROOT / "docker-compose.yml"


def compose_command() -> list[str]:
    """The `docker compose` plugin where it exists, else Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("neither `docker compose` nor docker-compose is installed: `make bootstrap` (or `make test`) "
                "installs Debian's docker-compose as root; otherwise run 'sudo apt-get install docker-compose'")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml_load(COMPOSE)
    return loaded


def seconds(duration: str) -> float:
    """A Compose duration: 75s, 1m30s, 1h."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    hours, minutes, secs = parts.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_accepts_the_file_with_the_monitoring_profile() -> None:
    done = subprocess.run([*compose_command(), "--file", str(COMPOSE), "--profile", "monitoring", "config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    services = yaml_loads(done.stdout)["services"]
    assert {"redis", "atp", "publisher", "prometheus", "grafana"} <= set(services)


def test_every_published_port_listens_on_loopback_only() -> None:
    published = [(name, port) for name, service in compose()["services"].items()
                 for port in service.get("ports", [])]
    assert ("atp", "127.0.0.1:50051:50051") in published
    for name, port in published:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r} beyond loopback"


def test_the_services_get_time_to_stop_gracefully() -> None:
    services = compose()["services"]
    config = ServiceConfig.from_env(environment(services["atp"]))
    needed = config.shutdown_grace_s + SHUTDOWN_SNAPSHOT_S  # the drain, then every shard's final snapshot
    given = seconds(services["atp"]["stop_grace_period"])
    assert given > needed, f"atp: stop_grace_period {given}s, a graceful stop may take {needed}s"
    adapter_timeout = HttpSettings().timeout_s
    publisher_needs = PublisherConfig(channel="web").block_ms / 1000 + adapter_timeout  # a read, one attempt
    assert seconds(services["publisher"]["stop_grace_period"]) > publisher_needs


def test_images_are_pinned_to_exact_versions() -> None:
    for name, service in compose()["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        assert re.search(r":v?\d+\.\d+\.\d+(-[a-z0-9.]+)?$", image), f"{name}: image {image!r} is not an exact version"


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository file a service mounts there."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def test_the_monitoring_profile_scrapes_the_services_and_provisions_grafana() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for target, source in bind_mounts(services[name]).items():
            assert source.exists(), f"{name} mounts {source}, which does not exist, at {target}"
    prometheus_files = bind_mounts(services["prometheus"])
    assert prometheus_files["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    scraped = yaml_load(PROMETHEUS_CONFIG)
    for rule_file in scraped["rule_files"]:  # relative to the config, here and in the container
        assert prometheus_files[f"/etc/prometheus/{rule_file}"] == PROMETHEUS_CONFIG.parent / rule_file
    targets = [(job["job_name"], target) for job in scraped["scrape_configs"]
               for config in job["static_configs"] for target in config["targets"]]
    assert {job for job, _ in targets} == {"atp-service", "atp-publisher"}
    for _, target in targets:
        host, port = target.split(":")
        container_ports = [p.rsplit(":", 1)[1] for p in services[host].get("ports", [])]
        assert port in container_ports, f"{target}: {host} does not serve its metrics on {port}"
    publishers = {host for job, target in targets if job == "atp-publisher" for host in [target.split(":")[0]]}
    for host in publishers:
        assert environment(services[host])["ATP_METRICS_HOST"] == "0.0.0.0"  # reachable from Prometheus


def test_every_channel_of_the_demo_estate_has_a_publisher() -> None:
    """A channel the service feeds with no publisher delivering it fires ATPChannelWithoutPublisher:
    the demo stack with its monitoring profile would show a critical alert from its first minutes."""
    import tomllib

    estate = tomllib.loads((ROOT / "atp_service/app/demo_estate.toml").read_text())
    services = compose()["services"]
    delivered = {cmd[cmd.index("--channel") + 1] for s in services.values()
                 if s.get("entrypoint") == ["atp-publisher"] for cmd in [s["command"]]}
    assert delivered == {channel["name"] for channel in estate["channels"]}

    grafana_files = bind_mounts(services["grafana"])
    provisioning = grafana_files["/etc/grafana/provisioning"]
    datasource = yaml_load(provisioning / "datasources/prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["isDefault"]
    folder = yaml_load(provisioning / "dashboards/atp.yml")["providers"][0]["options"]["path"]
    assert grafana_files[f"{folder}/atp-service.json"] == ROOT / "deploy/grafana/atp-service.json"


def test_a_container_of_the_image_that_runs_no_service_has_a_health_check_of_its_own() -> None:
    """The image's HEALTHCHECK calls the gRPC service in its own container: another program run
    from the image (the publisher) would be reported unhealthy forever."""
    for name, service in compose()["services"].items():
        if service.get("image") == compose()["services"]["atp"]["image"] and name != "atp":
            check = service.get("healthcheck", {})
            assert check.get("disable") or "atp_service.app.healthcheck" not in " ".join(check.get("test", [])), name
            assert check, f"{name}: inherits the image's health check of the gRPC service"
