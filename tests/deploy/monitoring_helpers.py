"""What the monitoring tests share: the deploy files, promtool, PromQL metric names, runbook anchors."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy/prometheus/atp-alerts.yml"
RULE_TESTS = ROOT / "deploy/prometheus/atp-alerts.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/atp-service.json"
OPERATIONS = ROOT / "docs/OPERATIONS.md"
RUNBOOK_PREFIX = "docs/OPERATIONS.md#"


def yaml_load(path: Path) -> Any:
    return yaml_loads(path.read_text())


def yaml_loads(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        pytest.fail("pyyaml is missing: `make test` installs the dev extra (pip install -e '.[dev]')")
    return yaml.safe_load(text)


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.fail("promtool is missing: `make bootstrap` (or `make test`) installs Debian's prometheus package "
                    "as root; otherwise run 'sudo apt-get install prometheus'")
    return found


# -- PromQL: the metric names an expression reads ---------------------------------------------------
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects: identifiers that are not functions, keywords, label names
    (inside matchers and grouping clauses), durations or Grafana variables."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, start = match.group(), match.start()
        if text[match.end():].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation; an operator or a constant
        if start > 0 and (text[start - 1].isdigit() or text[start - 1] == "."):
            continue  # the unit of a number or a duration (1e3, offset 5m)
        names.add(word)
    return names


# -- what the processes export ----------------------------------------------------------------------
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def sample_names(registry: CollectorRegistry) -> set[str]:
    """The names of the samples a scrape of ``registry`` can show, children made yet or not."""
    return {family.name + suffix for family in registry.collect()
            for suffix in _SUFFIXES.get(family.type, ("",))}


def standard_names() -> set[str]:
    """``up``, which Prometheus writes for every target, and prometheus_client's process, platform and
    garbage-collector families."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return sample_names(registry) | {"up"}


# -- Markdown ------------------------------------------------------------------------------------------
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to
    hyphens; a repeated one gets -1, -2, ..."""
    seen: Counter[str] = Counter()
    found = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        found.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml_load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]
