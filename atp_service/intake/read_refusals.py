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
A pass over the reader's own pending entries may be refused alone (an entry pending whose batch is refused, a key of
another type beside its stream): put off while new entries are read (``StreamIngestor.step``), counted on its own.
Each pass delivers that entry again, its delivery count growing, which by itself dead-letters nothing: it is settled
once, when the cause is gone. (``ingest_max_deliveries`` counts Redis's deliveries, these included, but dead-letters
only a fact this reader saw refused twice for a reason that does not pass with time, ``refusals.RefusalBound``.)
The claim of entries other consumers left pending may be refused alone too (the dead-letter stream's key of another
type, ``XAUTOCLAIM`` taken out of the ACL): tried every half ``claim_idle_ms``, counted on its own, else the reads
of new entries between two claims ended its count.
The login of the Redis user refused (``WRONGPASS``) is a permission refusal too, though redis-py raises a
``ConnectionError`` for it.
Health stays as it is: reservations are answered meanwhile, and every process on one Redis is refused alike.
"""

from __future__ import annotations

import logging
from typing import Any

from atp_service.storage.resp import lasting_refusal

log = logging.getLogger(__name__)


WHAT = {"new": "reads of new entries", "pending": "passes over the reader's own pending entries",
        "claim": "claims of entries other consumers left pending"}
"""What the reader does that a refusal stops, each counted on its own: a pass failing for good on an entry pending
(its batch refused) is put off while new entries are read, and a claim (with the sweep of departed consumers) is
tried every half ``claim_idle_ms`` between them: those reads succeeding do not end their counts."""


class ReadRefusals:
    """The refusals in a row of the reader's reads and passes (``WHAT``); ``gauge``: ``atp_ingest_read_refused``."""

    def __init__(self, limit: int, gauge: Any) -> None:
        self._limit, self._gauge = limit, gauge
        self._rows = dict.fromkeys(WHAT, 0)
        self._said: set[str] = set()
        gauge.set(0)

    def failed(self, error: BaseException, what: str) -> str | None:
        """One of ``what`` (``WHAT``) failed with ``error``: its kind of lasting refusal (``resp.lasting_refusal``),
        None where it is not one (Redis away). Said as an error at the ``limit``-th since one last succeeded."""
        kind = lasting_refusal(error)
        self._rows[what] += kind is not None
        if kind is not None and self._rows[what] == self._limit:
            self._said.add(what)
            self._gauge.set(1)
            log.error("input streams: %d %s in a row refused (%s: %s); tried again meanwhile, the entries they would "
                      "settle waiting until it is fixed", self._rows[what], WHAT[what], kind, error,
                      extra={"event": "ingest_read_refused", "refusal": kind, "error": str(error),
                             "refused": self._rows[what], "what": what})
        return kind

    def read(self, what: str) -> None:
        """One of ``what`` succeeded: a refusal of it said is over."""
        if what in self._said:
            self._said.discard(what)
            self._gauge.set(bool(self._said))
            log.warning("input streams: %s succeed again after %d refused", WHAT[what], self._rows[what],
                        extra={"event": "ingest_read_resumed", "refused": self._rows[what], "what": what})
        self._rows[what] = 0
