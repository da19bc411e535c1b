"""Lean ``Counter``, ``Gauge`` and ``Histogram``: the part of prometheus_client's API the service
uses, at a fraction of its cost per update.

prometheus_client takes a lock per value update and scans a histogram's buckets in Python: over a
tenth of a unary Reserve's Python work. These update with plain attribute arithmetic and find a
bucket with ``bisect``. They are prometheus_client custom collectors, registered on the given
registry and yielding its metric families, so a scrape shows what its own instruments would: the
same family and sample names, HELP, labels, ``le`` values, ``_count``/``_sum``/``_created``
samples, in the same order (``PROMETHEUS_DISABLE_CREATED_SERIES`` honoured).

**Single writer.** Every update must happen on one thread, the event loop's (the service is
single-threaded asyncio): ``x += 1`` without a lock is not atomic, and two writing threads would
lose updates. A scrape from another thread (prometheus_client's HTTP server) only reads: a child is
stored whole once made; ``collect`` copies the children's dict and a histogram's counts (each copy
one C call under the GIL) and derives ``+Inf`` and ``_count`` from that one copy, so they agree.
``_sum`` is read apart and may be an observation ahead of the buckets or behind: prometheus_client
does not update sum and buckets under one lock either.

Left out (the service uses none): exemplars, ``time()``, ``remove``/``clear``, multiprocess mode,
gauge ``inc``/``dec``/``set_function`` (``Reading`` is a gauge read at each scrape instead), negative
buckets (prometheus_client then drops ``_sum``).
A ``str`` subclass whose ``str()`` is not its value (a ``(str, Enum)`` member) may find the child
of the plain string equal to it, where prometheus_client would make one named by its ``str()``.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Generic, NoReturn, Protocol, TypeVar

from prometheus_client import metrics as _client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.utils import INF, floatToGoString

__all__ = ["Counter", "Gauge", "Histogram", "Reading", "SizeHistogram"]


class _Inc(Protocol):
    def __call__(self, amount: float = 1) -> None: ...


class _Set(Protocol):
    def __call__(self, value: float) -> None: ...


class _Observe(Protocol):
    def __call__(self, amount: float) -> None: ...


def _created_series() -> bool:
    """Whether ``_created`` samples are exported: prometheus_client's own switch (its environment
    variable or ``disable_created_metrics()``), read at each scrape as its instruments do."""
    return bool(getattr(_client, "_use_created", True))


class CounterChild:
    """One series of a counter. ``inc`` refuses a negative amount, as prometheus_client does."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeChild:
    """One series of a gauge. ``set`` stores ``float(value)``, as prometheus_client does (and so
    refuses what is not a number)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramChild:
    """One series of a histogram: the sum, and a count per bucket (not cumulative; ``collect``
    adds them up). ``bisect_left`` finds the first bound >= ``amount``: ``le`` is inclusive."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # Written out on the unary path (``edge/observed.py``, an amount never NaN): keep the two alike.
        self.sum += amount
        if amount == amount:  # not NaN, which prometheus_client adds to the sum only (bisect would say 0)
            self.counts[bisect_left(self.bounds, amount)] += 1


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)


