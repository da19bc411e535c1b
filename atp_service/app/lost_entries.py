"""Whether Redis still holds what a leased group acknowledged here, asked once the group is lost here.

A group is lost quietly (``group_lost`` at WARNING, ``lease`` or ``fenced``) when its lease ran out or a
later taking replaced this one: a routine takeover after a pause or an outage. But Redis back from older
data (a restart from an older AOF or RDB, a failover to a replica that lagged) loses the lease too when it
was away past it, and whoever takes the group next — this process included — recovers from what Redis
holds: the entries this process made durable after Redis's save are gone for good, and the owner check,
which stops a shard whose log ends short (R7), may never read that log first (the renewal found the lease
gone first, or the new owner wrote past the lost entries). Only the process that acknowledged them knows
what they were: its shard's newest durable entry, read back once the shard is stopped. A log without it
(ending before it), or holding another entry in its place (the new owner's, written where Redis went back
to), lost acknowledged entries: said at ERROR, counted in ``atp_shard_failures_total`` as a shard that
found its log short is (``ATPShardFailed``).
"""

from __future__ import annotations

import logging

from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.log import LogStore

log = logging.getLogger(__name__)


async def say_if_lost(store: LogStore, actor: ShardActor, why: str, metrics: EngineMetrics) -> bool:
    """Whether ``actor``'s log (its group lost here for ``why``; ``actor`` stopped) lost its newest durable
    entry — said loudly when it did. False where it cannot be told: Redis does not answer, the entry was
    trimmed by a later owner's snapshot, or it was recovered here, not made here (its bytes not known)."""
    seq, data = actor.seq, actor.durable_data
    if not seq or actor.failure is not None:  # nothing made durable; or its failure said already
        return False
    try:
        there = await store.entry_at(actor.shard, seq)
        newest = seq if there is not None else await store.last_seq(actor.shard)
    except STORAGE_ERRORS:
        return False
    if there is None and newest >= seq:
        return False  # trimmed: a later owner's snapshot covers it, whoever's it was
    if there is not None and (data is None or there == data):
        return False  # kept (or, recovered here, not known: taken to be)
    found = f"ends at entry {newest}, before" if there is None else "holds another entry in place of"
    metrics.shard_failures.inc()
    log.error("group %d: lost here (%s), and Redis lost acknowledged entries of it: its log %s entry %d, which "
              "this process made durable — Redis came back from older data (a restart from an older AOF or RDB, a "
              "failover to a replica that lagged) and the group was taken again from what it holds; the changes "
              "acknowledged up to that entry are gone", actor.shard, why, found, seq,
              extra={"event": "acknowledged_lost", "group": actor.shard, "why": why, "entry": seq, "newest": newest,
                     "overwritten": there is not None})
    return True


__all__ = ["say_if_lost"]
