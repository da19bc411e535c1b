"""Work spread over shards: one actor message per shard, answers gathered per item; and the
reservation outcomes counted in one go."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics
from atp_service.tasks import exception_seen
from reservation import DomainError, Ledger, Moved, Reservation, State

STATE_NAMES = {state.value: state.name.lower() for state in State}  # metric labels, without an Enum call each


async def gather_by_shard(
    actors: Sequence[ShardActor], groups: dict[int, list[int]],
    work_for: Callable[[list[int]], Callable[[Ledger, int], list[Any]]],
    out: list[Any], more: Sequence[tuple[list[int], Awaitable[list[Any]]]] = (),
    settled: Callable[[list[int], list[Any] | None], None] | None = None, asked: Callable[[], None] | None = None,
) -> None:
    """One actor message per shard for the items ``groups`` assigns it; each item's result, or the
    error that kept its shard from deciding it, lands at the item's index in ``out``. ``settled``
    is called with a shard's items and its results (None: not decided) once that shard has
    answered — whether or not this coroutine is still there to hear it (R8: a cancelled caller
    abandons only the waiting). ``asked`` is called once every shard was asked, before any answer
    is waited for: the items a shard refused at once (``Moved``) are in ``out`` by then."""
    waits: list[tuple[list[int], Awaitable[list[Any]]]] = list(more)
    for shard, idx in groups.items():
        try:
            reply = actors[shard].submit(work_for(idx))
        except DomainError as exc:
            for i in idx:
                out[i] = exc
            if settled is not None:
                settled(idx, None)
            continue
        reply.add_done_callback(exception_seen)  # a caller gone early leaves no "exception never retrieved"
        if settled is not None:
            reply.add_done_callback(lambda fut, idx=idx: settled(  # type: ignore[misc]
                idx, None if fut.cancelled() or fut.exception() is not None else fut.result()))
        waits.append((idx, reply))
    if asked is not None:
        asked()
    for idx, fut in waits:
        try:
            results = await fut
        except DomainError as exc:
            results = [exc] * len(idx)
        for i, result in zip(idx, results, strict=True):
            out[i] = result



def count_reservations(metrics: EngineMetrics, results: Sequence[tuple[Reservation, bool] | DomainError]) -> None:
    """``atp_reservations_total`` by outcome: the state decided, ``replayed`` or ``error``. An item of a group
    another process owns (``Moved``: nothing decided here) is not counted: the edge sends it on to that owner,
    which counts what it decides (counted here too, each such item was counted twice, once an ``error``)."""
    counts: dict[str, int] = {}
    for result in results:
        if isinstance(result, Moved):
            continue
        if isinstance(result, DomainError):
            outcome = "error"
        else:
            outcome = "replayed" if result[1] else STATE_NAMES[result[0].state]
        counts[outcome] = counts.get(outcome, 0) + 1
    for outcome, n in counts.items():
        metrics.reservations_of(outcome).inc(n)


def count_refused(metrics: EngineMetrics, refusal: BaseException) -> None:
    """A Reserve refused (a ``DomainError``: an id claimed by other lines, a bound, a shard shed or in doubt) counted
    ``error`` as ``count_reservations`` counts a refused ``ReserveStream`` item; not a ``Moved`` one, which its group's
    owner decides and counts, nor a cancellation (no answer)."""
    if isinstance(refusal, DomainError) and not isinstance(refusal, Moved):
        metrics.reservations_of("error").inc()


async def one_as_list(call: Callable[[], Awaitable[Any]]) -> list[Any]:
    """``call()``'s result, or its domain refusal, as a list of one. The coroutine is made here, in
    the task: a task cancelled before it starts leaves no coroutine behind that was never awaited."""
    try:
        return [await call()]
    except DomainError as exc:
        return [exc]
