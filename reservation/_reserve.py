"""A Reserve (R1, R2, R5) decided over a ``View`` of one or more shards: every line granted or none
(or each alone with ``allow_partial``), a retry with the same id answered by its record.

Like the rest of the lifecycle (``_operations``, which re-exports these), it checks everything before it
changes anything: a refusal is a record, never a half-made change.
"""

from __future__ import annotations

from typing import Protocol

from ._allocate import GroupPolicy, allocate
from ._errors import AlreadyExists
from ._ledger import Ledger
from ._model import (
    Fact,
    FactOutcome,
    LineRecord,
    LineRequest,
    Outcome,
    Quantities,
    Reservation,
    ReserveCommand,
    State,
)


class View(Protocol):
    """What the lifecycle needs from shard state; a Ledger, or several behind one facade."""

    def quantities(self, sku: str, location: str) -> Quantities: ...
    def reservation(self, reservation_id: str) -> Reservation | None: ...
    def move_hold(self, sku: str, location: str, d_reserved: int, d_committed: int) -> None: ...
    def ship(self, sku: str, location: str, quantity: int, at: int, ref: str) -> None: ...
    def save(self, reservation: Reservation) -> None: ...
    def record_fact(self, fact: Fact) -> tuple[FactOutcome, str]: ...


class ReserveView(View, Protocol):
    """A ``View`` a Reserve is decided on: it also reads a position's ``available`` (Q5) alone."""

    def available(self, sku: str, location: str) -> int: ...


def reserve(view: ReserveView, cmd: ReserveCommand, now: int,
            groups: GroupPolicy | None = None) -> tuple[Reservation, bool]:
    """R2: grant all lines or none (or each alone with allow_partial). Returns (record, replayed).
    A line naming a group in ``groups`` is split over member locations by the group strategy."""
    if type(view) is Ledger:  # on one shard (most Reserves): one line of a new id, as its ledger writes it out
        rec = view.reserve_new(cmd, now, groups)
        if rec is not None:
            return rec, False
    return reserve_otherwise(view, cmd, now, groups)


def reserve_otherwise(view: ReserveView, cmd: ReserveCommand, now: int,
                      groups: GroupPolicy | None) -> tuple[Reservation, bool]:
    """``reserve`` of all but what ``Ledger.reserve_new`` decides: a retry (R5), several lines, a
    group line, a Reserve over another view."""
    existing = view.reservation(cmd.reservation_id)
    if existing is not None:
        same_content(existing, cmd)
        return existing, True  # R5: replay the original decision, refusals included
    lines = cmd.lines
    if len(lines) != 1 or (groups is not None and lines[0].location in groups.groups):
        return _reserve_planned(view, cmd, now, groups), False
    return _reserve_line(view, cmd, now), False


def _reserve_line(view: ReserveView, cmd: ReserveCommand, now: int) -> Reservation:
    """``reserve`` of a new id of one line naming a location, not a group, over any view:
    ``_reserve_planned``'s decision and record without its plans. With one line, all-or-nothing and
    ``allow_partial`` agree: granted whole where it fits (R2), else INSUFFICIENT (never NOT_ATTEMPTED)."""
    line = cmd.lines[0]
    sku, location, quantity = line.sku, line.location, line.quantity
    a = view.available(sku, location)
    if quantity <= a:
        record = LineRecord(sku, location, quantity, quantity, Outcome.GRANTED, a, quantity)
        view.move_hold(sku, location, quantity, 0)
        state, expires_at = State.HELD, now + cmd.ttl_ms
    else:
        record = LineRecord(sku, location, quantity, 0, Outcome.INSUFFICIENT, a)
        state, expires_at = State.REJECTED, 0
    rec = Reservation(cmd.reservation_id, cmd.order_ref, cmd.channel, cmd.ttl_ms, cmd.allow_partial, state, (record,),
                      now, expires_at, now, ttl_default=cmd.ttl_default)
    view.save(rec)
    return rec


