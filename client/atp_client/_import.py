"""``atpctl events import``: a JSONL file of facts sent through ``RecordEvents`` in calls the
service takes — at most ``--batch`` facts (the service refuses more than its ``max_events_per_call``
whole, LIMIT_EXCEEDED) and ``REQUEST_BYTES`` encoded (within its ``max_message_bytes``).

A call the service refuses as busy (RESOURCE_EXHAUSTED, UNAVAILABLE with the delay it asks for) is
sent again for up to ``PATIENCE_S``; a call refused for good, or interrupted, ends the run with what
was answered until then, and the file lines of the call: facts are idempotent by (source,
event_id) (E8), so importing the whole file again is safe.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import json_format

from atp_client._client import AtpClient
from atp_client._errors import OUTCOME_UNKNOWN, AtpError, Retryable, retry_refused
from atp_client._output import BadInput, in_doubt_after
from atp_client.pb.atp.v1 import atp_pb2 as pb

T = TypeVar("T")
PATIENCE_S = 120.0
"""How long a bulk load keeps retrying a call the service refused as retryable (an overloaded shard,
a failover): facts are idempotent (E8), so a retry is always safe; past this the load stops."""
REQUEST_BYTES = 3 << 20
"""Bytes one request may take at most, by a pessimistic count: the service takes messages of 4 MiB
by default (``max_message_bytes``), and names may be 128 bytes long."""
EVENTS_BATCH = 1000
"""Facts per ``RecordEvents`` call unless ``--batch`` says: well within the service's default
``max_events_per_call`` (10,000); a deployment that sets it lower needs ``--batch`` at most that."""
FRAMING_BYTES = 6
"""What a fact adds to its request besides its own encoding: the field's tag and length prefix."""


def numbered_facts(path: Path, through: int | None = None) -> Iterator[tuple[int, pb.Fact]]:
    """Each fact of a JSONL file with its line number; a line that is no fact ends the run naming it.
    The file is UTF-8 (JSON's own encoding) whatever the locale: read in the locale's, a SKU with an
    accent failed under ``LC_ALL=C`` and became another SKU under Latin-1. A byte that is not UTF-8
    is kept (``surrogateescape``) until its line is judged, so that the refusal names that line.
    ``through``: the last line to read, that of the pass that checked every line before any was sent: lines written
    to the file since (an export still running) are not sent unchecked, nor a line torn there refusing the file
    part-way, the calls before it applied, with "nothing of it sent"."""
    with path.open(encoding="utf-8", errors="surrogateescape") as fh:
        for n, line in enumerate(fh, 1):
            if through is not None and n > through:
                return
            if not line.strip():
                continue
            try:
                _check_utf8(line)
                value = json.loads(line)
                if not isinstance(value, dict):  # ParseDict takes any iterable; 5 or null raise TypeError
                    raise ValueError(f"not a JSON object (a fact in proto JSON), got {type(value).__name__}")
                yield n, json_format.ParseDict(value, pb.Fact())
            except (ValueError, json_format.ParseError) as exc:
                raise BadInput(f"{path}:{n}: {exc}") from None


def _check_utf8(line: str) -> None:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:  # a byte that surrogateescape kept: not UTF-8
        raise ValueError(f"not UTF-8 text: a byte that is not UTF-8 at column {exc.start + 1}") from None


def count_facts(path: Path) -> tuple[int, int]:
    """Every line read before any is sent: a file refused for a line that cannot be read has nothing
    of it applied, rather than the calls before that line. Its facts, and the last line read (``through``)."""
    facts = last = 0
    for n, _ in numbered_facts(path):
        facts, last = facts + 1, n
    return facts, last


async def patiently(call: Callable[[], Awaitable[T]], patience_s: float = PATIENCE_S) -> T:
    """``call``, again after the delay the service asks for while it says retry (RetryInfo) and
    ``patience_s`` lasts: a bulk load outlasts a shard's busy spell instead of failing on it.

    Once a try was answered in doubt (``OUTCOME_UNKNOWN``: it may have been made, R7), a later
    refusal that ends the retries — whatever it is: access, a limit, patience spent — says nothing
    of that try: raised in doubt (``retry_refused``), not as "not made"."""
    give_up_at = time.monotonic() + patience_s
    doubt: AtpError | None = None
    while True:
        try:
            return await call()
        except AtpError as exc:
            if doubt is None and exc.reason == OUTCOME_UNKNOWN:
                doubt = exc
            delay = exc.retry_delay_s if isinstance(exc, Retryable) else None
            if delay is None or time.monotonic() + delay > give_up_at:
                if doubt is not None and exc is not doubt:
                    raise retry_refused(doubt, exc) from exc
                raise
            await asyncio.sleep(delay)


