"""``atpctl stock load``: an ERP extract (one absolute count per position) turned into COUNT facts.

The file is CSV with a header: ``sku,location,on_hand`` and optionally ``as_of`` per row (RFC 3339
or epoch ms; else ``--as-of`` for the whole file). Each row becomes a COUNT fact of ``--source``
whose event_id is its as-of time: a fact's identity is (source, event_id) at its position (E8), so
loading the same file again is a no-op (duplicates), and a newer extract supersedes an older one
by event time (E1, E5) whatever order they arrive in. A bad row never stops the load and never
half-applies: it is skipped, and written with its reason to the report file.

Rows travel as columns (``LoadCounts``), ``batch`` rows a call and ``inflight`` calls at a time.
"""

from __future__ import annotations

import asyncio
import csv
import os
import sys
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np

from atp_client._client import AtpClient
from atp_client._errors import Refusal
from atp_client._extract import Block, Extract, HeaderError, Rejected, parse_time
from atp_client._import import PATIENCE_S, REQUEST_BYTES, patiently, record_patiently
from atp_client.pb.atp.v1 import atp_pb2 as pb

__all__ = ["PATIENCE_S", "HeaderError", "LoadStopped", "LoadSummary", "Rejected", "Rejections", "launch", "load",
           "parse_time", "patiently", "progress_stream", "record_patiently"]


