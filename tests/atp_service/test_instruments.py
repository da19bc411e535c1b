"""The lean instruments (atp_service/instruments.py) expose exactly what prometheus_client's would.

Each test builds the same metrics twice, with prometheus_client and with the lean classes, updates
both the same way and compares what a scrape serves, in both exposition formats: any name, HELP,
label, ``le``, value or order that differs fails. ``_created`` values are creation timestamps, so
they are compared by name and labels, and by value only to be near each other.
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics import exposition as openmetrics

from atp_service import instruments, metrics
from atp_service.instruments import Counter, Gauge, Histogram, SizeHistogram

_CREATED = re.compile(r"^(\S+_created(?:\{[^}]*\})?) (\S+)$", re.M)
VALUES = (0, 0.0005, 0.0007, 1, 2, 3, 3.5, 64, 100, 21600, 1e9, -1, math.inf)
"""Observations at, between, under and past the bounds of the service's histograms."""
Pair = tuple[CollectorRegistry, CollectorRegistry]


def scrapes(registry: CollectorRegistry) -> tuple[str, str, list[float]]:
    """The text and OpenMetrics expositions with each ``_created`` value masked, and those values."""
    text = generate_latest(registry).decode()
    om = openmetrics.generate_latest(registry).decode()
    created = [float(value) for _, value in _CREATED.findall(text)]
    return _CREATED.sub(r"\1 <created>", text), _CREATED.sub(r"\1 <created>", om), created


def assert_same(pair: Pair) -> None:
    old, new = (scrapes(registry) for registry in pair)
    assert new[0] == old[0]
    assert new[1] == old[1]
    assert len(new[2]) == len(old[2]) and all(abs(a - b) < 60 for a, b in zip(old[2], new[2], strict=True))


def registries() -> Pair:
    return CollectorRegistry(), CollectorRegistry()


