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
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from atp_client._client import AtpClient
from atp_client._errors import Refusal
from atp_client._time import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb

REQUIRED = ("sku", "location", "on_hand")
MAX_ON_HAND = 1_000_000
"""The service's default ``max_quantity``: larger counts are refused by the service too."""


@dataclass
class Rejected:
    line: int
    sku: str
    location: str
    reason: str


@dataclass
class LoadSummary:
    rows: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        named = {name.removeprefix("FACT_OUTCOME_").lower(): n for name, n in sorted(self.outcomes.items())}
        return {"rows": self.rows, **named, "rejected": len(self.rejected)}


def parse_time(text: str) -> int:
    """Epoch ms from RFC 3339 (``2026-11-28T06:00:00Z``) or from digits (epoch ms)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +hh:mm)")
    return int(moment.timestamp() * 1000)


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
    reader = csv.DictReader(lines)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"header: missing column(s) {', '.join(missing)} (have: {', '.join(reader.fieldnames or [])})")
    for row in reader:
        summary.rows += 1
        line = reader.line_num
        sku, location = (row.get("sku") or "").strip(), (row.get("location") or "").strip()
        try:
            fact = _count(row, sku, location, source, as_of)
        except ValueError as exc:
            summary.rejected.append(Rejected(line, sku, location, str(exc)))
            continue
        yield line, fact


def _count(row: dict[str, str], sku: str, location: str, source: str, as_of: int | None) -> pb.Fact:
    if not sku or not location:
        raise ValueError("sku and location: must not be empty")
    raw = (row.get("on_hand") or "").strip()
    if not raw.lstrip("-").isdigit():
        raise ValueError(f"on_hand: not an integer: {raw!r}")
    quantity = int(raw)
    if not 0 <= quantity <= MAX_ON_HAND:
        raise ValueError(f"on_hand: must be within [0, {MAX_ON_HAND}], got {quantity}")
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
            for (line, fact), result in zip(chunk, await client.record_events([f for _, f in chunk]), strict=True):
                name = pb.FactOutcome.Name(result.outcome)
                summary.outcomes[name] = summary.outcomes.get(name, 0) + 1
                if result.HasField("error"):
                    summary.rejected.append(Rejected(line, fact.sku, fact.location,
                                                     Refusal.from_status(result.error).message))
        finally:
            lanes.release()

    with path.open(newline="") as handle:
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


def progress_stream() -> TextIO | None:
    """The progress line goes to a terminal's stderr only."""
    return sys.stderr if sys.stderr.isatty() else None
