"""``atpctl stock load``: an ERP extract (one absolute count per position) turned into COUNT facts.

The file is CSV with a header: ``sku,location,on_hand`` and optionally ``as_of`` per row (RFC 3339
or epoch ms; else ``--as-of`` for the whole file). Each row becomes a COUNT fact of ``--source``
whose event_id is its as-of time: a fact's identity is (source, event_id) at its position (E8), so
loading the same file again is a no-op (duplicates), and a newer extract supersedes an older one
by event time (E1, E5) whatever order they arrive in. A bad row never stops the load and never
half-applies: it is skipped, and written with its reason to the report file.
"""

from __future__ import annotations

import asyncio
import csv
import os
import sys
import time
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from atp_client._client import AtpClient
from atp_client._errors import Refusal, Retryable
from atp_client._time import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb

REQUIRED = ("sku", "location", "on_hand")
PATIENCE_S = 120.0
"""How long a bulk load keeps retrying a call the service refused as retryable (an overloaded shard,
a failover): facts are idempotent (E8), so a retry is always safe; past this the load stops."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class HeaderError(ValueError):
    """The file's header lacks a required column: nothing is sent."""


@dataclass
class Rejected:
    line: int
    sku: str
    location: str
    reason: str


@dataclass
class LoadSummary:
    """Rows read; of those sent, the service's outcome per row (applied, absorbed: an older extract,
    duplicate: already loaded, quarantined, invalid); ``unreadable`` rows were never sent. Every row
    not applied for a reason (unreadable, invalid, quarantined) is in ``rejected``."""

    rows: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        named = {name.removeprefix("FACT_OUTCOME_").lower(): n for name, n in sorted(self.outcomes.items())}
        return {"rows": self.rows, **named, "unreadable": self.unreadable}