def both(pair: Pair, kind: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The metric ``kind`` built with prometheus_client on the first registry, lean on the second."""
    return (getattr(prometheus_client, kind)(*args, registry=pair[0], **kwargs),
            getattr(instruments, kind)(*args, registry=pair[1], **kwargs))


def update(metric: Any, times: int = 1) -> None:
    """Every kind of update a metric of its type takes, ``times`` over."""
    for _ in range(times):
        if hasattr(metric, "observe"):
            for value in VALUES:
                metric.observe(value)
        elif hasattr(metric, "set"):
            metric.set(7)
            metric.set(-1.25)
        else:
            metric.inc()
            metric.inc(2.5)
            metric.inc(0)


def test_unlabelled_metrics_and_their_names_help_and_buckets() -> None:
    pair = registries()
    made = [both(pair, "Counter", "atp_x_total", "Counted things"),
            both(pair, "Counter", "atp_plain", "A counter named without _total"),
            both(pair, "Gauge", "atp_level", "Help with \\ a backslash\nand a newline"),
            both(pair, "Histogram", "atp_batch", "Sizes", buckets=(1, 2, 4, 8, 16, 32, 64)),
            both(pair, "Histogram", "atp_lag_seconds", "Lags",
                 buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600, 1e7, math.inf)),
            both(pair, "Histogram", "atp_default_seconds", "prometheus_client's default buckets"),
            both(pair, "Counter", "atp_untouched_total", "Never incremented")]
    assert_same(pair)
    for old, new in made[:-1]:
        update(old, 2)
        update(new, 2)
    assert_same(pair)


def test_a_size_histogram_exports_what_a_histogram_of_the_same_observations_would() -> None:
    """Sizes counted per size and turned into buckets at the scrape; anything else (past the largest
    bound, negative, fractional, NaN, infinite) observed the general way, all in one series."""
    pair = registries()
    old = prometheus_client.Histogram("atp_batch", "Sizes", buckets=(1, 2, 4, 8, 16, 32, 64), registry=pair[0])
    new = SizeHistogram("atp_batch", "Sizes", buckets=(1, 2, 4, 8, 16, 32, 64), registry=pair[1])
    assert_same(pair)
    for value in [*range(70), *range(5), True, math.nan, *VALUES]:
        old.observe(value)
        new.observe(value)
    assert_same(pair)
    assert sum(new.sizes) == 65 + 5 + 1 + 5  # the ints from 0 to 64 (of VALUES: 0, 1, 2, 3, 64)


def test_labelled_metrics_their_children_in_order_and_label_values_as_strings() -> None:
    pair = registries()
    counters = both(pair, "Counter", "atp_facts_total", "Facts", ["origin", "kind", "outcome"])
    gauges = both(pair, "Gauge", "atp_depth", "Depth", ["shard"])
    histograms = both(pair, "Histogram", "atp_rpc_seconds", "Latency", ["method", "code"],
                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
    never = both(pair, "Counter", "atp_never_total", "No child yet", ["outcome"])
    assert_same(pair)
    for old, new in (counters, gauges, histograms):
        n = len(new.labelnames)
        for values in (("b",) * n, ("a", *range(n - 1)), ('q"uote\\d\nnew',) * n, ("b",) * n):
            update(old.labels(*values))
            update(new.labels(*values))
        named = {label: f"k{i}" for i, label in enumerate(new.labelnames)}
        update(old.labels(**named))
        update(new.labels(**named))
    assert new.labels("a", 0) is new.labels("a", "0") is new.labels(method="a", code=0)
    assert never[1].labels("x") is never[1].labels("x")
    never[0].labels("x")
    assert_same(pair)


def test_a_removed_child_is_exported_no_more_as_with_prometheus_client() -> None:
    pair = registries()
    gauges = both(pair, "Gauge", "atp_depth", "Depth", ["shard"])
    for gauge in gauges:
        for shard in (0, 1, 2):
            gauge.labels(shard).set(shard + 1)
        gauge.remove(1)  # prometheus_client takes the values as strings; ours, anything ``str`` gives them
        gauge.labels(3).set(4)
    gauges[1].remove(7)  # none such: nothing to do (prometheus_client raises KeyError)
    assert_same(pair)
    assert [s.labels["shard"] for m in gauges[1].collect() for s in m.samples] == ["0", "2", "3"]


def test_created_series_follow_prometheus_clients_switch() -> None:
    pair = registries()
    for old, new in (both(pair, "Counter", "atp_c_total", "C", ["a"]), both(pair, "Histogram", "atp_h", "H")):
        update(old if old._labelnames == () else old.labels("1"))
        update(new if new.labelnames == () else new.labels("1"))
    prometheus_client.disable_created_metrics()
    try:
        assert "_created" not in generate_latest(pair[1]).decode()
        assert_same(pair)
    finally:
        prometheus_client.enable_created_metrics()
    assert "atp_c_created" in generate_latest(pair[1]).decode()


def test_a_nan_observation_counts_in_the_sum_only_as_with_prometheus_client() -> None:
    pair = registries()
    for histogram in both(pair, "Histogram", "atp_h", "H", buckets=(1, 2)):
        histogram.observe(1)
        histogram.observe(math.nan)
    assert pair[1].get_sample_value("atp_h_count") == 1
    assert_same(pair)


def _one_more(pair: Pair, kind: str, touch: Callable[[Any], object], *labelnames: str) -> None:
    old, new = both(pair, kind, "atp_m", "M", labelnames)
    update(old.labels("y") if labelnames else old)
    update(new.labels("y") if labelnames else new)
    touch(new)


DIFFERENCES: dict[str, Callable[[Pair], object]] = {
    "a count": lambda pair: _one_more(pair, "Counter", lambda m: m.inc()),
    "a level": lambda pair: _one_more(pair, "Gauge", lambda m: m.set(1)),
    "an observation": lambda pair: _one_more(pair, "Histogram", lambda m: m.observe(0.5)),
    "a child": lambda pair: _one_more(pair, "Counter", lambda m: m.labels("z"), "a"),
    "a bucket": lambda pair: (prometheus_client.Histogram("atp_m", "M", buckets=(1, 2), registry=pair[0]),
                              Histogram("atp_m", "M", buckets=(1, 3), registry=pair[1])),
    "a label name": lambda pair: (prometheus_client.Counter("atp_m", "M", ["a"], registry=pair[0]).labels("x"),
                                  Counter("atp_m", "M", ["b"], registry=pair[1]).labels("x")),
    "a name": lambda pair: (prometheus_client.Gauge("atp_m", "M", registry=pair[0]),
                            Gauge("atp_n", "M", registry=pair[1])),
    "a help": lambda pair: (prometheus_client.Gauge("atp_m", "M", registry=pair[0]),
                            Gauge("atp_m", "N", registry=pair[1])),
}


@pytest.mark.parametrize("difference", DIFFERENCES)
def test_the_comparison_sees_what_differs(difference: str) -> None:
    pair = registries()
    DIFFERENCES[difference](pair)
    with pytest.raises(AssertionError):
        assert_same(pair)


def instruments_of(group: object) -> Iterator[tuple[str, Any]]:
    for name, value in vars(group).items():
        if isinstance(value, MetricWrapperBase | Counter | Gauge | Histogram):
            yield name, value
        elif hasattr(value, "__dict__") and not isinstance(value, CollectorRegistry):
            yield from ((f"{name}.{inner}", metric) for inner, metric in instruments_of(value))


def test_the_services_own_metrics_export_as_they_did_with_prometheus_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every metric ``Metrics`` declares (but the process collectors, whose values move), built as
    before and lean, each child touched the same way."""
    monkeypatch.setattr(metrics, "process_collectors", lambda registry: None)
    with monkeypatch.context() as before:
        for kind in ("Counter", "Gauge", "Histogram"):
            before.setattr(metrics, kind, getattr(prometheus_client, kind))
        before.setattr(metrics, "SizeHistogram", prometheus_client.Histogram)
        old = metrics.Metrics(CollectorRegistry())
    new = metrics.Metrics(CollectorRegistry())
    olds, news = dict(instruments_of(old)), dict(instruments_of(new))
    assert list(olds) == list(news) and all(isinstance(m, Counter | Gauge | Histogram) for m in news.values())
    assert not any(isinstance(m, MetricWrapperBase) for m in news.values())
    seen: set[int] = set()
    for name, metric in news.items():
        if id(metric) in seen:  # the edge's shed and facts are the engine's and the intake's
            continue
        seen.add(id(metric))
        for values in (("a",), ("b",)) if metric.labelnames else ((),):
            labels = (values * len(metric.labelnames))[:len(metric.labelnames)]
            update(olds[name].labels(*labels) if labels else olds[name])
            update(metric.labels(*labels) if labels else metric)
    assert_same((old.registry, new.registry))


def test_prometheus_clients_refusals_are_kept() -> None:
    registry = CollectorRegistry()
    counter = Counter("atp_c_total", "C", ["a", "b"], registry=registry)
    plain = Counter("atp_p_total", "P", registry=registry)
    refused: list[Callable[[], object]] = [
        lambda: plain.inc(-1), lambda: counter.labels("x", "y").inc(-0.5), lambda: counter.inc(),
        lambda: counter.labels("x"), lambda: counter.labels("x", "y", "z"), lambda: counter.labels(a="x"),
        lambda: counter.labels("x", b="y"), lambda: counter.labels(a="x", c="y"), lambda: plain.labels(),
        lambda: plain.labels("x"), lambda: Gauge("atp_g", "G", ["s"], registry=None).set(1),
        lambda: Gauge("atp_g", "G", registry=None).set("many"),  # type: ignore[arg-type]
        lambda: Histogram("atp_h", "H", ["s"], registry=None).observe(1),
        lambda: Histogram("atp_h", "H", ["le"], registry=None), lambda: Counter("atp_c", "C", ["__a"], registry=None),
        lambda: Histogram("atp_h", "H", buckets=(2, 1), registry=None),
        lambda: Histogram("atp_h", "H", buckets=(math.inf,), registry=None),
        lambda: Histogram("atp_h", "H", buckets=(-1, 1), registry=None),
        lambda: Counter("atp_c", "C", registry=registry),  # its samples' names are taken
        lambda: Gauge("", "nameless", registry=None)]
    for call in refused:
        with pytest.raises(ValueError):
            call()
    assert registry.get_sample_value("atp_c_total", {"a": "x", "b": "y"}) == 0.0
    assert registry.get_sample_value("atp_p_total") == 0.0


def test_a_scrape_on_another_thread_reads_while_the_loop_updates() -> None:
    """The single-writer rule: updates on one thread, scrapes on another. A scrape never fails on a
    child made meanwhile, and a histogram's ``+Inf`` bucket and ``_count`` always agree."""
    registry = CollectorRegistry()
    counter = Counter("atp_c_total", "C", ["k"], registry=registry)
    histogram = Histogram("atp_h", "H", buckets=(1, 2, 4), registry=registry)
    stop, problems, scrapes = threading.Event(), list[object](), [0]

    def scrape() -> None:
        while not stop.is_set():
            try:
                values = {(s.name, s.labels.get("le")): s.value for f in registry.collect() for s in f.samples}
            except Exception as exc:  # a child made during the scrape, say
                problems.append(exc)
                return
            if values[("atp_h_bucket", "+Inf")] != values[("atp_h_count", None)]:
                problems.append(values)
            scrapes[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        made = 0
        while made < 20_000 and (scrapes[0] < 5 or made < 1000):
            counter.labels(str(made)).inc()
            histogram.observe(made % 7)
            made += 1
    finally:
        stop.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert not problems
    assert registry.get_sample_value("atp_h_count") == made and len(counter.collect()[0].samples) == 2 * made


def test_a_reading_is_a_gauge_read_at_each_scrape() -> None:
    """``Reading`` serves what prometheus_client's ``Gauge.set_function`` would: 0 before it follows
    anything, then the function's value as it is at each scrape."""
    pair = registries()
    old = prometheus_client.Gauge("atp_calls_now", "Calls now", registry=pair[0])
    new = instruments.Reading("atp_calls_now", "Calls now", registry=pair[1])
    assert_same(pair)
    active = [3]
    old.set_function(lambda: active[0])
    new.follow(lambda: active[0])
    assert_same(pair)
    active[0] = 0
    assert_same(pair)
    assert "atp_calls_now 0.0" in generate_latest(pair[1]).decode()


def test_a_reading_with_labels_reads_each_series_at_each_scrape() -> None:
    """Per label values, what prometheus_client's ``Gauge(...).labels(...).set_function`` serves: a
    series once followed, its function's value at each scrape; following again replaces it."""
    pair = registries()
    old = prometheus_client.Gauge("atp_waiting", "Waiting", ["shard"], registry=pair[0])
    new = instruments.Reading("atp_waiting", "Waiting", ["shard"], registry=pair[1])
    assert_same(pair)
    waiting = {"0": [2], "1": [0]}
    for shard in ("0", "1"):
        old.labels(shard).set_function(lambda shard=shard: waiting[shard][0])
        new.follow(lambda shard=shard: waiting[shard][0], int(shard))  # as prometheus_client, str() of it
    assert_same(pair)
    waiting["0"][0], waiting["1"][0] = 0, 7
    assert_same(pair)
    again = [5]
    old.labels("0").set_function(lambda: again[0])
    new.follow(lambda: again[0], "0")
    assert_same(pair)
    assert 'atp_waiting{shard="0"} 5.0' in generate_latest(pair[1]).decode()
    with pytest.raises(ValueError):
        new.follow(lambda: 1.0)


def test_a_reading_refuses_a_name_taken() -> None:
    registry = CollectorRegistry()
    instruments.Reading("atp_calls_now", "Calls now", registry=registry)
    with pytest.raises(ValueError):
        instruments.Reading("atp_calls_now", "Again", registry=registry)


def test_the_hot_paths_counts_of_one_export_what_observe_and_inc_would() -> None:
    """The unary Reserve's shortcuts — ``sizes[1] += 1`` for a turn of one message and a commit of one entry
    (``ShardActor._turn_now``, ``LogStore._flush``), ``value += 1`` on ``atp_reservations_total``'s child
    (``Engine.reserve``) — export exactly what ``observe(1)`` and ``inc()`` would, mixed with other updates,
    on the service's own histograms' buckets."""
    own = metrics.EngineMetrics(), metrics.StorageMetrics()
    for new in (own[0].batch_size, own[1].pipeline_size):
        pair = registries()
        bounds = [b for b in new._bounds if b != math.inf]
        old = prometheus_client.Histogram("atp_sizes", "Sizes", buckets=bounds, registry=pair[0])
        lean = SizeHistogram("atp_sizes", "Sizes", buckets=bounds, registry=pair[1])
        for value in (1, 3, 1, 1, 200, 0):
            old.observe(1)
            lean.sizes[1] += 1
            old.observe(value)
            lean.observe(value)
        assert_same(pair)
    pair = registries()
    old_counter, new_counter = both(pair, "Counter", "atp_things_total", "Things", ["outcome"])
    for outcome in ("held", "rejected", "held", "replayed"):
        old_counter.labels(outcome).inc()
        new_counter.labels(outcome).value += 1
    old_counter.labels("held").inc(2)
    new_counter.labels("held").inc(2)
    assert_same(pair)
