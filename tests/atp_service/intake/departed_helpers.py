"""What the tests of the sweep of departed consumers (``intake/departed.py``) share: the count a reader tells of entries
trimmed unread, as a test reads it (``Counter``)."""

from __future__ import annotations


class Counter:
    """Stands for ``atp_ingest_trimmed_unread_total`` (``labels(stream).inc(n)``); ``counts``: told, by stream."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def labels(self, stream: str) -> Counter:
        self._at = stream
        return self

    def inc(self, n: int) -> None:
        self.counts[self._at] = self.counts.get(self._at, 0) + n
