"""Calls forwarded to a group's owner, ended once that owner is known to have lost the group (``edge.forward``).

A forwarded call waits for its owner's answer. An owner that stopped answering with the call in hand
(paused, hung, cut off) and whose lease then passed to another process (or ran out) never answers it
for that group again: its writes are fenced, and the group's new owner answers for what it made. The
caller waited out its whole deadline for nothing (DEADLINE_EXCEEDED, an OMS's checkout backed up for
the length of its deadline on each node loss). Each routes read (``Membership.balance``) tells the
calls forwarded for a group whose route no longer names the process they were sent to (a call for several
groups: for one of them) — they are
answered at once, a change ``OUTCOME_UNKNOWN`` (R7: it may have been made before the owner went
silent; retried with the same ids, the new owner answers what was decided, R5), a read ``GROUP_MOVED``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TypeVar

from atp_service.edge.routing import RoutingTable
from atp_service.tasks import exception_seen
from reservation import Moved, Reason, Unavailable

T = TypeVar("T")
ANY = -1
"""The group of a call naming only a reservation, asked of a process whichever of its groups holds it
(``Forwarder._locate``, an order step wherever the order is held): ended once the routes name that process for
no group at all."""
Groups = int | Collection[int]
"""The groups a call forwarded is for: one, or several (a part of a call split by owner, ``Forwarder.ask_each``;
a ``ReserveStream`` part, ``edge.streams``), ended once any of them has another owner."""
Lost = tuple[int, str]
"""A group of a watched call whose routes no longer name its owner, and the address they name ("": none)."""


class OwnerWatch:
    """The calls forwarded now, by group, each with the owner it was sent to."""

    def __init__(self) -> None:
        self._waiting: dict[int, dict[asyncio.Future[Lost], str]] = {}
        self.shards = 0
        """The groups of the routes last read (0: none read yet): what a part's SKUs are placed among, kept here
        so a call split by owner need not build the whole routing table (one lookup a group) to learn it."""

    @contextmanager
    def lost(self, groups: Groups, owner: str) -> Iterator[asyncio.Future[Lost]]:
        """A future set, within the block, to (the group, the address its routes name, "": none) once the
        routes no longer name ``owner`` for one of ``groups`` (``ANY``: to (ANY, "") once they name ``owner``
        for no group)."""
        lost: asyncio.Future[Lost] = asyncio.get_running_loop().create_future()
        watched = _named(groups)
        for group in watched:
            self._waiting.setdefault(group, {})[lost] = owner
        try:
            yield lost
        finally:
            for group in watched:
                waiting = self._waiting[group]
                del waiting[lost]
                if not waiting:
                    del self._waiting[group]
            lost.cancel()

    def routes_read(self, table: RoutingTable) -> None:
        """The routes just read: the calls of each group whose owner is not the one they went to are told."""
        self.shards = table.shards
        if not self._waiting:
            return
        now = {route.group: route.address for route in table.routes}
        named = set(now.values())
        for group, waiting in self._waiting.items():
            address = now.get(group, "")
            for lost, owner in waiting.items():
                if (owner not in named if group == ANY else address != owner) and not lost.done():
                    lost.set_result((group, address))

    async def answer(self, sending: Awaitable[T], groups: Groups, owner: str, change: bool) -> T:
        """``sending``'s answer (the call forwarded to ``owner`` for ``groups``); cancelled, and ``OwnerLost``
        raised, once the routes name another owner of one of ``groups``."""
        with self.lost(groups, owner) as lost:
            call = asyncio.ensure_future(sending)
            call.add_done_callback(exception_seen)
            try:
                await asyncio.wait((call, lost), return_when=asyncio.FIRST_COMPLETED)
            finally:
                call.cancel()  # the owner lost the group, or this caller went away (once done: nothing)
            if call.done() and not call.cancelled():
                return call.result()
            # The send itself cancelled (its channel closed under it, a stop): the owner's answer is as lost.
            group, now = lost.result() if lost.done() else (_named(groups)[0], "")
            raise OwnerLost(owner_lost(group, owner, now, change))

    async def asked(self, send: Callable[[], Awaitable[T]], owner: str, change: bool, groups: Groups = ANY) -> T:
        """``send()``'s answer: a call asked of ``owner`` for several ``groups`` (a part of a call split by owner:
        ended once one of them has another owner), or for a reservation whose group is not known (``ANY``: once
        the routes name ``owner`` for no group); ``owner_lost``'s refusal raised."""
        try:
            return await self.answer(send(), groups, owner, change)
        except OwnerLost as lost:
            raise lost.refusal from None

    def __len__(self) -> int:
        """Forwarded calls watched now (none once every one has ended)."""
        return len({lost for waiting in self._waiting.values() for lost in waiting})


class OwnerLost(Exception):
    """A forwarded call's owner lost its group with the call in hand: ``refusal`` is the caller's answer."""

    def __init__(self, refusal: Unavailable) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _named(groups: Groups) -> tuple[int, ...]:
    """``groups`` as a tuple, each once (none: ``ANY``)."""
    return (groups,) if isinstance(groups, int) else tuple(dict.fromkeys(groups)) or (ANY,)


def owner_lost(group: int, owner: str, now: str, change: bool) -> Unavailable:
    """What a call forwarded to ``owner`` for ``group`` is answered once the routes name ``now`` instead
    (``ANY``: a call asked of ``owner`` whatever its group, once they name ``owner`` for no group)."""
    if group == ANY:  # the call may be of any group it held: R7 for a change; a read, nothing done, is retried
        said = f"the process {owner} lost every shard group it held with this call in hand"
        if change:
            return Unavailable(f"{said}; it may have been made: retry with the same ids, which answers what was "
                               "decided", Reason.OUTCOME_UNKNOWN)
        return Unavailable(f"{said}; retry", Reason.GROUP_MOVED)
    if change:  # R7: made or not before the owner went silent; the same ids at the new owner answer which (R5)
        return Unavailable(f"the owner {owner} of shard group {group} lost it with this call in hand (now "
                           f"{now or 'being taken over'}); it may have been made: retry with the same ids, which "
                           "answers what was decided", Reason.OUTCOME_UNKNOWN)
    return Moved(group, now)
