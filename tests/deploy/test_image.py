"""The Dockerfile: a base pinned by digest, the health check that speaks TLS, SIGTERM, and a stop
timeout that covers the drain and the final snapshots."""

from __future__ import annotations

import json
import re

from atp_service.app.cli import SHUTDOWN_SNAPSHOT_S
from atp_service.app.healthcheck import DEFAULT_TIMEOUT_S
from atp_service.config import ServiceConfig
from tests.deploy.manifests import HEALTH_COMMAND, LAYOUTS, ROOT, gather, service_workload

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PINNED = re.compile(r"^python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$")


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction, continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def test_the_base_image_is_pinned_by_digest() -> None:
    (arg,) = [a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert PINNED.match(arg.split("=", 1)[1])
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_every_third_party_package_comes_from_the_lock_with_its_hashes() -> None:
    assert "requirements/service.lock /tmp/service.lock" in instructions("COPY")
    (install,) = [run for run in instructions("RUN") if "pip install" in run]
    assert "pip install --no-cache-dir --require-hashes -r /tmp/service.lock" in install
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in install  # the project's own two


def test_the_health_check_is_the_one_that_speaks_tls() -> None:
    (check,) = instructions("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert json.loads(command) == HEALTH_COMMAND
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout and int(timeout.group(1)) > DEFAULT_TIMEOUT_S


def test_a_stop_is_sigterm_with_time_for_the_drain_and_the_snapshots() -> None:
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    needed = ServiceConfig().shutdown_grace_s + SHUTDOWN_SNAPSHOT_S
    said = re.search(r"docker stop -t (\d+)`, compose `stop_grace_period: (\d+)s`", DOCKERFILE)
    assert said and min(int(said.group(1)), int(said.group(2))) >= needed


def test_the_image_user_is_the_one_kubernetes_runs() -> None:
    (user,) = instructions("USER")
    uid, gid = (int(n) for n in user.split(":"))
    for directory in LAYOUTS.values():
        _, spec, _ = service_workload(gather(directory))
        assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (uid, gid)
