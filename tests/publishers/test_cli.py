"""atp-publisher's flags."""

from __future__ import annotations

import pytest

from publishers.cli import build_parser

FLAGS = ["--channel", "web", "--adapter", "jsonl", "--file", "web.jsonl"]


def test_the_metrics_endpoint_listens_on_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATP_METRICS_HOST", raising=False)
    assert build_parser().parse_args(FLAGS).metrics_host == "127.0.0.1"
    monkeypatch.setenv("ATP_METRICS_HOST", "0.0.0.0")  # in a container, for a scraper beside it
    assert build_parser().parse_args(FLAGS).metrics_host == "0.0.0.0"
    assert build_parser().parse_args([*FLAGS, "--metrics-host", "10.0.0.5"]).metrics_host == "10.0.0.5"