class _Family(Collector, Generic[C, F]):
    """What the three share: the name, help and label names, the children by label values, and the
    registration. A family without labels has one child, under ``()``, whose update methods it
    takes as its own (no indirection on the hot path); a family with labels gets, instead, methods
    that raise like prometheus_client's: its series are its children's."""

    _type: ClassVar[str]
    _updates: ClassVar[tuple[str, ...]]
    _reserved: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name.removesuffix("_total") if self._type == "counter" else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if label.startswith("__") or label in self._reserved:
                raise ValueError(f"Reserved label metric name: {label}")
        self._children: dict[tuple[str, ...], C] = {}
        child = None if self.labelnames else self._children.setdefault((), self._child())
        for update in self._updates:
            setattr(self, update, self._unobservable if child is None else getattr(child, update))
        self._family()  # checks the name, as prometheus_client does
        if registry is not None:
            registry.register(self)  # a name taken raises DuplicateTimeseries, as with prometheus_client

    def _unobservable(self, *_: object, **__: object) -> NoReturn:
        raise ValueError(f"{self._type} metric is missing label values")

    def labels(self, *values: object, **named: object) -> C:
        """The child of ``values`` (or of ``named``, by label name), made on first use. Found by the
        values as given: strings find their child at once; anything else is converted with ``str``."""
        child = self._children.get(values)  # type: ignore[arg-type]  # a tuple of str if it is found
        if child is None or named or not values:
            child = self._labelled(values, named)
        return child

    def _labelled(self, values: tuple[object, ...], named: dict[str, object]) -> C:
        """``labels`` the long way, with prometheus_client's checks and errors."""
        if not self.labelnames:
            raise ValueError(f"No label names were set when constructing {self._type}:{self.name}")
        if values and named:
            raise ValueError("Can't pass both *args and **kwargs")
        if named:
            if sorted(named) != sorted(self.labelnames):
                raise ValueError("Incorrect label names")
            values = tuple(named[label] for label in self.labelnames)
        elif len(values) != len(self.labelnames):
            raise ValueError("Incorrect label count")
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._child()
        return child

    def remove(self, *values: object) -> None:
        """The child of ``values`` dropped, its series no longer exported (none: nothing to do)."""
        self._children.pop(tuple(str(value) for value in values), None)

    def describe(self) -> list[Metric]:
        """The family without samples: what ``CollectorRegistry.register`` checks names with."""
        return [self._family()]

    def collect(self) -> list[Metric]:
        """The family with one series per child (in the order they were made), read from a copy of
        the children's dict: a child made meanwhile on the loop's thread cannot break the scrape."""
        family = self._family()
        created = _created_series()
        for values, child in self._children.copy().items():
            self._sample(family, list(values), child, created)
        return [family]

    def _child(self) -> C:
        raise NotImplementedError

    def _family(self) -> F:
        raise NotImplementedError

    def _sample(self, family: F, values: list[str], child: C, created: bool) -> None:
        raise NotImplementedError


class Counter(_Family[CounterChild, CounterMetricFamily]):
    """A counter: ``inc(amount=1)``. Named ``x_total`` or ``x``, it exports family ``x`` with samples
    ``x_total`` and ``x_created``, as prometheus_client does."""

    _type = "counter"
    _updates = ("inc",)
    inc: _Inc

    def _child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _sample(self, family: CounterMetricFamily, values: list[str], child: CounterChild, created: bool) -> None:
        family.add_metric(values, child.value, created=child.created if created else None)


class Gauge(_Family[GaugeChild, GaugeMetricFamily]):
    """A gauge: ``set(value)``."""

    _type = "gauge"
    _updates = ("set",)
    set: _Set

    def _child(self) -> GaugeChild:
        return GaugeChild()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _sample(self, family: GaugeMetricFamily, values: list[str], child: GaugeChild, created: bool) -> None:
        family.add_metric(values, child.value)


class Histogram(_Family[HistogramChild, HistogramMetricFamily]):
    """A histogram: ``observe(amount)``. ``buckets`` as prometheus_client takes them (sorted, ``+Inf``
    added if missing), but none negative."""

    _type = "histogram"
    _updates = ("observe",)
    _reserved = ("le",)
    observe: _Observe

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = REGISTRY,
                 buckets: Sequence[float | str] = _client.Histogram.DEFAULT_BUCKETS) -> None:
        self._bounds = _bounds(buckets)
        self._le: list[str] = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _sample(self, family: HistogramMetricFamily, values: list[str], child: HistogramChild,
                created: bool) -> None:
        """Cumulative buckets from one copy of the counts: ``+Inf`` and ``_count`` (the library takes
        it from ``+Inf``) agree. ``_created`` is added as prometheus_client's histograms have it."""
        cumulative, acc = [], 0.0
        for le, count in zip(self._le, child.counts.copy(), strict=True):
            acc += count
            cumulative.append((le, acc))
        family.add_metric(values, cumulative, child.sum)
        if created:
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, values, strict=True)), child.created)


