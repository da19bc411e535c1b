"""A fact answered DUPLICATE (E8) is answered from its shard's memory: no log entry is written for it, so no write
finds the log short. After Redis came back from older data (a failover to a replica that lagged, a restart from an
older AOF or RDB) that memory may hold a fact whose entry Redis lost, while the fact's input entry, older, was kept
and is read again. Acknowledged as a duplicate, the entry was gone for good and its fact never applied (R7: the
acknowledgement of what is not durable). So before a DUPLICATE is answered, each shard that gave one has its log's
end read (the owner check's read, ``Engine.check_logs_reach``): a shard found short stops (``LogDiverged``, said as
``shard_failed``) and its duplicates are answered UNAVAILABLE — not acknowledged, read again once the group is
recovered from what Redis holds (the service restarted; leased, the group taken again), and applied then."""

from __future__ import annotations

from collections.abc import Sequence

from atp_service.engine.router import Engine
from atp_service.storage.durability import STORAGE_ERRORS
from reservation import DomainError, Fact, FactOutcome, Reason, Unavailable

Result = tuple[FactOutcome, str]


async def duplicates_durable(engine: Engine, facts: Sequence[Fact], out: list[Result | DomainError]) -> None:
    """``out``'s DUPLICATEs kept where their shard's log still reaches what it made durable; else UNAVAILABLE.
    A duplicate is answered behind the newest entry its shard has in flight (``pipeline._seal``): its fact's
    entry is at or below the shard's durable one when this reads the log's end."""
    at = [i for i, result in enumerate(out) if type(result) is tuple and result[0] == FactOutcome.DUPLICATE]
    if not at:
        return
    shards = {engine.place(facts[i].sku) for i in at}
    try:
        await engine.check_logs_reach(shards)
    except STORAGE_ERRORS as exc:  # not known to hold them: not acknowledged (a retry, a read again, decides)
        for i in at:
            out[i] = Unavailable(f"the log of shard {engine.place(facts[i].sku)} unread ({exc}); retry",
                                 Reason.STORAGE_UNREACHABLE)
        return
    for i in at:
        shard = engine.place(facts[i].sku)
        actor = engine.actors[shard]
        if not actor.vacant and actor.failure is not None:
            out[i] = Unavailable(f"shard {shard} stopped working; the service restarts", Reason.SHARD_STOPPED)
