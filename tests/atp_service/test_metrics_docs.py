"""The metrics the docs promise are the metrics a running service and publisher export.

docs/OPERATIONS.md's reference tables (header ``| Metric | Type | Meaning |``) list every ``atp_``
family once, with its type and exact label names; any other mention of a metric in the docs
(a code span such as ``atp_facts_total{outcome="quarantined"}``) names one that is exported, with
labels it has. Dashboards and alert rules are written from these tables.
"""

from __future__ import annotations

import asyncio
import platform
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import grpc
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from atp_service.instruments import Counter, Gauge, Histogram
from atp_service.storage.nodes import connect_any
from publishers import JsonlAdapter, Publisher, PublisherConfig, PublisherMetrics
from tests.atp_service.channel_helpers import fact, wait_for_updates, write_estate
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
REFERENCE_HEADER = re.compile(r"^\|\s*Metric\s*\|\s*Type\s*\|\s*Meaning\s*\|\s*$")
REFERENCE_ROW = re.compile(r"^\|\s*`(?P<name>[a-z_][a-z0-9_]*)(?:\{(?P<labels>[^}]*)\})?`\s*\|\s*(?P<type>\w+)\s*\|")
METRIC_SPAN = re.compile(r"(?P<name>(?:atp|process|python)_[a-z0-9_]+)(?:\{(?P<selector>[^}]*)\})?")
PACKAGES = {"atp_client", "atp_service"}
"""Code spans shaped like a metric name that name the project's packages instead."""
HISTOGRAM_SERIES = {"_bucket": {"le"}, "_count": set(), "_sum": set()}
PROCESS_FAMILIES = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                    "python_gc_objects_collected_total", "python_gc_collections_total", "python_info")


@dataclass(frozen=True)
class Family:
    type: str
    labels: frozenset[str]

    def shown(self, name: str) -> str:
        labels = f"{{{','.join(sorted(self.labels))}}}" if self.labels else ""
        return f"`{name}{labels}` ({self.type})"


@dataclass
class Exported:
    service: dict[str, Family]
    publisher: dict[str, Family]
    service_registry: CollectorRegistry
    publisher_registry: CollectorRegistry

    @property
    def every(self) -> dict[str, Family]:
        shared = {name for name in self.service.keys() & self.publisher.keys() if name.startswith("atp_")}
        assert not shared, f"{shared}: one name, two meanings"
        return {**self.publisher, **self.service}


def declared_labels(*holders: object) -> dict[str, tuple[str, ...]]:
    """Label names as each metric object was declared: a labelled family exports its label names only
    once it has a child, and a test cannot make every outcome happen (a Redis Cluster saga, a lost lease)."""
    found: dict[str, tuple[str, ...]] = {}
    for holder in holders:
        for value in vars(holder).values():
            if isinstance(value, Counter | Gauge | Histogram):
                found[value.name] = value.labelnames
            elif isinstance(value, MetricWrapperBase):
                found[value.describe()[0].name] = value._labelnames  # no public accessor in prometheus_client
            elif hasattr(value, "__dict__") and not isinstance(value, CollectorRegistry):
                found |= declared_labels(value)
    return found


def families(registry: CollectorRegistry, declared: dict[str, tuple[str, ...]]) -> dict[str, Family]:
    """Every family ``registry`` serves, by the name a query uses (counters with ``_total``)."""
    out: dict[str, Family] = {}
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        sampled = {label for sample in family.samples for label in sample.labels} - {"le"}
        labels = sampled if family.samples else set(declared.get(family.name, ()))
        out[name] = Family(family.type, frozenset(labels))
    return out


async def run_publisher(redis_url: str, channel: str, tmp_path: Path) -> PublisherMetrics:
    """A real publisher delivering what the service published on ``channel`` to a file, stopped once
    it delivered something."""
    metrics = PublisherMetrics()
    client = connect_any(redis_url, 5.0)
    out = tmp_path / "feed.jsonl"
    publisher = Publisher(PublisherConfig(channel=channel, group="jsonl", block_ms=50, rate_limit_per_s=10_000),
                          client, JsonlAdapter(out), metrics)
    task = asyncio.create_task(publisher.run())
    try:
        for _ in range(500):
            if out.exists() and out.read_text().strip():
                break
            assert not task.done(), task
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the publisher of {channel} delivered nothing")
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()
    return metrics


