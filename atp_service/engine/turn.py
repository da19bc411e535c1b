"""One turn of a shard actor: take a batch from the mailbox, apply it to the ledger."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

from atp_service.engine.mailbox import Mailbox
from atp_service.engine.messages import Answer, Control, Envelope, InFlight, Maintain
from atp_service.metrics import EngineMetrics
from reservation import MADE, DomainError, Ledger

log = logging.getLogger(__name__)


def take_batch(first: Envelope, set_aside: deque[Envelope], mailbox: Mailbox[Envelope],
               limit: int) -> list[Envelope]:
    """``first`` and what waits after it, up to ``limit`` messages; a control message closes the
    batch (it is set aside to run next)."""
    batch = [first]
    while len(batch) < limit and (set_aside or not mailbox.empty()):
        env = set_aside.popleft() if set_aside else mailbox.get_nowait()
        if isinstance(env.message, Control):
            set_aside.appendleft(env)
            break
        batch.append(env)
    return batch


def refuse_all(set_aside: deque[Envelope], mailbox: Mailbox[Envelope], error: BaseException) -> None:
    """Answer everything waiting, set aside or in the mailbox, with ``error`` (a maintenance request
    is simply done: nothing waits on it); both are empty afterwards, as many putters waiting for room
    woken as there were messages (taking them one by one would), and the rest answered ``error``."""
    waiting = list(set_aside)
    set_aside.clear()
    drained = mailbox.drain()
    mailbox.refuse_putters(error)  # a stop's: no reader frees their room any more (a doubt's: refused on entry)
    for env in waiting + drained:
        if env.reply.done():
            continue
        if isinstance(env.message, Maintain):
            env.reply.set_result(None)
        else:
            env.reply.set_exception(error)  # a coordinator's pause fails too, and it gives up


def moves_of(inflight: Iterable[InFlight]) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
    """Per position, the sum of how the batches ``inflight`` moved ``available``; and the positions
    they made (``MADE`` among their moves, each a position of the sums too). One walk for both."""
    ahead: dict[tuple[str, str], int] = {}
    made: set[tuple[str, str]] = set()
    for rec in inflight:
        for sku, location, delta in rec.moved:
            ahead[(sku, location)] = ahead.get((sku, location), 0) + delta
            if delta is MADE:
                made.add((sku, location))
    return ahead, made


def apply_batch(ledger: Ledger, batch: list[Envelope], now: int, metrics: EngineMetrics) -> list[Answer]:
    """Each message's work on ``ledger`` at ``now``, into the open batch; the answers to give once
    it is durable. A message whose caller gave up is skipped; a refusal is an answer; a bug in one
    command takes back only that command's half-made change."""
    answers: list[Answer] = []
    for env in batch:
        if env.reply.done():  # the caller gave up (deadline or cancel): do not apply
            continue
        work = env.message
        assert not isinstance(work, Control)
        mark = ledger.mark()
        try:
            answers.append((env.reply, work(ledger, now), None))
        except DomainError as exc:
            answers.append((env.reply, None, exc))
        except Exception as exc:
            answers.append((env.reply, None, taken_back(ledger, mark, exc, metrics)))
    metrics.batch_size.observe(len(answers))
    return answers


def taken_back(ledger: Ledger, mark: tuple[int, int], exc: Exception, metrics: EngineMetrics) -> DomainError:
    """A command that failed unexpectedly (a bug): its half-made change taken back, the answer its caller gets."""
    ledger.rollback_to(mark)
    log.exception("shard %d: a command failed unexpectedly; nothing of it was applied", ledger.shard)
    metrics.internal_errors.inc()
    return DomainError(f"internal error ({type(exc).__name__}); nothing was applied")