class SizeHistogram(Histogram):
    """A histogram of sizes (``len`` of something; no labels) at about half a ``Histogram``'s cost
    per ``observe`` (two run per unary call): a size up to the largest finite bound is counted in a
    list indexed by size, and turned into buckets and ``_sum`` at each scrape, from one copy of that
    list; anything else (larger, or not an ``int``) is observed the general way. A scrape shows
    exactly what a ``Histogram`` of the same observations would."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry | None = REGISTRY,
                 buckets: Sequence[float | str] = _client.Histogram.DEFAULT_BUCKETS) -> None:
        super().__init__(name, documentation, (), registry, buckets)
        self._general: _Observe = self.observe
        self.sizes = [0] * (int(self._bounds[-2]) + 1)  # per size, 0 to the largest finite bound
        """``sizes[n] += 1`` is ``observe(n)`` for an int ``n`` up to the largest finite bound (at least 1):
        a caller that knows its size is 1 (a commit of one entry, a turn of one message) counts it so,
        without a call."""
        if len(self.sizes) < 2:
            raise ValueError("a size histogram's largest finite bound is at least 1")
        self.observe = self._count_size

    def _count_size(self, amount: float) -> None:
        try:
            if amount >= 0:
                self.sizes[amount] += 1  # type: ignore[call-overload]  # an int, or the general way below
                return
        except (IndexError, TypeError):
            pass
        self._general(amount)

    def _sample(self, family: HistogramMetricFamily, values: list[str], child: HistogramChild,
                created: bool) -> None:
        merged = HistogramChild(self._bounds)
        merged.counts, merged.sum, merged.created = child.counts.copy(), child.sum, child.created
        for size, count in enumerate(self.sizes.copy()):
            if count:
                merged.counts[bisect_left(self._bounds, size)] += count
                merged.sum += size * count
        super()._sample(family, values, merged, created)


class Reading(Collector):
    """A gauge whose value is read at each scrape from the function it follows (``follow``), instead of
    being set at each change: nothing on the hot path, and true whenever it is scraped, however long
    the code that would set it is held up. Without labels it is 0 until it follows one; with labels,
    each label values' series is there once it follows one (``follow(read, *values)``), in the order
    first followed, and following again replaces the function. The read runs on the scraping thread:
    it must only read (an attribute, a ``len``)."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._reads: dict[tuple[str, ...], Callable[[], float]] = {} if self.labelnames else {(): lambda: 0.0}
        self._family()  # checks the name, as prometheus_client does
        if registry is not None:
            registry.register(self)

    def follow(self, read: Callable[[], float], *values: object) -> None:
        """Read the series of ``values`` (one per label name) from ``read`` from now on."""
        if len(values) != len(self.labelnames):
            raise ValueError("Incorrect label count")
        self._reads[tuple(str(value) for value in values)] = read

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        """One sample per series, read now, from a copy of the functions' dict (one followed meanwhile on
        the loop's thread cannot break the scrape)."""
        family = self._family()
        for values, read in self._reads.copy().items():
            family.add_metric(list(values), float(read()))
        return [family]


def _bounds(buckets: Sequence[float | str]) -> list[float]:
    """prometheus_client's bucket rules (floats, sorted, ``+Inf`` last, at least two), and none
    negative: with a negative bound its histograms drop ``_sum``, which this one does not."""
    bounds = [float(b) for b in buckets]
    if bounds != sorted(bounds):
        raise ValueError("Buckets not in sorted order")
    if bounds and bounds[-1] != INF:
        bounds.append(INF)
    if len(bounds) < 2:
        raise ValueError("Must have at least two buckets")
    if bounds[0] < 0:
        raise ValueError("Negative buckets are not supported")
    return bounds
