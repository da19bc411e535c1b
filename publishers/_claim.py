"""A new lease holder takes over every entry pending in its group, under any consumer name.

A stop leaves the entries of the read under way pending under the stopping publisher's consumer
name (on purpose: not dead-lettered for want of the attempts the stop cut off). The next holder
reads its own name's pending entries, then new ones: entries pending under another name (replicas
started with different ``--consumer`` values, a name changed between versions) would never be
delivered, and a stock-out among them would stay unpublished until its key changes again (C2, C4).

So on taking the lease a publisher moves every pending entry of the group to its own name
(``XAUTOCLAIM`` from ``0-0``, min-idle 0, ``read_count`` per call, until its cursor comes back to
``0-0``), then reads them as its own. Claiming what another name holds, at once, is safe: only the
lease holder delivers or records, and a paused old holder's late record is fenced by its token.

Redis 7 drops from the pending list, and returns, the ids of entries trimmed from the stream while
pending: the newest values of their keys are delivered from the channel's state hash instead, as
those of a gap in the stream are (the publisher's ``_owe``: a step, one HSCAN call, at a time with a
read of the stream between, C2). They were resynced call by call of the claim, each a sweep of the
whole hash, before the takeover ended: a stock-out published meanwhile waited behind all of them.
Since nothing in the stream says they are owed any more, a resync of every key is owed durably
(``redeliver-all``, raised in the claim's own script) until that is done: a stop or crash half-way
leaves them to the next start.

The holder looks again once every lease (one XINFO CONSUMERS while nothing is pending elsewhere):
reads are not fenced, so an old holder paused past its lease can read new entries into its own
name before it notices the loss, and deliver none of them.

Consumers of the group left with nothing pending are then removed (``XGROUP DELCONSUMER``, each
only if its pending list is still empty, in one script): the group's consumer list stays bounded
however many names came and went.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from atp_service.storage.resp import as_text, seq_of
from atp_service.storage.scripts import ACL_LUA

from ._config import PublisherConfig
from ._lease import Lease
from ._metrics import PublisherMetrics
from ._reading import mark_checked

log = logging.getLogger(__name__)

CLAIM = ACL_LUA + """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return false end
""" + mark_checked("KEYS[3]") + """
local refused = denied({{'INCR', KEYS[3]}})  -- after XAUTOCLAIM: refused there, the trimmed ids dropped, none owed
if refused then return refused end
local reply = redis.call('xautoclaim', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'COUNT', ARGV[5], 'JUSTID')
local trimmed, mark = reply[3] or {}, 0
if #trimmed > 0 and ARGV[6] == '0' then mark = redis.call('incr', KEYS[3]) end
return {reply[1], #reply[2], trimmed, mark}
"""
"""Under the lease only: one XAUTOCLAIM call (ids only: the entries are read afterwards as this
consumer's own); when it dropped trimmed entries and this takeover raised no mark yet, a resync of
every key owed (the mark's new value returned; 0: none raised). ``false``: fenced off. (Redis 6.2 lists no
trimmed ids: it leaves them pending, and the read of own pending entries finds them trimmed.) A mark that is no count
refuses the claim before it moves anything (``mark_checked``): its INCR failed after XAUTOCLAIM had dropped the trimmed
ids from the pending list, nothing owed for them (C4). So does an INCR the ACL no longer allows (``ACL_LUA``: taken away
while the publisher runs), asked before the claim: DENIED."""
DELETE_EMPTY_CONSUMERS = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local n = 0
for i = 3, #ARGV do
  if #redis.call('xpending', KEYS[2], ARGV[2], '-', '+', 1, ARGV[i]) == 0 then
    redis.call('xgroup', 'delconsumer', KEYS[2], ARGV[2], ARGV[i])
    n = n + 1
  end
end
return n
"""
"""Under the lease only: each named consumer removed if nothing is pending under it (checked in
the same script: an entry read meanwhile is never dropped with its consumer)."""

Owe = Callable[[list[tuple[int, int]], str, int], Awaitable[None]]
"""The publisher's catch-up of versions trimmed before they were delivered (which, as ranges of first
and last version, what they are, and the value the claim raised the mark to for them), a step at a
time after the takeover."""


class Takeover:
    def __init__(self, config: PublisherConfig, client: Any, metrics: PublisherMetrics, lease: Lease,
                 owe: Owe, lost: Callable[[str], None]) -> None:
        self.config, self.client, self.metrics, self.lease = config, client, metrics, lease
        self._owe, self._lost = owe, lost
        self._next_look = 0.0

    def due(self) -> bool:
        """A look again, once a lease since the last: reads are not fenced, so a holder paused past
        its lease (or cut off, its read reaching Redis late) may read new entries into its own name
        after this one took over, then deliver nothing. They wait at most a lease."""
        return time.monotonic() >= self._next_look

    async def run(self) -> bool:
        """Every entry pending in the group moved to this consumer (trimmed ones owed their keys' values), and the
        consumers left empty removed. False: a stop, or the lease lost, cut it off."""
        cfg = self.config
        self._next_look = time.monotonic() + cfg.lease_s
        pending = await self._consumers()
        others = [name for name in pending if name != cfg.consumer]
        counts = {"claimed": 0, "trimmed": 0}
        if any(pending[name] for name in others) and not await self._claim_all(counts):
            return False
        deleted = await self._delete_empty(others)
        if deleted < 0:
            return False
        # XAUTOCLAIM takes this consumer's own pending entries too (to itself): not counted as taken over.
        taken = max(0, counts["claimed"] + counts["trimmed"] - pending.get(cfg.consumer, 0))
        if taken or deleted:
            self.metrics.claimed.labels(cfg.channel, cfg.group).inc(taken)
            log.info("%s: took over %d entries pending in group %s under other consumer names (%d pending entries "
                     "were trimmed from the stream: their keys owed a resync from the state hash); %d empty consumers "
                     "removed", cfg.channel, taken, cfg.group, counts["trimmed"], deleted,
                     extra={"event": "publisher_claimed", "channel": cfg.channel, "group": cfg.group,
                            "claimed": taken, "trimmed": counts["trimmed"], "consumers_removed": deleted})
        return True

    async def _consumers(self) -> dict[str, int]:
        cfg = self.config
        return {as_text(c["name"]): int(c["pending"]) for c in await self.client.xinfo_consumers(cfg.stream, cfg.group)}

    async def _claim_all(self, counts: dict[str, int]) -> bool:
        """XAUTOCLAIM until its cursor comes back to the start; then the trimmed ids owed, all in one
        catch-up (the mark raised for them settled once it is over)."""
        cfg, cursor, mark, trimmed = self.config, "0-0", 0, set[int]()
        while True:
            reply = await self.client.eval(CLAIM, 3, self.lease.key, cfg.stream, cfg.redeliver_all_key,
                                           self.lease.token, cfg.group, cfg.consumer, cursor, cfg.read_count,
                                           "1" if mark else "0")
            if reply is None:
                self._lost("its claim of the group's pending entries was fenced off: another publisher holds the lease")
                return False  # a mark raised stays: the next holder resyncs every key
            cursor, counts["claimed"] = as_text(reply[0]), counts["claimed"] + int(reply[1])
            mark = mark or int(reply[3])
            trimmed.update(seq_of(as_text(entry_id)) for entry_id in reply[2])
            if cursor == "0-0":
                break
        counts["trimmed"] = len(trimmed)
        if trimmed:
            await self._owe([(v, v) for v in sorted(trimmed)], f"{len(trimmed)} pending entries claimed", mark)
        return True

    async def _delete_empty(self, names: list[str]) -> int:
        """Consumers among ``names`` with nothing pending removed, ``read_count`` per script call.
        The number removed; -1: fenced off."""
        cfg, removed = self.config, 0
        for start in range(0, len(names), cfg.read_count):
            chunk = names[start:start + cfg.read_count]
            n = int(await self.client.eval(DELETE_EMPTY_CONSUMERS, 2, self.lease.key, cfg.stream, self.lease.token,
                                           cfg.group, *chunk))
            if n < 0:
                self._lost("its removal of empty consumers was fenced off: another publisher holds the lease")
                return -1
            removed += n
        return removed
