"""deploy/systemd: the units a plain host runs — restarted after a failure but never after exit
status 3 (replaced), a stop long enough for the drain and the final snapshots, hardened; and
`systemd-analyze verify` clean where systemd is installed."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from atp_service.app.cli import EXIT_REPLACED, EXIT_SHARD_FAILED, SHUTDOWN_SNAPSHOT_S
from atp_service.config import ServiceConfig
from atp_service.config_settings import settings_of
from tests.deploy.manifests import ROOT

SYSTEMD = ROOT / "deploy" / "systemd"
SERVICE = SYSTEMD / "atp-service.service"
PUBLISHER = SYSTEMD / "atp-publisher@.service"
SETTINGS = {setting.env for setting in settings_of(ServiceConfig)}


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def env_file(path: Path) -> dict[str, str]:
    lines = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in lines}


def seconds(span: str) -> float:
    """A systemd time span such as ``90``, ``90s``, ``1min 30s``."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span))


def test_the_service_restarts_after_a_failure_but_not_once_replaced() -> None:
    service = unit(SERVICE)["Service"]
    assert (service["Restart"], service["KillSignal"]) == ("on-failure", "SIGTERM")
    kept = {int(status) for status in service["RestartPreventExitStatus"].split()}
    assert EXIT_REPLACED in kept and EXIT_SHARD_FAILED not in kept
    assert service["KillMode"] == "mixed"  # the embedded redis-server is stopped by the service, last


def test_a_stop_has_time_to_drain_and_snapshot() -> None:
    service = unit(SERVICE)["Service"]
    settings = env_file(SYSTEMD / "atp.env.example")
    grace = float(settings.get("ATP_SHUTDOWN_GRACE_S", ServiceConfig().shutdown_grace_s))
    assert seconds(service["TimeoutStopSec"]) >= grace + SHUTDOWN_SNAPSHOT_S


def test_the_environment_file_holds_service_settings_and_the_data_dir_is_writable() -> None:
    service = unit(SERVICE)["Service"]
    assert service["EnvironmentFile"] == "/etc/atp/atp.env"
    settings = env_file(SYSTEMD / "atp.env.example")
    assert set(settings) <= SETTINGS
    ServiceConfig.from_env(settings)  # the values parse
    writable = {f"/var/lib/{service['StateDirectory']}", *service["ReadWritePaths"].split()}
    assert settings["ATP_DATA_DIR"] in writable


@pytest.mark.parametrize("path", [SERVICE, PUBLISHER], ids=lambda p: p.name)
def test_units_are_hardened(path: Path) -> None:
    service = unit(path)["Service"]
    assert (service["NoNewPrivileges"], service["ProtectSystem"], service["ProtectHome"]) == ("yes", "strict", "yes")
    assert service["PrivateTmp"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert service["User"] == "atp" and service["Restart"] == "on-failure"


def test_the_publisher_unit_is_one_per_channel() -> None:
    service = unit(PUBLISHER)["Service"]
    assert service["EnvironmentFile"] == "/etc/atp/publisher-%i.env"
    assert "--channel %i" in service["ExecStart"]
    assert set(env_file(SYSTEMD / "publisher.env.example")) == {
        "ATP_REDIS_URL", "ATP_PUBLISHER_ARGS", "ATP_WEBHOOK_SECRET"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed here")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """Each unit as systemd reads it, the program it starts replaced by one that exists here (the
    service's install path is the host's)."""
    stub = tmp_path / "program"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    checked = []
    for path, name in ((SERVICE, SERVICE.name), (PUBLISHER, "atp-publisher@web.service")):
        text = re.sub(r"^ExecStart=\S+", f"ExecStart={stub}", path.read_text(), flags=re.M)
        (tmp_path / name).write_text(text)
        checked.append(str(tmp_path / name))
    result = subprocess.run(["systemd-analyze", "verify", *checked], capture_output=True, text=True, check=False)
    said = [line for line in (result.stdout + result.stderr).splitlines()
            if str(tmp_path) in line or "atp-service" in line or "atp-publisher" in line]
    assert (result.returncode, said) == (0, [])
