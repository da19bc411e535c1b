"""Evaluate the alert rules over a real service's scraped metrics: two scrapes a minute apart in
Prometheus' eyes, the change between them kept up for half an hour (promtool ``test rules``)."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from .monitoring_helpers import RULES, promtool

Scrape = dict[str, float]
TARGET = {"job": "atp-service", "instance": "atp:9464"}
MINUTES = 30
# Alerts on how busy the machine is (a gauge read at one instant, a latency quantile): a loaded test
# machine can fire them in any test, whatever the fault, so they are left out of what is compared.
LOAD_DEPENDENT = frozenset({"ATPEventLoopLag", "ATPReserveSlow", "ATPRedisAppendSlow"})
# Alerts on how far a process's clock strays from Redis's TIME: the services of these tests run a ManualClock
# standing at a time of the test's choosing, off the true time by design and by however long the run took before
# housekeeping measured it, so they fire or not by timing. deploy/prometheus/atp-alerts.test.yml tests them.
CLOCK_DEPENDENT = frozenset({"ATPClockAdrift", "ATPClockPromiseAtRisk"})


def scrape(port: int, target: dict[str, str] = TARGET) -> Scrape:
    """Every sample of the endpoint on ``port``, as a PromQL series selector -> its value, with the
    labels Prometheus adds (job, instance)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: Scrape = {"up" + _selector(target): 1.0}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[sample.name + _selector({**sample.labels, **target})] = float(sample.value)
    return samples


def _selector(labels: dict[str, str]) -> str:
    escaped = (f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for name, value in sorted(labels.items()))
    return "{" + ", ".join(escaped) + "}"


def firing(before: Scrape, after: Scrape, tmp_path: Path, held: frozenset[str] = frozenset()) -> set[str]:
    """The alerts that fire after ``MINUTES`` of every series going from ``before`` to ``after``
    each minute (a series only in ``after`` appears at its value and stays there), but those of
    ``LOAD_DEPENDENT`` and ``CLOCK_DEPENDENT``. The metrics named in ``held`` (gauges of a state, such as 1: holds the
    lease) go from ``before`` to ``after`` once and stay there: counted on, 1 -> 0 would go negative."""
    series = []
    for name, value in after.items():
        start = before.get(name)
        step = value - start if start is not None else 0.0
        values = f"_ {value}x{MINUTES}" if start is None else f"{start}{step:+}x{MINUTES}"
        if start is not None and name.split("{", 1)[0] in held:
            values = f"{start} {value}x{MINUTES - 1}"
        series.append({"series": name, "values": values})
    names = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"] if "alert" in rule]
    case = {"rule_files": [str(RULES)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series,
                       "alert_rule_test": [{"eval_time": f"{MINUTES}m", "alertname": name, "exp_alerts": []}
                                           for name in names]}]}
    path = tmp_path / "scraped.test.yml"
    path.write_text(yaml.safe_dump(case))
    done = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return set()
    fired = set(re.findall(r"alertname: (\w+)", done.stdout + done.stderr))
    assert fired, done.stdout + done.stderr
    return fired - LOAD_DEPENDENT - CLOCK_DEPENDENT
