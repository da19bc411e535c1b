"""With leases: a group's confirmed orders checked once after the group is taken, a bounded few at a
time, and resolved where every part is (R5).

The last part of a confirmed order fulfilled by a SHIPMENT at another process asks the order's home
to resolve its record (``parts.shipped_elsewhere``); the fact is refused OUTCOME_UNKNOWN until the
home has heard, and taken again it resolves the order. A producer that gave up on it meanwhile left
the record CONFIRMED at its home for good: counted live there (``max_live_reservations_per_shard``),
never forgotten, its parts long fulfilled. One process finds such orders at start
(``_order_losses.found_at_start``: every group is its own). With leases a process knows only the
groups it serves, so the one taking a group checks each of its confirmed orders once: the home
that missed the resolve was being taken over, or had stopped answering and is taken over once its
leases lapse. Each check reads every part at its group (a peer's, for theirs), so a few run at once.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from reservation import DomainError, Ledger, Reservation, State

CONFIRMED_SCAN_PER_PASS = 2_000
"""Records one housekeeping pass looks at, at most, over the groups taken: a fraction of a ms. A
record that is not a confirmed order with nothing pending is passed over at once."""
CONFIRMED_CHECKS_AT_ONCE = 8
"""Confirmed orders checked at once, each reading every part (a step per group, at peers for theirs):
a group of 100,000 confirmed orders taken over is checked in a few minutes, a load on the peers of
a few dozen reads a second."""

Check = Callable[[str, int], Any]
"""Starts the check of an order (id, home group), returning its task: its result False where the order
could not be told (a part's group did not answer) and has nothing pending, to be checked again — not
half-way, so neither driven on as unsettled nor counted in ``atp_orders_unsettled`` or as a saga stopped."""


class Served(Protocol):
    """A shard as the sweep sees it (``ShardActor`` or ``Vacant``)."""

    shard: int
    vacant: bool
    ledger: Ledger


class ConfirmedChecks:
    """Sweeps the groups taken for confirmed orders and checks them (``run_pass``, from housekeeping)."""

    def __init__(self, check: Check, locked: Callable[[str], bool]) -> None:
        self._check, self._locked = check, locked
        self._sweeps: dict[int, tuple[Ledger, list[str], int]] = {}
        """Group -> (its ledger when taken, its ids then, how far the sweep got)."""
        self._running: set[Any] = set()  # the checks' tasks

    def taken(self, ledger: Ledger) -> None:
        """``ledger``'s group was taken: each of its confirmed orders will be checked once."""
        self._sweeps[ledger.shard] = (ledger, list(ledger.reservations), 0)

    @property
    def pending(self) -> int:
        """Records still to look at, and checks running."""
        return sum(len(ids) - at for _, ids, at in self._sweeps.values()) + len(self._running)

    def run_pass(self, actors: Sequence[Served]) -> None:
        """Look at the next records of the groups taken; start checks of the confirmed orders among
        them while fewer than ``CONFIRMED_CHECKS_AT_ONCE`` run."""
        budget = CONFIRMED_SCAN_PER_PASS
        for group in list(self._sweeps):
            ledger, ids, at = self._sweeps[group]
            actor = actors[group]
            if actor.vacant or actor.ledger is not ledger:  # handed over (or taken anew: swept anew)
                del self._sweeps[group]
                continue
            while at < len(ids) and budget > 0 and len(self._running) < CONFIRMED_CHECKS_AT_ONCE:
                rid, budget = ids[at], budget - 1
                rec = ledger.reservations.get(rid)
                if rec is not None and rec.is_order and rec.pending is None and rec.state == State.CONFIRMED:
                    if self._locked(rid):  # a saga of it runs: it resolves the order if every part is
                        break  # looked at again at the next pass
                    task = self._check(rid, group)
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                    task.add_done_callback(functools.partial(self._ended, rid, ledger))
                at += 1
            if at >= len(ids):
                del self._sweeps[group]
            else:
                self._sweeps[group] = (ledger, ids, at)

    def _ended(self, rid: str, ledger: Ledger, task: Any) -> None:
        """A check ended: one that could not tell is looked at again, after the rest of its group's records
        (a group taken anew since is swept anew; one handed over is dropped at the next pass)."""
        if task.cancelled() or task.exception() is not None or task.result() is not False:
            return
        sweep = self._sweeps.get(ledger.shard)
        if sweep is None:
            self._sweeps[ledger.shard] = (ledger, [rid], 0)
        elif sweep[0] is ledger:
            sweep[1].append(rid)


async def checked(resolve: Callable[[], Awaitable[None]], record: Callable[[], Reservation | None]) -> bool:
    """A check (``Check``): ``resolve`` (``Orders._resolve_if_done``) run; False where it could not tell (a part not
    read) and the order's ``record`` at its home (None: the home vacant now) has nothing pending (not half-way)."""
    try:
        await resolve()
    except DomainError:
        order = record()
        if order is not None and (order.pending is not None or order.state != State.CONFIRMED):
            raise  # a change it had pending stopped half-way: driven on by housekeeping
        return order is None
    return True
