"""Leases on shard groups: which service process may own a group now, when several share a keyspace.

A lease is a key in the group's own slot (``<prefix>{g<shard>}:lease``), set with an expiry (Redis
``SET … PX``) and renewed while its holder lives. It keeps the other processes off a group; it is
never what makes a write safe. Taking a group raises the group's owner key to the taker's epoch in
the same script, and every write script checks that key (``scripts.py``): an owner that was paused
or cut off past its lease — and so lost the group — finds every write it sends afterwards refused
whole ("FENCED"), whatever its clock says. Lease timing decides availability only.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Container, Sequence
from typing import Any

from atp_service.storage.log import Fenced, LogStore
from atp_service.storage.nodes import Call, Script
from atp_service.storage.records import UNCLAIMED, claimed, number_of, wall_ms
from atp_service.storage.resp import as_text
from atp_service.storage.scripts import ALLOW_OOM, CLAIM_ORDER_LUA, EPOCH_SCRIPT
from atp_service.tasks import exception_seen, finish_uncancelled, keep

# KEYS: lease, owner, fence; ARGV: holder, epoch (``<number>:<nonce>``, the taking's own), lease ms.
# -1: another holder's lease is live. A taking the owner key outranks was replaced (FENCED,
# ``scripts.CLAIM_ORDER_LUA``); else the lease is (re)taken, the owner key set to the epoch, and the
# group's fence returned (the token its writes carry). It runs on a Redis at its maxmemory (``ALLOW_OOM``:
# a lease and an owner key a group, bounded as the fence is): refused there, a group handed over or whose
# owner died answered nobody, and its log — what filled Redis — was never snapshotted and trimmed.
ACQUIRE_SCRIPT = ALLOW_OOM + CLAIM_ORDER_LUA + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return -1 end
local owner = redis.call('GET', KEYS[2])
if outranks(owner, ARGV[2]) then
  return redis.error_reply('FENCED epoch ' .. ARGV[2] .. ' of ' .. KEYS[2] .. ' was replaced by ' .. owner)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
return tonumber(redis.call('GET', KEYS[3]) or '0')
"""