async def record_patiently(client: AtpClient, facts: list[pb.Fact],
                           patience_s: float = PATIENCE_S) -> list[pb.FactResult]:
    """``record_events``, retried as ``patiently`` says."""
    return await patiently(lambda: client.record_events(facts), patience_s)


Chunk = tuple[list[int], list[pb.Fact]]


def chunks(numbered: Iterable[tuple[int, pb.Fact]], batch: int, max_bytes: int = REQUEST_BYTES) -> Iterator[Chunk]:
    """The facts in order as calls of at most ``batch`` facts and ``max_bytes`` encoded (a fact
    larger on its own goes alone: the service says what it makes of it), with their file lines."""
    lines: list[int] = []
    facts: list[pb.Fact] = []
    size = 0
    for n, fact in numbered:
        cost = fact.ByteSize() + FRAMING_BYTES
        if facts and (len(facts) >= batch or size + cost > max_bytes):
            yield lines, facts
            lines, facts, size = [], [], 0
        lines.append(n)
        facts.append(fact)
        size += cost
    if facts:
        yield lines, facts


@dataclass
class Imported:
    """How far an import got: facts per outcome of the calls answered; when it stopped, the lines
    of the call left without an answer, its facts ``refused`` (not applied) or ``in_doubt``
    (applied or not), and how many after it were never sent."""

    total: int
    counts: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    stopped_lines: tuple[int, int] | None = None
    in_doubt: int = 0
    refused: int = 0
    """Facts of the call refused for good, not applied."""
    unsent: int = 0
    """Facts of the call stopped before it was sent (no connection, or Ctrl-C while connecting):
    not applied, and counted with the rest ``not_sent``."""
    error: grpc.aio.AioRpcError | None = None
    """The refusal that stopped the run; None with ``stopped_lines`` set: interrupted."""

    def summary(self) -> dict[str, int]:
        if self.stopped_lines is None:
            return dict(self.counts)
        not_sent = self.total - self.answered - self.in_doubt - self.refused
        return {**self.counts, "refused": self.refused, "in_doubt": self.in_doubt, "not_sent": not_sent}


def recorded_some(error: AtpError) -> bool:
    """Whether a refused ``RecordEvents`` says other shards or owners recorded facts of its call first
    (``ErrorInfo`` metadata ``facts_recorded``; absent: it recorded nothing)."""
    try:
        return int(error.refusal.metadata.get("facts_recorded", "0")) > 0
    except ValueError:
        return True  # unreadable: it may have


async def send_all(client: AtpClient, numbered: Iterable[tuple[int, pb.Fact]], total: int, batch: int,
                   tell: Callable[[pb.FactResult], None], patience_s: float = PATIENCE_S) -> Imported:
    """Every fact, a call at a time, ``tell`` given each result; a refusal or an interruption
    (Ctrl-C cancels the run) ends it with what was answered until then. Each call waits for a
    connection first: a service that cannot be reached leaves that call not sent, not in doubt.
    A call refused for good is in doubt where any of its tries may have recorded facts — answered
    ``OUTCOME_UNKNOWN`` or without an answer of the service (``in_doubt_after``; with gRPC's retries
    on, any retryable refusal, which may hide a try lost mid-way), or saying facts of it were
    recorded (``facts_recorded``) — and refused, none of its facts applied, otherwise."""
    done = Imported(total)
    for lines, facts in chunks(numbered, batch):
        try:
            await client.connect()
        except (Retryable, asyncio.CancelledError) as exc:  # no connection: nothing of this call was sent (R7)
            done.stopped_lines, done.unsent = (lines[0], lines[-1]), len(facts)
            done.error = exc if isinstance(exc, Retryable) else None
            return done
        recorded = False

        async def record(facts: list[pb.Fact] = facts) -> list[pb.FactResult]:
            nonlocal recorded
            try:
                return await client.record_events(facts)
            except AtpError as exc:
                recorded = recorded or recorded_some(exc)
                raise

        try:
            results = await patiently(record, patience_s)
        except grpc.aio.AioRpcError as exc:  # refused for good: in doubt only if it may have been made (R7)
            done.stopped_lines, done.error = (lines[0], lines[-1]), exc
            if recorded or in_doubt_after(exc, retried=client.retry is not None):
                done.in_doubt = len(facts)
            else:
                done.refused = len(facts)
            return done
        except asyncio.CancelledError:  # Ctrl-C: the call was sent, applied or not
            done.stopped_lines, done.in_doubt = (lines[0], lines[-1]), len(facts)
            return done
        for result in results:
            name = pb.FactOutcome.Name(result.outcome)
            done.counts[name] = done.counts.get(name, 0) + 1
            tell(result)
        done.answered += len(facts)
    return done