def _reserve_planned(view: ReserveView, cmd: ReserveCommand, now: int, groups: GroupPolicy | None) -> Reservation:
    """``reserve`` of a new id in general: each line planned (``_plan``), then granted or not."""
    plans, every_fits = _plan(view, cmd, groups)
    grant_fitting = every_fits or cmd.allow_partial  # R2: every line or none, unless each alone
    held = False
    records = []
    for line, picks, total, group in plans:
        if picks and grant_fitting:
            held = True
            for loc, qty, a in picks:
                records.append(LineRecord(line.sku, loc, qty, qty, Outcome.GRANTED, a, held=qty, group=group))
                view.move_hold(line.sku, loc, qty, 0)
        else:
            outcome = Outcome.INSUFFICIENT if not picks else Outcome.NOT_ATTEMPTED
            records.append(LineRecord(line.sku, line.location, line.quantity, 0, outcome, total, group=group))
    rec = Reservation(
        reservation_id=cmd.reservation_id,
        order_ref=cmd.order_ref,
        channel=cmd.channel,
        ttl_ms=cmd.ttl_ms,
        allow_partial=cmd.allow_partial,
        state=State.HELD if held else State.REJECTED,
        lines=tuple(records),
        created_at=now,
        expires_at=now + cmd.ttl_ms if held else 0,
        updated_at=now,
        ttl_default=cmd.ttl_default,
    )
    view.save(rec)
    return rec


_Plan = tuple[LineRequest, list[tuple[str, int, int]], int, str]
"""(line, [(location, units, available)], its available units, its group or "")."""


def _plan(view: ReserveView, cmd: ReserveCommand, groups: GroupPolicy | None) -> tuple[list[_Plan], bool]:
    """Where each line's units would come from (an empty pick list: the line does not fit), and
    whether every line fits. Units an earlier line of the same command would take are not offered
    again (R1)."""
    if groups is None or not any(line.location in groups.groups for line in cmd.lines):
        # The common case: plain lines, already summed per position (R1), so none takes another's units.
        plans: list[_Plan] = []
        every_fits = True
        for line in cmd.lines:
            a = view.available(line.sku, line.location)
            if line.quantity <= a:
                plans.append((line, [(line.location, line.quantity, a)], a, ""))
            else:
                every_fits = False
                plans.append((line, [], a, ""))
        return plans, every_fits
    taken: dict[tuple[str, str], int] = {}
    planned: dict[int, _Plan] = {}
    # Plain lines first (R2): they can come from one location only, while a group line may pick
    # another member; a group line written first took units a later plain line then lacked, and an
    # order that fits was refused.
    for index in sorted(range(len(cmd.lines)), key=lambda i: cmd.lines[i].location in groups.groups):
        line = cmd.lines[index]
        sku = line.sku

        def available(loc: str, sku: str = sku) -> int:
            return view.available(sku, loc) - taken.get((sku, loc), 0)

        members = groups.groups.get(line.location)
        if members is None:
            a = available(line.location)
            picks = [(line.location, line.quantity, a)] if line.quantity <= a else []
            planned[index] = (line, picks, a, "")
        else:
            picks, total = allocate(members, line.quantity, available, groups.strategy)
            planned[index] = (line, picks, total, line.location)
        for loc, qty, _ in picks:
            taken[(sku, loc)] = taken.get((sku, loc), 0) + qty
    in_order = [planned[index] for index in range(len(cmd.lines))]
    return in_order, all(picks for _, picks, _, _ in in_order)


def requested_lines(rec: Reservation) -> tuple[LineRequest, ...]:
    """The lines as requested: records of one group line (consecutive) fold back into it."""
    out: list[LineRequest] = []
    for line in rec.lines:
        if line.group and out and out[-1].sku == line.sku and out[-1].location == line.group:
            out[-1] = LineRequest(line.sku, line.group, out[-1].quantity + line.requested)
        else:
            out.append(LineRequest(line.sku, line.group or line.location, line.requested))
    return tuple(out)


def same_content(rec: Reservation, cmd: ReserveCommand) -> None:
    """R5: the same id with different content is refused, naming the first field that differs. A
    TTL left unset both times is the same, whatever the default was each time (a retry across a
    restart that changed ``default_ttl_seconds``)."""
    mine = requested_lines(rec)
    for field, old, new in (
        ("order_ref", rec.order_ref, cmd.order_ref),
        ("channel", rec.channel, cmd.channel),
        ("lines", mine, cmd.lines),
        ("ttl", *((0, 0) if rec.ttl_default and cmd.ttl_default else (rec.ttl_ms, cmd.ttl_ms))),
        ("allow_partial", rec.allow_partial, cmd.allow_partial),
    ):
        if old != new:
            raise AlreadyExists(field, f"reservation {rec.reservation_id!r} exists with other content "
                                       f"(it differs in {field})")
