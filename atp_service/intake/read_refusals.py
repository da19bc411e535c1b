"""Reads of the input streams Redis refuses for a reason waiting does not cure, told apart from Redis away.

A key of another type where the reader keeps a mark (an operator's key, a restore of other data), or a Redis user's
ACL that lost a command (``NOPERM``; Redis 7.0 words one inside a script ``ERR The user executing the script can't
...``), refuses every read alike: one read names every input stream, so no new fact is read and none pending is
applied until someone acts. The reader tries again with its growing waits (an operator's fix is taken without a
restart), and after ``ingest_read_refusals_max`` refusals with no read succeeding between (Redis away meanwhile
neither counts nor starts the count again) it says so as an error (``ingest_read_refused``,
once) and sets ``atp_ingest_read_refused`` to 1, until a read succeeds (``ingest_read_resumed``). Nothing is
dead-lettered for it: the refusal is of a key or a command, not of an entry, and the entries' delivery counts are as
they were (the read scripts check before their ``XREADGROUP``), so each is applied once once the reads are let in (E8).
Health stays as it is: reservations are answered meanwhile, and every process on one Redis is refused alike.
"""

from __future__ import annotations

import logging
from typing import Any

from atp_service.storage.resp import lasting_refusal

log = logging.getLogger(__name__)


class ReadRefusals:
    """The refusals in a row of the reader's reads; ``gauge``: ``atp_ingest_read_refused``."""

    def __init__(self, limit: int, gauge: Any) -> None:
        self._limit, self._gauge = limit, gauge
        self._row, self._said = 0, False
        gauge.set(0)

    def failed(self, error: BaseException) -> str | None:
        """One read failed with ``error``: its kind of lasting refusal (``resp.lasting_refusal``), None where it is
        not one (Redis away). Said as an error at the ``limit``-th since a read last succeeded."""
        kind = lasting_refusal(error)
        self._row += kind is not None
        if kind is not None and self._row == self._limit:
            self._gauge.set(1)
            self._said = True
            log.error("input streams: %d reads in a row refused (%s: %s); no fact is read until it is fixed, "
                      "reads tried again meanwhile", self._row, kind, error,
                      extra={"event": "ingest_read_refused", "refusal": kind, "error": str(error),
                             "refused": self._row})
        return kind

    def read(self) -> None:
        """A read (or a pass over the pending entries) succeeded: a refusal said ended."""
        if self._said:
            self._gauge.set(0)
            log.warning("input streams: read again after %d refused reads", self._row,
                        extra={"event": "ingest_read_resumed", "refused": self._row})
        self._row, self._said = 0, False