# KEYS: lease; ARGV: holder, lease ms. 1: renewed; 0: the lease is another's, or gone.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, owner; ARGV: holder, epoch. A lease given back at once (after a graceful hand-over),
# never another's, nor a later taking's by the same holder: a RELEASE that lands late must not free
# the group under the taking that owns it now (the owner key holds its epoch; 0: not known, any).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '0' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class GroupLeases:
    """One process's leases on the groups of ``store``'s keyspace, held under ``holder`` (unique
    per process) for ``lease_ms`` at a time. Every taking of a group draws a new epoch, its number above
    every number drawn before (``<prefix>claims``) and no lower than the time (``scripts.DRAW_LUA``),
    with a random nonce of its own (``records.claimed``): whoever takes a group last outranks every
    earlier owner of it, whichever process that was, and even a taking whose number repeats one Redis
    has since lost (back from older data, its lease and owner key with it) is another epoch, which the
    lost taking's writes do not carry (R7)."""

    _ACQUIRE, _RENEW, _RELEASE, _EPOCH = (Script(body) for body in (ACQUIRE_SCRIPT, RENEW_SCRIPT, RELEASE_SCRIPT,
                                                                    EPOCH_SCRIPT))

    def __init__(self, store: LogStore, holder: str, lease_ms: int) -> None:
        if lease_ms <= 0:
            raise ValueError(f"lease_ms: must be positive, got {lease_ms}")
        self.store, self.holder, self.lease_ms = store, holder, lease_ms
        self.held: dict[int, str] = {}
        """Groups held now, with the epoch each was taken with."""
        self.renewed: set[int] = set()
        """The groups the last ``renew`` extended."""
        self.giving_back: set[asyncio.Task[None]] = set()
        """Give-backs under way: every ``release``, and those of leases an acquire may have won as it
        was cancelled (see ``acquire``)."""

    def key(self, group: int) -> str:
        return self.store.keys.tag(group) + "lease"

    async def acquire(self, group: int) -> bool:
        """Take ``group`` if no other holder's lease is live: its owner key raised to a new epoch
        (every write of a previous owner refused from now on) and its fence adopted. False: held
        by another. ``Fenced``: another taking of the group outranked this one meanwhile."""
        epoch = self.held.get(group) or await self._draw(group)
        keys = [self.key(group), self.store.keys.owner(group), self.store.keys.fence(group)]
        acquiring = asyncio.ensure_future(self.store.nodes.run_one(Call(self._ACQUIRE, keys, [self.holder, epoch,
                                                                                            self.lease_ms])))
        try:
            fence = int(await asyncio.shield(acquiring))
        except asyncio.CancelledError:
            # Redis may grant it all the same: then give it back, after the grant (never before it),
            # rather than leave the group to no one until the lease runs out.
            keep(self.giving_back, self._give_back_if_granted(group, epoch, acquiring))
            raise
        except Exception as exc:
            refused = _as_fenced(exc)
            if isinstance(refused, Fenced):
                self.held.pop(group, None)  # outranked: a later try draws a new epoch
            elif group not in self.held:  # its answer lost (a timeout): Redis may have granted it all the same,
                self._give_back(group, epoch)  # given back (epoch-checked), not left to no one for a lease
            raise refused from None
        if fence < 0:
            return False
        self.store.adopt(group, epoch, fence)
        self.held[group] = epoch
        return True

    async def _draw(self, group: int) -> str:
        """A new epoch for taking ``group``: its number above the claims key, the clocks, and the group's
        owner key itself — a process whose clock ran ahead may have taken it at a higher number than the
        claims key still holds (Redis back from older data on the claims key's node), and the taking
        would be refused until real time passed it; and a nonce no other taking has."""
        top = number_of(await self.store.client.get(self.store.keys.owner(group)))
        number = int(await self.store.nodes.run_one(Call(self._EPOCH, [self.store.keys.claims], [top, wall_ms()])))
        return claimed(number, secrets.token_hex(8))

    async def renew(self) -> dict[int, str]:
        """Extend every lease still held; returns the groups found lost (expired and taken, or gone),
        each with the epoch it was held at. They stay in ``held`` until the caller, once it stops
        serving them, ``drop``s them: a group still served here must never look free to take again here
        (a renewal is one half of ``Membership.renew``, whose other half may still be on its way).
        A process must stop serving a lost group before its lease would have run out."""
        held = dict(self.held)
        groups = sorted(held)
        replies = await self.store.nodes.run([Call(self._RENEW, [self.key(g)], [self.holder, self.lease_ms])
                                              for g in groups])
        lost = {g: held[g] for g, reply in zip(groups, replies, strict=True) if not isinstance(reply, BaseException)
                and int(reply) == 0 and self.held.get(g) == held[g]}  # not released, nor taken anew, meanwhile
        self.renewed = {g for g, reply in zip(groups, replies, strict=True) if not isinstance(reply, BaseException)
                        and int(reply) == 1 and self.held.get(g) == held[g]}
        return lost

    def drop(self, group: int, epoch: str) -> bool:
        """Forget the lease of ``group`` a renewal found lost at ``epoch``; False where it is no longer
        held at that epoch (given up, or taken anew, meanwhile)."""
        if self.held.get(group) != epoch:
            return False
        del self.held[group]
        return True

    def give_back_strays(self, holders: Sequence[Any], owners: Sequence[Any], busy: Container[int]) -> list[int]:
        """Give back each lease Redis names this holder for (``holders``, ``owners``: every group's lease and
        owner key as read) though no taking here holds it: an ACQUIRE whose answer was lost and whose grant
        landed after the give-back that followed (that RELEASE overtook it on another connection) would keep
        the group from everyone — this process included — until the lease ran out. ``busy``: groups being
        handed over or given up here, their own RELEASE on its way. Epoch-checked: never a later taking's.
        Only between takings (``Membership.balance``), never while one is under way."""
        strays = [g for g, holder in enumerate(holders) if holder is not None and as_text(holder) == self.holder
                  and g not in self.held and g not in busy]
        for group in strays:
            self._give_back(group, as_text(owners[group] or UNCLAIMED))
        return strays

    async def given_back(self) -> None:
        """Until every give-back under way (a cancelled ``acquire``'s, a ``release`` whose caller
        was cancelled) has ended. ``wait``, not ``gather``: a
        cancellation of this wait (a stop's repeated cancel) never cancels a give-back."""
        if self.giving_back:
            await asyncio.wait(self.giving_back)

    async def _give_back_if_granted(self, group: int, epoch: str, acquiring: asyncio.Future[Any]) -> None:
        """A cancelled ``acquire``'s give-back: after a grant, and after an answer lost (a timeout), as
        ``acquire`` gives back its own: Redis may have granted it all the same, and a stop (what cancels a
        taking) leaves no balance to find it stray. Epoch-checked: a RELEASE of a taking not granted frees
        nothing."""
        with contextlib.suppress(Exception):  # Redis unreachable: the lease runs out instead
            try:
                granted = int(await acquiring) >= 0
            except Exception as exc:
                granted = not isinstance(_as_fenced(exc), Fenced)  # its answer lost: granted, may be
            if granted:
                await self.store.nodes.run_one(self._release_call(group, epoch))

    def _release_call(self, group: int, epoch: str) -> Call:
        return Call(self._RELEASE, [self.key(group), self.store.keys.owner(group)], [self.holder, epoch])

    async def release(self, group: int, epoch: str | None = None) -> None:
        """Give ``group`` back at once (after its final snapshot): another process may take it now.
        Never renewed again from here, even if Redis does not answer (the lease then runs out).

        The RELEASE runs in a task of ``giving_back``: a cancellation of the caller (a stop's
        repeated cancel, landing in a cancelled recovery's give-back) stops only the waiting, never
        the give-back, whose connection would be closed mid-exchange and its command dropped."""
        taken = self.held.pop(group, None)
        epoch = taken if epoch is None else epoch  # the taking given back (None: not known, any of this holder's)
        await finish_uncancelled(self._give_back(group, epoch or UNCLAIMED))

    def _give_back(self, group: int, epoch: str) -> asyncio.Task[Any]:
        """The RELEASE of ``group``'s lease taken at ``epoch``, in a task of ``giving_back`` (a caller
        gone, or Redis not answering: the lease runs out instead, quietly)."""
        giving = keep(self.giving_back, self.store.nodes.run_one(self._release_call(group, epoch)))
        giving.add_done_callback(exception_seen)
        return giving


async def taken_over(store: LogStore, group: int) -> bool:
    """Whether a later taking than this process's owns ``group`` now: its owner key names an epoch numbered
    at or above this process's (the group is then lost here, as a write refused FENCED would find it:
    ``LogStore.still_owner``). False while the group is this process's, and where the owner key went back
    below its epoch — numbers only rise, so Redis lost data: its log is not to be trusted, never a taking."""
    mine = store.epochs.get(group)
    (value,) = await store.values_of([store.keys.owner(group)])  # as ``still_owner`` reads it
    current = as_text(value)
    if current == mine or (mine is not None and current is not None and number_of(current) < number_of(mine)):
        return False  # this process's own (one read: the log diverged), or Redis went back
    return not await store.still_owner(group)


def _as_fenced(exc: BaseException) -> BaseException:
    return Fenced(str(exc)) if str(exc).startswith("FENCED") else exc


__all__ = ["GroupLeases", "taken_over"]
