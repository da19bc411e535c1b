"""The simulation's tests log as ``python -m tests.sim`` (the tool a failure's replay command runs) does."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def the_services_errors_only() -> Iterator[None]:
    """Only the service's errors are logged (each fails its step: ``ServiceErrors``). Its faults make it
    warn about 140 times a seed (appends failed, in doubt, fenced); pytest kept and formatted every one
    of those records (and the tracebacks, frames and tasks they hold) for a report nobody reads: about
    a quarter of a seed's time."""
    service = logging.getLogger("atp_service")
    level = service.level
    service.setLevel(logging.ERROR)
    yield
    service.setLevel(level)
