"""What passes through a shard actor's mailbox, and the answers it gives (see ``shard``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from reservation import Ledger, LogEntry

Work = Callable[[Ledger, int], Any]
"""Work the actor runs on its ledger at the batch's time (ms): returns the caller's answer or raises DomainError."""


class Envelope:
    """A message, the future its answer goes to, and when it was queued (for queue-delay shedding)."""

    __slots__ = ("at", "message", "reply")

    def __init__(self, message: Work | Control, reply: asyncio.Future[Any]) -> None:
        self.message = message
        self.reply = reply
        self.at = time.monotonic()


Answer = tuple[asyncio.Future[Any], Any, BaseException | None]


def deliver(answers: list[Answer]) -> None:
    for reply, result, error in answers:
        if reply.done():
            continue
        if error is None:
            reply.set_result(result)
        else:
            reply.set_exception(error)


class InFlight:
    """A sealed batch whose log append has been sent but not yet confirmed."""

    __slots__ = ("answers", "done", "entry", "seq", "undo")

    def __init__(self, seq: int, entry: LogEntry, undo: list[Any], answers: list[Answer],
                 done: asyncio.Future[None]) -> None:
        self.seq, self.entry, self.undo, self.answers, self.done = seq, entry, undo, answers, done


class Control:
    """Messages about the actor itself, handled between batches."""

    __slots__ = ("kind", "resume")

    def __init__(self, kind: str, resume: asyncio.Future[None] | None = None) -> None:
        self.kind = kind
        self.resume = resume