class Rejections:
    """The rows not applied, each with its reason, written to the report at ``path`` as they are known (the file
    made with its header at the first one; rows in that order, each call's by line); counted, never held: an
    extract whose every row is bad (no ``as_of`` column and no ``--as-of``) held about 400 bytes a row until the
    load ended — 4 GB for 10 million rows, the report written only then, if ever. ``path`` None: counted only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path, self.count = path, 0
        self._out: TextIO | None = None
        self._writer: Any = None

    def __len__(self) -> int:
        return self.count

    def add(self, rows: Iterable[Rejected]) -> None:
        for row in rows:
            if self.path is not None:
                if self._writer is None:
                    self._out = self.path.open("w", newline="")
                    self._writer = csv.writer(self._out)
                    self._writer.writerow(["line", "sku", "location", "reason"])
                self._writer.writerow([row.line, row.sku, row.location, row.reason])
            self.count += 1

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


@dataclass
class LoadSummary:
    """Rows read; of those sent, the service's outcome per row (applied, absorbed: an older extract,
    duplicate: already loaded, quarantined, invalid); ``unreadable`` rows were never sent. Every row
    not applied for a reason (unreadable, invalid, quarantined) is in ``rejected``."""

    rows: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    rejected: Rejections = field(default_factory=Rejections)
    answered: int = 0
    """Rows of the calls the service answered."""
    sent: int = 0
    """Rows of the calls sent: each call waits for a connection first (``AtpClient.connect``)."""
    stopped: bool = False
    """A call was refused for good: the load ended before every row read was answered."""

    @property
    def not_answered(self) -> int:
        """Rows read and readable whose call was never answered: sent and applied, or not (R7), or not sent."""
        return self.rows - self.unreadable - self.answered

    @property
    def not_sent(self) -> int:
        """Of ``not_answered``, the rows never sent (no connection for their call, or read and left): not loaded."""
        return self.rows - self.unreadable - self.sent

    def as_dict(self) -> dict[str, int]:
        named = {name.removeprefix("FACT_OUTCOME_").lower(): n for name, n in sorted(self.outcomes.items()) if n}
        out = {"rows": self.rows, **named, "unreadable": self.unreadable}
        return {**out, "not_answered": self.not_answered, "not_sent": self.not_sent} if self.stopped else out

    def count(self, answer: pb.LoadCountsResponse) -> None:
        for name in ("applied", "absorbed", "duplicate", "quarantined", "invalid"):
            key = f"FACT_OUTCOME_{name.upper()}"
            self.outcomes[key] = self.outcomes.get(key, 0) + getattr(answer, name)


async def load(client: AtpClient, path: Path, source: str, as_of: int | None, batch: int, inflight: int,
               progress: TextIO | None, report: Path | None = None) -> LoadSummary:
    """Send every good row, ``inflight`` calls of ``batch`` rows at a time; count the outcomes. The rows not
    applied are written to ``report`` as they are known (``Rejections``), also when the load stops."""
    summary = LoadSummary(rejected=Rejections(report))
    try:
        return await _load(client, path, source, as_of, batch, inflight, progress, summary)
    finally:
        summary.rejected.close()


async def _load(client: AtpClient, path: Path, source: str, as_of: int | None, batch: int, inflight: int,
                progress: TextIO | None, summary: LoadSummary) -> LoadSummary:
    lanes = asyncio.Semaphore(inflight)
    started, size = time.monotonic(), max(1, await asyncio.to_thread(os.path.getsize, path))
    pending: set[asyncio.Task[None]] = set()

    async def send(request: pb.LoadCountsRequest, lines: np.ndarray[Any, Any]) -> None:
        try:
            await client.connect()  # refused: nothing of this call was sent (R7), not "loaded or not"
            summary.sent += len(lines)
            answer = await patiently(lambda: client.load_counts(request))
            summary.count(answer)
            summary.answered += len(lines)
            for group in answer.rejected:
                summary.rejected.add(_rejected(request, lines, group))
        finally:
            lanes.release()

    try:
        with path.open("rb") as handle:
            extract = Extract(handle, as_of)
            blocks = iter(extract)
            while (block := await asyncio.to_thread(next, blocks, None)) is not None:
                summary.rows += block.rows_read
                summary.unreadable += len(block.rejected)
                summary.rejected.add(block.rejected)
                for request, lines in requests(block, source, batch):
                    pending = await launch(pending, lanes, send(request, lines))
                _progress(progress, extract.position / size, summary.rows, started)
            await asyncio.gather(*pending)
    except grpc.aio.AioRpcError as exc:
        # The calls still in flight are answered (or refused) first: what they did is counted. Ctrl-C meanwhile (they
        # may be retried for PATIENCE_S) drops them, and the summary and the refusal are told all the same.
        try:
            await asyncio.gather(*pending, return_exceptions=True)
        except asyncio.CancelledError:
            await _dropped(pending)
        summary.stopped = True
        raise LoadStopped(summary, exc) from exc
    except asyncio.CancelledError:  # Ctrl-C: the calls in flight are dropped, their rows not answered
        await _dropped(pending)
        summary.stopped = True
        raise LoadStopped(summary, None) from None
    _progress(progress, 1.0, summary.rows, started, end=True)
    return summary


async def _dropped(pending: set[asyncio.Task[None]]) -> None:
    """The calls in flight cancelled (Ctrl-C), once each has ended: their rows not answered, loaded or not (R7)."""
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class LoadStopped(Exception):
    """A call refused for good (past ``PATIENCE_S``, or not retryable), or Ctrl-C, ended the load:
    ``summary`` counts what the service answered until then, ``error`` is the refusal (None:
    interrupted)."""

    def __init__(self, summary: LoadSummary, error: grpc.aio.AioRpcError | None) -> None:
        super().__init__(str(error) if error else "interrupted")
        self.summary, self.error = summary, error


def requests(block: Block, source: str, batch: int) -> list[tuple[pb.LoadCountsRequest, np.ndarray[Any, Any]]]:
    """The block as LoadCounts calls of at most ``batch`` rows and about ``REQUEST_BYTES``, each
    naming only the SKUs and locations its rows use; with each, the file lines of its rows."""
    out = []
    cost = _row_bytes(block)
    start = 0
    while start < len(block.lines):
        total = np.cumsum(cost[start: start + batch])
        cut = slice(start, start + max(1, int(np.searchsorted(total, REQUEST_BYTES, side="right"))))
        start = cut.stop
        skus, si = np.unique(block.sku_index[cut], return_inverse=True)
        locations, li = np.unique(block.location_index[cut], return_inverse=True)
        request = pb.LoadCountsRequest(
            source=source, skus=[block.skus[j] for j in skus.tolist()],
            locations=[block.locations[j] for j in locations.tolist()],
            sku_index=si.astype("<u4").tobytes(), location_index=li.astype("<u4").tobytes(),
            on_hand=block.on_hand[cut].astype("<i8").tobytes(), as_of=block.as_of[cut].astype("<i8").tobytes())
        out.append((request, block.lines[cut]))
    return out


def _row_bytes(block: Block) -> np.ndarray[Any, Any]:
    """Per row, what it may add to a request at most: its columns, and its SKU and location as if no
    other row of the call named them (a name is ~3 bytes of framing besides its own)."""
    sku = np.array([len(s.encode("utf-8", "surrogateescape")) + 3 for s in block.skus], dtype=np.int64)
    location = np.array([len(s.encode("utf-8", "surrogateescape")) + 3 for s in block.locations], dtype=np.int64)
    if not len(block.lines):
        return np.zeros(0, dtype=np.int64)
    return 24 + sku[block.sku_index] + location[block.location_index]


def _rejected(request: pb.LoadCountsRequest, lines: np.ndarray[Any, Any], group: pb.RejectedRows) -> list[Rejected]:
    """The file rows of one group of rejected rows, each with the group's reason."""
    if group.outcome == pb.FACT_OUTCOME_QUARANTINED:
        why = f"quarantined: {group.detail}"
    else:
        refusal = Refusal.from_status(group.error)  # the field is the column
        why = "; ".join(f"{v.field}: {v.description}" for v in refusal.field_violations) or refusal.message
    rows = np.fromiter(group.rows, dtype=np.int64, count=len(group.rows))
    si = np.frombuffer(request.sku_index, dtype="<u4")[rows].tolist()
    li = np.frombuffer(request.location_index, dtype="<u4")[rows].tolist()
    skus, locations = request.skus, request.locations
    return [Rejected(int(lines[r]), skus[s] if s < len(skus) else "", locations[c] if c < len(locations) else "", why)
            for r, s, c in zip(rows.tolist(), si, li, strict=True)]


async def launch(pending: set[asyncio.Task[None]], lanes: asyncio.Semaphore,
                 work: Coroutine[Any, Any, None]) -> set[asyncio.Task[None]]:
    """``work`` as a task once one of ``lanes`` is free (``work`` releases it when it ends); the
    tasks still pending. A task that failed raises here, which ends the caller's run."""
    try:
        await lanes.acquire()
    except BaseException:  # interrupted while waiting for a lane
        work.close()
        raise
    done = {t for t in pending if t.done()}
    try:
        for task in done:
            task.result()  # a refused call ends the load here (its rows were not applied; loading again is safe)
    except BaseException:
        work.close()  # never started: nothing of it was sent
        raise
    return (pending - done) | {asyncio.ensure_future(work)}


def _progress(out: TextIO | None, share: float, rows_read: int, started: float, end: bool = False) -> None:
    if out is None:
        return
    rate = rows_read / max(1e-9, time.monotonic() - started)
    out.write(f"\r{share:6.1%}  {rows_read:,} rows  {rate:,.0f} rows/s" + ("\n" if end else ""))
    out.flush()


def progress_stream() -> TextIO | None:
    """The progress line goes to a terminal's stderr only."""
    return sys.stderr if sys.stderr.isatty() else None
