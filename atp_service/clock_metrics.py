"""The clock promise's metrics (R3, R6): how far this process's clock, and the clocks of the groups it took
over, are from Redis's ``TIME`` (the service's stand-in for the true time), and the retention the promise is
measured against. Every host's clock stays within a sixteenth of ``retention_ms`` of the true time
(``app.settings.MIN_RETENTION_MS``); the alerts ``ATPClockAdrift`` and ``ATPClockPromiseAtRisk`` compare
them. One series each per process: no label, so bounded however many groups the process serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from atp_service.instruments import Gauge

__all__ = ["ClockMetrics"]


class ClockMetrics:
    """Set by housekeeping (``offset``, ``group_lead``, every ``CLOCK_OFFSET_EVERY_S``) and the start
    (``retention``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.offset = Gauge(
            "atp_clock_offset_seconds", "This process's service clock (R6) less Redis's TIME; two processes' "
            "difference is their skew: holds taken over between them expire early or late by it", registry=r)
        self.group_lead = Gauge(
            "atp_group_clock_lead_seconds", "How far the clock of the group taken over that runs furthest ahead "
            "of this process's clock is ahead of it (R6: on from its previous owner's newest stamp until this "
            "process's clock passes it); 0 when none is", registry=r)
        self.retention = Gauge(
            "atp_retention_seconds", "ATP_RETENTION_MS in seconds: every host's clock (and every group's) stays "
            "within a sixteenth of it of the true time (R3)", registry=r)
