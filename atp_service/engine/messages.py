"""What passes through a shard actor's mailbox, and the answers it gives (see ``shard``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from reservation import Ledger, LogEntry, Reason, Unavailable

REPLACED = ("this instance was replaced by a newer one on the same Redis keyspace and takes no more "
            "changes; retry (the newer instance answers)")
"""The answer of an instance a newer one replaced (``Reason.INSTANCE_REPLACED``)."""
CLAIM_LOST = ("Redis lost this instance's claim on its keyspace (it restarted from older data, or a replica that "
              "missed it was promoted): this instance takes no more changes and restarts to serve what Redis "
              "holds; retry")
"""The answer once Redis holds no claim of this instance nor a newer one (``Fenced.claim_lost``)."""


def replaced(claim_lost: bool) -> Unavailable:
    """The refusal of a write once this instance no longer owns the keyspace: a newer instance's
    claim, or none at all (Redis lost this one's) — callers retry either way, operators look elsewhere."""
    return Unavailable(CLAIM_LOST if claim_lost else REPLACED, Reason.INSTANCE_REPLACED)


def refused_for_memory(where: str) -> Unavailable:
    """The refusal of a write Redis refused ``OOM`` (at its ``maxmemory``, ``noeviction``): refused
    before the script's first write, so certainly not applied — not in doubt (R7); the operator must
    give Redis room."""
    return Unavailable(f"{where}: Redis is out of memory (maxmemory reached) and refused the write; nothing "
                       "was applied; retry later", Reason.STORAGE_UNREACHABLE)


Work = Callable[[Ledger, int], Any]
"""Work the actor runs on its ledger at the batch's time (ms): returns the caller's answer or raises DomainError."""


class Envelope(msgspec.Struct, eq=False):
    """A message, the future its answer goes to, and when it was queued (for queue-delay shedding).
    A struct, as ``InFlight`` and the log's ``Pending``: built in C (its clock read by the default
    factory), where a Python ``__init__`` ran ~20 bytecodes for each of a call's few records;
    ``eq=False``: compared and hashed by identity, as a plain object is."""

    message: Work | Control
    reply: asyncio.Future[Any]
    at: float = msgspec.field(default_factory=time.monotonic)


Moves = list[tuple[str, str, int]]
"""How a batch moved ``available``: (sku, location, delta) per change (``Ledger.seal``); a position it
made is one more, its delta ``MADE`` (a 0 compared by identity)."""

Answer = tuple[asyncio.Future[Any], Any, BaseException | None]


def deliver(answers: list[Answer]) -> None:
    for reply, result, error in answers:
        if reply.done():
            continue
        if error is None:
            reply.set_result(result)
        else:
            reply.set_exception(error)


class InFlight(msgspec.Struct, eq=False):
    """A sealed batch whose log append has been sent but not yet confirmed (a struct: see ``Envelope``)."""

    seq: int
    entry: LogEntry
    data: bytes
    undo: list[Any]
    moved: Moves
    answers: list[Answer]
    done: asyncio.Future[None]


class Sealed:
    """One shard's part of a cross-shard change: its entry, encoded, and how to take it back."""

    __slots__ = ("data", "entry", "moved", "seq", "undo")

    def __init__(self, seq: int, entry: LogEntry, data: bytes, undo: list[Any], moved: Moves) -> None:
        self.seq, self.entry, self.data, self.undo, self.moved = seq, entry, data, undo, moved


class Control:
    """Messages about the actor itself, handled between batches (each closes the batch before it)."""

    __slots__ = ()


class Pause(Control):
    """Park between batches with nothing in flight until ``resume`` is set (a coordinator's turn)."""

    __slots__ = ("resume",)

    def __init__(self, resume: asyncio.Future[None]) -> None:
        self.resume = resume


class Maintain(Control):
    """Settle what is in doubt, forget old facts and snapshot when due."""

    __slots__ = ()
