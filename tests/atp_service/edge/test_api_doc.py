"""docs/API.md says what the code does: its generated parts are current, and the published retry
policy is what the Python client uses by default."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from atp_client import RetryPolicy
from atp_client._client import SERVICE_CONFIG
from atp_service.edge.api_doc import rewrite
from atp_service.edge.errors import RETRIED_BY_GRPC


def test_the_generated_parts_of_the_api_doc_are_current(project_root: Path) -> None:
    text = (project_root / "docs" / "API.md").read_text()
    assert rewrite(text) == text, "docs/API.md is stale: run `make api-docs`"


def test_the_default_retry_policy_is_the_published_service_config() -> None:
    published = json.loads(resources.files("atp_client").joinpath("service_config.json").read_text())
    assert RetryPolicy().service_config() == published == SERVICE_CONFIG
    policy = published["methodConfig"][0]["retryPolicy"]
    assert set(policy["retryableStatusCodes"]) == {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"}
    assert {code.name for code in RETRIED_BY_GRPC} == set(policy["retryableStatusCodes"])
    assert policy["maxAttempts"] <= 5  # gRPC's cap: a larger value is silently lowered