def parse_time(text: str) -> int:
    """Epoch ms from RFC 3339 (``2026-11-28T06:00:00Z``) or from digits (epoch ms)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +hh:mm)")
    return (moment - _EPOCH) // timedelta(milliseconds=1)  # exact: float seconds can land 1 ms low


class _Counted:
    """The lines of a file, counting the characters read (for the progress line)."""

    def __init__(self, handle: TextIO) -> None:
        self.handle, self.chars = handle, 0

    def __iter__(self) -> Iterator[str]:
        for line in self.handle:
            self.chars += len(line)
            yield line


def rows(lines: Iterable[str], source: str, as_of: int | None, summary: LoadSummary) -> Iterator[tuple[int, pb.Fact]]:
    """(line number, COUNT fact) per good row; bad rows go to ``summary.rejected`` with their reason."""
    reader = csv.reader(lines)
    header = [name.strip().lower() for name in next(reader, [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise HeaderError(f"header: missing column(s) {', '.join(missing)} (have: {', '.join(header)})")
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field past csv's size limit: this row only
            summary.rows += 1
            summary.unreadable += 1
            summary.rejected.append(Rejected(reader.line_num, "", "", f"not CSV: {exc}"))
            continue
        if not values:
            continue  # a blank line
        summary.rows += 1
        row = dict(zip(header, values, strict=False))
        sku, location = (row.get("sku") or "").strip(), (row.get("location") or "").strip()
        try:
            fact = _count(row, sku, location, source, as_of)
        except ValueError as exc:
            summary.unreadable += 1
            summary.rejected.append(Rejected(reader.line_num, _shown(sku), _shown(location), str(exc)))
            continue
        yield reader.line_num, fact


def _shown(text: str) -> str:
    """A field as the report can hold it (bytes that were not UTF-8 are shown escaped)."""
    return text.encode("utf-8", "backslashreplace").decode()


def _count(row: dict[str, str], sku: str, location: str, source: str, as_of: int | None) -> pb.Fact:
    if not sku or not location:
        raise ValueError("sku and location: must not be empty")
    if not (_utf8(sku) and _utf8(location)):
        raise ValueError("sku and location: not UTF-8")
    raw = (row.get("on_hand") or "").strip()
    if not raw.lstrip("-").isdigit():
        raise ValueError(f"on_hand: not an integer: {raw!r}")
    quantity = int(raw)
    if quantity < 0:
        raise ValueError(f"on_hand: must not be negative, got {quantity}")  # the upper bound is the service's
    when = row.get("as_of")
    at = parse_time(when) if when and when.strip() else as_of
    if at is None:
        raise ValueError("as_of: no time for this row (give the column or --as-of)")
    return pb.Fact(event_id=f"count@{at}", source=source, kind=pb.FACT_KIND_COUNT, sku=sku, location=location,
                   quantity=quantity, event_time=timestamp(at))


async def load(client: AtpClient, path: Path, source: str, as_of: int | None, batch: int, inflight: int,
               progress: TextIO | None) -> LoadSummary:
    """Send every good row, ``inflight`` calls of ``batch`` facts at a time; count the outcomes."""
    summary = LoadSummary()
    lanes = asyncio.Semaphore(inflight)
    started, size = time.monotonic(), max(1, await asyncio.to_thread(os.path.getsize, path))
    pending: set[asyncio.Task[None]] = set()

    async def send(chunk: list[tuple[int, pb.Fact]]) -> None:
        try:
            results = await record_patiently(client, [f for _, f in chunk])
            for (line, fact), result in zip(chunk, results, strict=True):
                name = pb.FactOutcome.Name(result.outcome)
                summary.outcomes[name] = summary.outcomes.get(name, 0) + 1
                if result.HasField("error"):
                    refusal = Refusal.from_status(result.error)  # fields are events[n] of the batch: name the column
                    why = "; ".join(f"{v.field.split('.', 1)[-1]}: {v.description}" for v in refusal.field_violations)
                    summary.rejected.append(Rejected(line, fact.sku, fact.location, why or refusal.message))
                elif result.outcome == pb.FACT_OUTCOME_QUARANTINED:
                    summary.rejected.append(Rejected(line, fact.sku, fact.location, f"quarantined: {result.detail}"))
        finally:
            lanes.release()

    # utf-8-sig: an Excel export's byte-order mark is not part of the first column's name;
    # surrogateescape: a row with bytes that are not UTF-8 is rejected alone (``_count``).
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        lines = _Counted(handle)
        chunk: list[tuple[int, pb.Fact]] = []
        for item in rows(lines, source, as_of, summary):
            chunk.append(item)
            if len(chunk) == batch:
                pending = await _launch(pending, lanes, send(chunk))
                chunk = []
                _progress(progress, lines.chars / size, summary.rows, started)
        if chunk:
            pending = await _launch(pending, lanes, send(chunk))
        await asyncio.gather(*pending)
    _progress(progress, 1.0, summary.rows, started, end=True)
    return summary


async def record_patiently(client: AtpClient, facts: list[pb.Fact],
                           patience_s: float = PATIENCE_S) -> list[pb.FactResult]:
    """``record_events``, retried after the delay the service asks for while it says retry (RetryInfo)
    and ``patience_s`` lasts: a bulk load outlasts a shard's busy spell instead of failing on it."""
    give_up_at = time.monotonic() + patience_s
    while True:
        try:
            return await client.record_events(facts)
        except Retryable as exc:
            delay = exc.retry_delay_s
            if delay is None or time.monotonic() + delay > give_up_at:
                raise
            await asyncio.sleep(delay)


async def _launch(pending: set[asyncio.Task[None]], lanes: asyncio.Semaphore,
                  work: Coroutine[Any, Any, None]) -> set[asyncio.Task[None]]:
    await lanes.acquire()
    done = {t for t in pending if t.done()}
    for task in done:
        task.result()  # a refused call ends the load here (its rows were not applied; loading again is safe)
    return (pending - done) | {asyncio.ensure_future(work)}


def _progress(out: TextIO | None, share: float, rows_read: int, started: float, end: bool = False) -> None:
    if out is None:
        return
    rate = rows_read / max(1e-9, time.monotonic() - started)
    out.write(f"\r{share:6.1%}  {rows_read:,} rows  {rate:,.0f} rows/s" + ("\n" if end else ""))
    out.flush()


def write_report(path: Path, rejected: list[Rejected]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["line", "sku", "location", "reason"])
        for r in sorted(rejected, key=lambda r: r.line):
            writer.writerow([r.line, r.sku, r.location, r.reason])


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def progress_stream() -> TextIO | None:
    """The progress line goes to a terminal's stderr only."""
    return sys.stderr if sys.stderr.isatty() else None
