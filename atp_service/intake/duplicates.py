"""A fact answered DUPLICATE (E8) is answered from its shard's memory: no log entry is written for it, so no write
finds the log short. After Redis came back from older data (a failover to a replica that lagged, a restart from an
older AOF or RDB) that memory may hold a fact whose entry Redis lost, while the fact's input entry, older, was kept
and is read again. Acknowledged as a duplicate, the entry was gone for good and its fact never applied (R7: the
acknowledgement of what is not durable). So before a DUPLICATE is answered, each shard that gave one has its log's
end read (the owner check's read, ``Engine.check_logs_reach``): a shard found short stops (``LogDiverged``, said as
``shard_failed``) and its duplicates are answered UNAVAILABLE — not acknowledged, read again once the group is
recovered from what Redis holds (the service restarted; leased, the group taken again), and applied then. Every
path that answers a DUPLICATE does so: RecordEvents and the input streams (``FactDesk._record``), a fact stamped
ahead of the clock applied already (E7, ``applied_or_refused``) and a LoadCounts row (``counts_durable``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from atp_service.engine.router import Engine
from atp_service.storage.durability import STORAGE_ERRORS
from reservation import DomainError, Fact, FactOutcome, Moved, Reason, Unavailable

Result = tuple[FactOutcome, str]


async def not_durable(engine: Engine, shards: Collection[int]) -> dict[int, DomainError]:
    """The shards of ``shards`` whose DUPLICATEs are not to be answered, each with its refusal: its log unread
    (STORAGE_UNREACHABLE; on a Redis Cluster, where its own node did not answer: the others' judged), found short
    (SHARD_STOPPED), or its group given up since it answered (``Moved``: not checked here; vacant,
    ``check_logs_reach`` skips it). A duplicate is answered behind the newest entry its
    shard has in flight (``pipeline._seal``): its fact's entry is at or below the shard's durable one when this
    reads the log's end."""
    if not shards:
        return {}
    try:  # a node that did not answer leaves its own shards unread, the others judged (liveness)
        unread = await engine.check_logs_reach(shards)
    except STORAGE_ERRORS as exc:  # (leased: whose a log is, unread)
        unread = dict.fromkeys(shards, exc)
    out: dict[int, DomainError] = {  # not known to hold them: not acknowledged (a retry, a read again, decides)
        shard: Unavailable(f"the log of shard {shard} unread ({exc}); retry", Reason.STORAGE_UNREACHABLE)
        for shard, exc in unread.items()}
    for shard in set(shards) - set(unread):
        try:
            actor = engine.local(shard)
        except Moved as exc:
            out[shard] = exc
            continue
        if actor.failure is not None:
            out[shard] = Unavailable(f"shard {shard} stopped working; the service restarts", Reason.SHARD_STOPPED)
    return out


async def duplicates_durable(engine: Engine, facts: Sequence[Fact], out: list[Result | DomainError]) -> None:
    """``out``'s DUPLICATEs kept where their shard's log still reaches what it made durable (``not_durable``);
    else their shard's refusal."""
    at = [i for i, result in enumerate(out) if type(result) is tuple and result[0] == FactOutcome.DUPLICATE]
    refusals = await not_durable(engine, {engine.place(facts[i].sku) for i in at})
    for i in at:
        refusal = refusals.get(engine.place(facts[i].sku))
        if refusal is not None:
            out[i] = refusal


async def counts_durable(engine: Engine, parts: Sequence[tuple[int, npt.NDArray[np.intp], object]],
                         outcomes: npt.NDArray[np.uint8], refused: DomainError | None) -> DomainError | None:
    """LoadCounts' rows answered DUPLICATE kept where their shard's log still reaches what it made durable
    (``not_durable``); else made 0 (not loaded, as a row its shard refused): the call's refusal (``told_first``)."""
    duplicates = {shard: rows[outcomes[rows] == FactOutcome.DUPLICATE] for shard, rows, _ in parts}
    refusals = await not_durable(engine, [shard for shard, rows in duplicates.items() if len(rows)])
    for shard, refusal in refusals.items():
        outcomes[duplicates[shard]] = 0
        refused = told_first(refused, refusal)
    return refused


def told_first(refused: DomainError | None, other: DomainError) -> DomainError:
    """The refusal a block refused by several parts is told: one in doubt (R7: ``OUTCOME_UNKNOWN``, its
    rows may have been loaded) before one that loaded nothing, which would hide it; else the first."""
    if refused is None or (other.reason is Reason.OUTCOME_UNKNOWN and refused.reason is not Reason.OUTCOME_UNKNOWN):
        return other
    return refused
