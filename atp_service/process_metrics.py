"""The process's own metrics, on a registry it serves: CPU, memory, open files (``process_*``), garbage
collections and the Python version (``python_*``), and the build it runs (``*_build_info``). Shared by the
service (``metrics.Metrics``) and its publishers (``publishers._metrics``)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from atp_service.instruments import Gauge


def installed(distribution: str) -> str:
    """The installed version of ``distribution``, or "unknown" (run from a source tree)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def build_info(name: str, registry: CollectorRegistry, libraries: dict[str, str]) -> Gauge:
    """``name`` = 1, labelled with the versions this process runs: ours (``version``), Python's and
    each of ``libraries`` (label -> distribution), so a dashboard can tell which build answers."""
    running = {"version": installed("atp-service"), "python": platform.python_version(),
               **{label: installed(distribution) for label, distribution in libraries.items()}}
    gauge = Gauge(name, "Always 1; the versions of this process and the libraries it runs on", list(running),
                  registry=registry)
    gauge.labels(**running).set(1)
    return gauge


def process_collectors(registry: CollectorRegistry) -> None:
    """CPU, memory, open files (``process_*``), garbage collections and the Python version
    (``python_*``) of this process, on ``registry``: the default registry, which carries them, is not
    the one served. (Each reports nothing where its source is missing: no /proc, not CPython.)"""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


__all__ = ["build_info", "installed", "process_collectors"]
