"""When a group commit waits for company: the log's commit window."""

from __future__ import annotations

__all__ = ["CommitWindow"]


class CommitWindow:
    """When the log is busy, a group commit waits up to ``delay_s`` for company (PostgreSQL's
    ``commit_delay``): each Redis call then carries many entries, and their callers are answered in
    one turn of the event loop instead of one turn each: less CPU per call, for up to ``delay_s`` more
    latency (benchmarks/RESULTS.md measures the trade at 1,000 calls/s). "Busy" is an arrival rate of at
    least ``min_rate`` entries/s over the last ``_BUCKET_S``: a quiet log, where a wait would find no
    company, sends at once and adds no latency.

    A commit waits only for the company its rate promises: once ``enough`` entries (those the
    measured rate brings in one ``delay_s``, at least 2) are waiting, it goes at once. At 1,000
    entries/s with 2 ms that is the second entry, about 1 ms later on average, not the full 2 ms."""

    _BUCKET_S = 0.1

    __slots__ = ("_bucket_start", "arrivals", "busy", "delay_s", "enough", "measure_at", "min_rate")

    def __init__(self, delay_s: float, min_rate: int) -> None:
        self.delay_s = delay_s
        self.min_rate = min_rate
        self.busy = False
        self.enough = 2
        """Entries after which a waiting commit goes at once (while busy)."""
        self._bucket_start = 0.0
        self.arrivals = 0
        """Entries arrived in the bucket under way."""
        self.measure_at = self._BUCKET_S
        """When the bucket under way is over: the first arrival from then on measures the rate."""

    def arrived(self, now: float) -> None:
        """An entry arrived at ``now`` (``LogStore.submit`` writes this out: every entry's)."""
        self.arrivals += 1
        if now >= self.measure_at:
            self.measure(now)

    def measure(self, now: float) -> None:
        """The rate of the bucket that ``now`` ends (its arrivals counted), and a new bucket begun."""
        elapsed = now - self._bucket_start
        if elapsed >= self._BUCKET_S:  # (``measure_at`` may round a hair below it: measured at the next)
            rate = self.arrivals / elapsed
            self.busy = self.delay_s > 0 and rate >= self.min_rate
            self.enough = max(2, round(rate * self.delay_s))
            self._bucket_start, self.arrivals, self.measure_at = now, 0, now + self._BUCKET_S

    def full(self, pending: int) -> bool:
        """Whether ``pending`` entries are all the company a wait would be for: send now."""
        return pending >= self.enough

    def wait_s(self, first_pending_at: float, now: float) -> float:
        """How much longer the oldest waiting entry should wait before it is sent."""
        return max(0.0, first_pending_at + self.delay_s - now) if self.busy else 0.0
