"""Facts read from the input streams whose owner refused their ``RecordEvents`` call whole for a reason of one
fact of it: the call split until each fact has an answer of its own (``isolated``).

An owner answers a call whose facts its shards decided one by one, but a fact its shard refused refuses the whole
call (``record.record_events``): a fact a bug refuses (``INTERNAL``, refused at every delivery), or any other
lasting refusal. The reader took that for the owner failing (``OUTCOME_UNKNOWN``, transient): every fact of the
call stayed pending, was read again, batched with the culprit again and refused again, for ever — the culprit
never dead-lettered (``refusals.RefusalBound`` counts only lasting refusals), the others never acknowledged. Such
a refusal says no fact of the call is in doubt (``told_first`` tells an ``OUTCOME_UNKNOWN`` before any other), so
sending them again is safe: a fact its shard recorded already is answered a duplicate (E8). The call is split in
halves, in order (two halves may share a shard: its facts stay in the stream's order), each sent on its own and
split again while refused so: a fact alone in its call keeps its refusal, with the owner's reason.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import grpc

from atp_client import Refusal
from atp_service.edge.errors import carried_status
from atp_service.intake.facts import Result
from atp_service.intake.refusals import transient
from reservation import DomainError, Reason, Unavailable

MAX_SPLIT_CALLS = 64
"""The most calls the split of one refused ``RecordEvents`` (``fact_sender``'s request, up to
``max_events_per_call`` facts) makes. Halving finds one culprit among n facts in about 2·log2(n) calls (20
among 1000), so this isolates a few at each delivery; a part its budget leaves unsent stays pending (transient,
read again), and the culprits isolated meanwhile are dead-lettered at their bound, leaving fewer to find."""
NOTE = re.compile(r"; \d+ of the call's \d+ facts were recorded .*$", re.S)
"""A refusal's note of what else its call recorded (``record._told``): an owner's of its part, told again for
the call, or left out of a fact's own refusal."""
CALL_REASONS = frozenset({Reason.TOKEN_MISSING, Reason.TOKEN_INVALID, Reason.ROLE_NOT_PERMITTED,
                          Reason.ESTATE_UNUSABLE})
"""Lasting refusals of a call whatever its facts (the peer token, the owner's estate): never split, each fact
would be refused the same and dead-lettered for what is the service's own setting to fix."""
_NOTED = ("facts_recorded", "facts_applied", "facts_not_recorded")


class Budget:
    """The calls a split may still make (``MAX_SPLIT_CALLS``), shared by the parts of one request."""

    def __init__(self) -> None:
        self.left = MAX_SPLIT_CALLS

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def end(self) -> None:
        """No more parts sent: the owner refused one as a whole for a transient reason, or did not answer
        (a timeout, unreachable) — every other part would wait as long."""
        self.left = 0


def lasting_refusal(owner: str, error: grpc.aio.AioRpcError) -> DomainError | None:
    """An owner's refusal of a whole call as a fact of it may have earned it: one of the service's reasons,
    not ``transient`` and none of ``CALL_REASONS`` — with that reason, the owner's message (less its note of
    what else the call recorded) and its ``ErrorInfo`` metadata. None for any other: gRPC's own (a timeout,
    the owner unreachable), the owner's as a whole (overloaded, recovering, stopping), one in doubt."""
    trailers = cast(Sequence[tuple[str, Any]], error.trailing_metadata() or ())
    told = Refusal.from_status(carried_status(error.code(), error.details() or "", trailers))
    reason = Reason.__members__.get(told.reason)
    if reason is None or reason in CALL_REASONS:
        return None
    metadata = {key: value for key, value in told.metadata.items() if key not in _NOTED}
    refusal = DomainError(f"process {owner} refused it: {NOTE.sub('', told.message)}", reason, metadata=metadata)
    return None if transient(refusal) else refusal


async def isolated(refusal: DomainError, count: int, send: Callable[[list[int]], Awaitable[list[Result | DomainError]]],
                   budget: Budget) -> list[Result | DomainError]:
    """The results of ``count`` facts whose call was refused ``refusal`` (``lasting_refusal``): a fact alone
    keeps it; else each half sent again on its own (``send``: the results of the facts at those indexes, a
    half refused so split again there), in order, while ``budget`` lasts (``Budget.end``): past it a half
    stays pending, read again."""
    if count == 1:
        return [refusal]
    out: list[Result | DomainError] = []
    for part in (list(range(count // 2)), list(range(count // 2, count))):
        if budget.take():
            out += await send(part)
        else:
            out += [Unavailable(f"not sent again: the split of a call refused {refusal.reason.name} ended (at "
                                f"MAX_SPLIT_CALLS={MAX_SPLIT_CALLS} calls, or a part refused as a whole for a "
                                "transient reason); read again later", Reason.OUTCOME_UNKNOWN)] * len(part)
    return out
