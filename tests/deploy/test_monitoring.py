"""The alert rules and the dashboard under deploy/: valid for Prometheus and Grafana, reading only
metrics the service and its publishers export, each alert leading to a runbook section."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from atp_service.metrics import Metrics
from publishers import JsonlAdapter, Publisher, PublisherConfig
from publishers._metrics import PublisherMetrics
from tests.atp_service.test_metrics_docs import declared_labels
from tests.conftest import ServiceFactory

from .monitoring_helpers import (
    DASHBOARD,
    OPERATIONS,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_TESTS,
    RULES,
    RUNBOOK_PREFIX,
    alert_rules,
    anchors,
    metric_names,
    promtool,
    sample_names,
    standard_names,
    yaml_load,
)


def run_promtool(*args: str) -> str:
    done = subprocess.run([promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_promtool_accepts_the_rules_and_the_prometheus_config() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", str(RULES.relative_to(ROOT)))
    out = run_promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert "1 rule files found" in out, out  # the config loads the rules file


def test_promtool_unit_tests_fire_the_oversold_and_service_down_alerts() -> None:
    run_promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    fired = {case["alertname"] for test in yaml_load(RULE_TESTS)["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {"ATPOversold", "ATPServiceDown", "ATPDoorRefusals", "ATPRedisAppendFailures"} <= fired


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    rules = alert_rules()
    sections = anchors(OPERATIONS.read_text())
    assert len(rules) >= 20
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "two alerts share a name"
    for rule in rules:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), name
        notes = rule.get("annotations", {})
        assert notes.get("summary") and notes.get("description"), name
        url = notes.get("runbook_url", "")
        assert url.startswith(RUNBOOK_PREFIX), f"{name}: runbook_url {url!r} is not a section of docs/OPERATIONS.md"
        assert url.removeprefix(RUNBOOK_PREFIX) in sections, f"{name}: no heading in OPERATIONS.md makes {url!r}"


def test_the_alerts_table_of_the_operations_guide_names_every_alert_with_its_runbook() -> None:
    doc = OPERATIONS.read_text()
    for rule in alert_rules():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{rule['alert']}` |")), None)
        assert row is not None, f"docs/OPERATIONS.md has no alerts table row for {rule['alert']}"
        anchor = rule["annotations"]["runbook_url"].removeprefix("docs/OPERATIONS.md")
        assert f"]({anchor})" in row, f"the row of {rule['alert']} does not link {anchor}"


@pytest.fixture
async def exported(start_service: ServiceFactory) -> set[str]:
    """Every sample name a scrape of a real service or publisher can show, and the standard ones."""
    service, _ = await start_service()
    return sample_names(service.metrics.registry) | sample_names(PublisherMetrics().registry) | standard_names()


async def test_the_rules_read_only_metrics_the_service_and_its_publishers_export(exported: set[str]) -> None:
    assert {"atp_reservations_total", "atp_log_append_seconds_bucket", "atp_publisher_deliveries_total"} <= exported
    groups = yaml_load(RULES)["groups"]
    unknown = {(rule.get("alert") or rule.get("record"), name) for group in groups for rule in group["rules"]
               for name in metric_names(rule["expr"]) if name not in exported}
    assert not unknown, f"rules read metrics nothing exports: {sorted(unknown)}"


MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SERIES_LABELS = {"job", "instance", "le"}  # Prometheus' own, and a histogram bucket's
SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def test_the_rules_and_the_dashboard_select_and_group_by_labels_their_metrics_have(tmp_path: Path) -> None:
    """A label misspelt in a matcher or a grouping (``outcome="retry"``, ``by (chanel)``) selects or
    groups nothing and the alert never fires, silently: promtool checks only the syntax, and the rules
    read only the metric names otherwise. Each label a rule or panel names must be one its metrics
    declare, and a value it matches exactly one they export where their series start at 0."""
    service, publisher = Metrics(), PublisherMetrics()
    Publisher(PublisherConfig(channel="web"), None, JsonlAdapter(tmp_path / "out.jsonl"), publisher)  # type: ignore[arg-type]
    declared = declared_labels(service) | declared_labels(publisher)
    values: dict[tuple[str, str], set[str]] = {}
    for registry in (service.registry, publisher.registry):
        for family in registry.collect():
            for sample in family.samples:
                for label, value in sample.labels.items():
                    values.setdefault((family.name, label), set()).add(value)

    def family(name: str) -> str | None:
        for suffix in ("", *SERIES_SUFFIXES):
            if name.endswith(suffix) and (base := name.removesuffix(suffix)) in declared:
                return base
        return None

    expressions = [(rule.get("alert") or rule.get("record"), rule["expr"])
                   for group in yaml_load(RULES)["groups"] for rule in group["rules"]]
    expressions += [(panel["title"], target["expr"]) for panel in dashboard_panels(json.loads(DASHBOARD.read_text()))
                    for target in panel.get("targets", [])]
    problems = []
    for who, expr in expressions:
        read = {base for name in metric_names(expr) if (base := family(name)) is not None}
        known = SERIES_LABELS | {label for base in read for label in declared[base]}
        for name, selector in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr):
            base = family(name)
            for label, op, value in MATCHER.findall(selector):
                if base is None or label in SERIES_LABELS:
                    continue
                if label not in declared[base]:
                    problems.append(f"{who}: {name} has no label {label!r} ({declared[base]})")
                elif op == "=" and (base, label) in values and value not in values[(base, label)]:
                    problems.append(f"{who}: {name}{{{label}={value!r}}} is none of {sorted(values[(base, label)])}")
        for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
            problems += [f"{who}: groups by {label!r}, a label of none of {sorted(read)}"
                         for label in (part.strip() for part in clause.split(",")) if label and label not in known]
    assert not problems, "labels that select or group nothing:\n" + "\n".join(problems)


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])  # a collapsed row holds its panels
    return panels


async def test_the_dashboard_queries_only_exported_metrics_through_its_datasource_variable(
        exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard_panels(dashboard) if p["type"] != "row"]
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "two panels share an id"
    read: set[str] = set()
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: {target['expr']!r} reads no metric"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} reads metrics nothing exports: {sorted(unknown)}"
            read |= names
    wanted = {"atp_reservations_total", "atp_facts_total", "atp_oversold_units", "atp_shed_total",
              "atp_grpc_server_calls_started_total", "atp_grpc_server_calls_completed_total",
              "atp_channel_publish_delay_seconds_bucket", "atp_channel_pending", "atp_publisher_deliveries_total",
              "atp_log_append_seconds_bucket", "process_cpu_seconds_total", "process_resident_memory_bytes",
              "atp_event_loop_lag_seconds"}
    assert wanted <= read, f"the dashboard shows nothing of {sorted(wanted - read)}"


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (job, le) (rate(atp_log_append_seconds_bucket{code="OK", le!="+Inf"}[5m])) > 0.02',
     {"atp_log_append_seconds_bucket"}),
    ("a_total - on (job) group_left (version) atp_build_info offset 5m > 1e3", {"a_total", "atp_build_info"}),
    ('histogram_quantile(0.99, sum(rate(x_bucket[$__rate_interval])) by (le)) and up{job="atp"} == bool 0',
     {"x_bucket", "up"}),
    ("absent(up{job=\"atp-service\"}) unless atp_procesess_live", {"up", "atp_procesess_live"}),
])
def test_metric_names_finds_every_metric_an_expression_reads(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_anchors_follow_githubs_rules() -> None:
    doc = "# Top\n## Overload (more calls than the service can take)\n```\n# not a heading\n```\n" \
          "### `atp_x` rises: what now?\n## Top\n"
    assert anchors(doc) == {"top", "overload-more-calls-than-the-service-can-take", "atp_x-rises-what-now", "top-1"}


SHARED_GAUGES = ("atp_ingest_pending", "atp_ingest_lag", "atp_processes_live", "atp_groups_free")
"""Gauges every service process sharing a keyspace reads alike from Redis (the input streams' consumer group, the
membership, the leases): each reports the same number, not its share of it."""


def test_the_rules_and_the_dashboard_never_sum_a_gauge_every_process_reports_alike() -> None:
    """Summed over the processes, the consumer group's pending entries read N times what waits (the dashboard's
    "Pending input entries" with N processes), and an alert kept per process fired once per process for one
    group's backlog (ATPIngestPendingGrowing): ``max`` over the processes, as ATPIngestBehind has it."""
    expressions = [(rule.get("alert") or rule.get("record"), rule["expr"])
                   for group in yaml_load(RULES)["groups"] for rule in group["rules"]]
    expressions += [(panel["title"], target["expr"]) for panel in dashboard_panels(json.loads(DASHBOARD.read_text()))
                    for target in panel.get("targets", [])]
    summed = [f"{who}: {expr}" for who, expr in expressions for name in SHARED_GAUGES
              if re.search(rf"\bsum\b\s*(?:by\s*\([^)]*\)\s*)?\(\s*{name}\b", expr)]
    unaggregated = [f"{who}: {expr}" for who, expr in expressions if who == "ATPIngestPendingGrowing"
                    and re.match(r"\s*atp_ingest_pending\b", expr)]
    assert not summed and not unaggregated, "\n".join(summed + unaggregated)


def test_the_counter_atp_order_committed_nowhere_reads_is_there_at_0_from_the_start() -> None:
    """Defect (found by review): ``atp_order_sagas_total{outcome="committed_nowhere"}`` appeared only at its first
    count, at 1: ``increase()`` sees nothing of a series' first value, so ``ATPOrderCommittedNowhere`` (and any
    ``increase(...) > 0`` rule the guide asks for) never fired for an order found once — often the only time, the
    order fulfilled after (``zeroed``)."""
    registry = Metrics().registry
    assert registry.get_sample_value("atp_order_sagas_total", {"outcome": "committed_nowhere"}) == 0
