"""The counters the alert rules take ``increase()`` of are exported at 0 from the start.

A labelled child exists only once touched, and ``increase()``/``rate()`` see nothing of a series'
first value: ``increase(atp_log_settles_total[10m]) > 0`` stays empty when the series appears at 3
(the promtool case below), so a first event — often the only one, such as one failover's appends
in doubt or one refused batch — would never page.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from atp_service.config import IngestSettings, ServiceConfig
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics, Metrics
from publishers import JsonlAdapter, Publisher, PublisherConfig, PublisherMetrics

RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/atp-alerts.yml"


def test_the_services_alerted_counters_start_at_0() -> None:
    samples = Metrics().registry
    for name, labels in [("atp_log_settles_total", {"outcome": "landed"}),
                         ("atp_log_settles_total", {"outcome": "not_landed"}),
                         ("atp_groups_given_up_total", {"why": "lease"}),
                         ("atp_groups_given_up_total", {"why": "fenced"}),
                         ("atp_channel_settles_total", {"outcome": "refused"})]:
        assert samples.get_sample_value(name, labels) == 0.0, (name, labels)


class _Client:
    def set_response_callback(self, *_: Any) -> None:
        pass


def test_each_input_streams_dead_letters_start_at_0() -> None:
    metrics = IntakeMetrics()
    settings: IngestSettings = ServiceConfig(input_streams=("atp:in:pos", "atp:in:wms")).ingest_settings
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=metrics)  # type: ignore[arg-type]
    StreamIngestor(_Client(), desk, settings, None)  # type: ignore[arg-type]
    exported = {(s.labels["stream"], s.value) for m in metrics.dead_lettered.collect() for s in m.samples
                if s.name == "atp_dead_lettered_total"}
    assert exported == {("atp:in:pos", 0.0), ("atp:in:wms", 0.0)}


def test_a_publishers_counters_start_at_0(tmp_path: Path) -> None:
    metrics = PublisherMetrics()
    Publisher(PublisherConfig(channel="web"), None, JsonlAdapter(tmp_path / "out.jsonl"), metrics)
    registry = metrics.registry
    for outcome in ("delivered", "retried", "failed", "superseded", "duplicate"):
        labels = {"channel": "web", "adapter": "jsonl", "outcome": outcome}
        assert registry.get_sample_value("atp_publisher_deliveries_total", labels) == 0.0, outcome
    assert registry.get_sample_value("atp_publisher_dead_lettered_total", {"channel": "web"}) == 0.0
    assert registry.get_sample_value("atp_publisher_rate_limited_total", {"channel": "web"}) == 0.0
    assert registry.get_sample_value("atp_publisher_not_replicated_total", {"channel": "web"}) == 0.0


PROMTOOL_CASE = """
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'atp_log_settles_total{{job="atp-service", instance="a:9464", outcome="landed"}}'
        values: '{settles}'
    promql_expr_test:
      - expr: count({expr})
        eval_time: 4m
        exp_samples: {samples}
"""


def _rule(name: str) -> str:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    expr: str = next(rule["expr"] for rule in rules if rule.get("alert") == name)
    return expr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (make bootstrap)")
@pytest.mark.parametrize(("settles", "fires"), [("0 0 3 3 3", True), ("_ _ 3 3 3", False)])
def test_increase_sees_a_rise_from_0_and_not_a_series_first_value(tmp_path: Path, settles: str, fires: bool) -> None:
    case = tmp_path / "case.yml"
    samples = "[{labels: '{}', value: 1}]" if fires else "[]"
    case.write_text(PROMTOOL_CASE.format(settles=settles, expr=_rule("ATPLogAppendsInDoubt"), samples=samples))
    done = subprocess.run(["promtool", "test", "rules", str(case)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