@pytest.fixture
async def exported(start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> Exported:
    """A service with channels that took facts, a reservation and published, and a publisher that
    delivered one of its channels: what each of their registries serves."""
    service, client = await start_service(estate=write_estate(tmp_path))
    await client.record_events([fact("f1", "COUNT", "sku-a", "dc-1", 40, T)])
    await client.reserve("r1", [("sku-a", "dc-1", 1)])
    await wait_for_updates(redis_url, "market", 1)
    publisher = await run_publisher(redis_url, "market", tmp_path)
    return Exported(families(service.metrics.registry, declared_labels(service.metrics)),
                    families(publisher.registry, declared_labels(publisher)),
                    service.metrics.registry, publisher.registry)


def documents(root: Path) -> dict[str, str]:
    paths = [*sorted((root / "docs").glob("*.md")), root / "README.md", root / "benchmarks" / "README.md"]
    return {str(path.relative_to(root)): path.read_text() for path in paths}


def reference_rows(text: str) -> list[tuple[str, Family] | str]:
    """The rows of every reference table: (name, family), or the row itself where it is not understood."""
    rows: list[tuple[str, Family] | str] = []
    lines = text.splitlines()
    for at, line in enumerate(lines):
        if not REFERENCE_HEADER.match(line):
            continue
        for row in lines[at + 2:]:
            if not row.startswith("|"):
                break
            m = REFERENCE_ROW.match(row)
            if m is None:
                rows.append(row)
                continue
            labels = frozenset(label.strip() for label in (m["labels"] or "").split(",") if label.strip())
            rows.append((m["name"], Family(m["type"], labels)))
    return rows


def differences(documented: list[tuple[str, Family] | str], exported: dict[str, Family]) -> list[str]:
    said: dict[str, Family] = {}
    problems = [f"a reference row names no single metric as `name{{labels}}` | type |: {row}"
                for row in documented if isinstance(row, str)]
    for name, family in (row for row in documented if not isinstance(row, str)):
        if name in said:
            problems.append(f"{name}: documented twice ({said[name].shown(name)} and {family.shown(name)})")
        said[name] = family
    for name in sorted(said.keys() | exported.keys()):
        doc, real = said.get(name), exported.get(name)
        if doc is None and real is not None:
            problems.append(f"{name}: exported as {real.shown(name)} but not in a reference table")
        elif real is None and doc is not None:
            problems.append(f"{name}: documented as {doc.shown(name)} but not exported")
        elif doc is not None and real is not None and doc != real:
            problems.append(f"{name}: documented as {doc.shown(name)}, exported as {real.shown(name)}")
    return problems


@dataclass(frozen=True)
class Mention:
    """A code span naming a metric: ``name{a,b}`` lists its labels (all of them), ``name{a="x"}``
    selects series by some."""

    name: str
    labels: frozenset[str]
    listed: bool

    def problem(self, exported: dict[str, Family]) -> str | None:
        family, extra = exported.get(self.name), set[str]()
        for suffix, series_labels in HISTOGRAM_SERIES.items():
            base = exported.get(self.name.removesuffix(suffix))
            if family is None and self.name.endswith(suffix) and base is not None and base.type == "histogram":
                family, extra = base, series_labels
        if family is None:
            return f"{self.name}: named but not exported"
        said = f"{self.name}{{{','.join(sorted(self.labels))}}}"
        if self.listed and self.labels != family.labels:
            return f"{said} lists labels, but it is exported as {family.shown(self.name)}"
        if not self.labels <= family.labels | extra:
            return f"{said}: no label {sorted(self.labels - family.labels - extra)} in {family.shown(self.name)}"
        return None


def mentions(text: str) -> list[Mention]:
    """Each code span of ``text`` that is a metric name, with the label names it uses."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # code blocks: commands, configuration
    found = []
    for span in re.findall(r"`([^`]+)`", prose):
        m = METRIC_SPAN.fullmatch(" ".join(span.split()).replace("\\|", "|"))
        if m is not None and m["name"] not in PACKAGES:
            selector = re.sub(r'"[^"]*"', "", m["selector"] or "")
            labels = frozenset(part.split("=")[0].strip(" !~") for part in selector.split(",")) - {""}
            found.append(Mention(m["name"], labels, listed=bool(labels) and "=" not in selector))
    return found


def test_every_exported_metric_is_in_a_reference_table_once_with_its_type_and_labels(
        exported: Exported, project_root: Path) -> None:
    text = (project_root / "docs" / "OPERATIONS.md").read_text()
    ours = {name: family for name, family in exported.every.items() if name.startswith("atp_")}
    problems = differences(reference_rows(text), ours)
    assert not problems, "docs/OPERATIONS.md and the exported metrics differ:\n" + "\n".join(problems)


def test_every_metric_the_docs_name_is_exported_with_the_labels_they_give_it(
        exported: Exported, project_root: Path) -> None:
    every = exported.every
    problems = [f"{doc}: {problem}" for doc, text in documents(project_root).items()
                for mention in mentions(text) if (problem := mention.problem(every)) is not None]
    assert not problems, "the docs name metrics that are not exported so:\n" + "\n".join(problems)


def test_the_service_and_the_publisher_export_their_process_and_build(exported: Exported) -> None:
    for who, found in (("service", exported.service), ("publisher", exported.publisher)):
        missing = [name for name in PROCESS_FAMILIES if name not in found]
        assert not missing, f"the {who} does not export {missing}"
    assert (exported.service_registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
    running = {"version": version("atp-service"), "python": platform.python_version()}
    service = {**running, "grpc": grpc.__version__, "redis_py": redis.__version__}
    assert exported.service_registry.get_sample_value("atp_build_info", service) == 1
    publisher = {**running, "redis_py": redis.__version__, "httpx": version("httpx")}
    assert exported.publisher_registry.get_sample_value("atp_publisher_build_info", publisher) == 1
