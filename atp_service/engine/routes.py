"""Where each reservation's record lives: its home shard, noted when its Reserve is routed so that a
concurrent retry with the same id meets the first attempt on the same actor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from atp_service.engine.shard import ShardActor
from reservation import LogEntry, ReserveCommand
from reservation._events import ReservationSaved


class Routes:
    """Reservation id -> home shard, and the Reserve attempts in progress per id."""

    def __init__(self, actors: Sequence[ShardActor], place: Callable[[str], int]) -> None:
        self._actors, self._place = actors, place
        self.homes: dict[str, int] = {}
        """reservation_id -> the shard holding its record (or about to)."""
        self.attempts: dict[str, int] = {}
        """reservation_id -> Reserve attempts in progress."""
        self.kept: dict[int, set[str]] = {}
        """shard -> the routes ``forget_if_unheld`` kept because the shard was in doubt: looked at again
        once its settle ends (``settled``), or no settle would ever forget those no entry of which exists
        (a Reserve refused at once while the shard was in doubt). Bounded by ``homes``: each is a route."""

    def adopt(self, actor: ShardActor) -> None:
        """Route every record ``actor`` holds to it, and follow its entries taken back or found late."""
        for rid in actor.ledger.reservations:
            self.homes[rid] = actor.shard
        actor.landed_late_listeners.append(self.rehome)
        actor.lost_listeners.append(self.unhome)
        actor.settled_listeners.append(self.settled)

    def drop(self, shard: int) -> None:
        """Forget every route to ``shard`` (its group now another process's)."""
        for rid in [rid for rid, home in self.homes.items() if home == shard]:
            del self.homes[rid]
        self.kept.pop(shard, None)

    def settled(self, shard: int) -> None:
        """``shard``'s doubt settled: the routes kept for it go unless a record or an attempt holds them."""
        for rid in self.kept.pop(shard, ()):
            if self.homes.get(rid) == shard:
                self.forget_if_unheld(rid)

    def placement(self, cmd: ReserveCommand) -> tuple[set[int], int]:
        """The shards a Reserve needs and its record's home (the known one, else the lowest shard)."""
        rid = cmd.reservation_id
        if len(cmd.lines) == 1:  # the common case, without the set arithmetic
            shard = self._place(cmd.lines[0].sku)
            home = self.homes.get(rid, shard)
            return ({shard} if home == shard else {shard, home}), home
        shards = {self._place(line.sku) for line in cmd.lines}
        home = self.homes.get(rid, min(shards))
        shards.add(home)
        return shards, home

    def route(self, cmd: ReserveCommand) -> tuple[set[int], int]:
        """``placement``, with the home noted before the shard decides (a concurrent retry must meet
        the first attempt there); ``unroute`` forgets it again once no attempt is left and no
        record was made, and ``unhome`` when the record is taken back. (``Engine.reserve`` routes a
        Reserve of one line itself, alike.)"""
        shards, home = self.placement(cmd)
        rid = cmd.reservation_id
        self.homes.setdefault(rid, home)  # note(), without its frame: every Reserve of several lines
        self.attempts[rid] = self.attempts.get(rid, 0) + 1
        return shards, home

    def note(self, rid: str, home: int) -> None:
        self.homes.setdefault(rid, home)
        self.attempts[rid] = self.attempts.get(rid, 0) + 1

    def done(self, reservation_id: str) -> None:
        """An attempt that made (or found) its record: the route stays, one attempt fewer."""
        left = self.attempts.pop(reservation_id) - 1
        if left:
            self.attempts[reservation_id] = left

    def unroute(self, reservation_id: str) -> None:
        left = self.attempts.pop(reservation_id) - 1
        if left:
            self.attempts[reservation_id] = left
        else:
            self.forget_if_unheld(reservation_id)

    def unhome(self, _shard: int, entry: LogEntry) -> None:
        """An entry in doubt found not to have landed: a record it created is gone, and so is its route."""
        for event in entry.events:
            if isinstance(event, ReservationSaved):
                self.forget_if_unheld(event.reservation.reservation_id)

    def rehome(self, shard: int, entry: LogEntry) -> None:
        """An entry taken back, then found in the log when settling: its records are there again
        (a route forgotten meanwhile — say, by a replaced instance's path — comes back)."""
        for event in entry.events:
            if isinstance(event, ReservationSaved):
                self.homes.setdefault(event.reservation.reservation_id, shard)

    def forget_if_unheld(self, reservation_id: str) -> None:
        """A refused, shed, failed or undone Reserve leaves no record: nor may it leave a route. Not
        while its home is in doubt: the record may yet be found in the log (``unhome`` decides)."""
        home = self.homes.get(reservation_id)
        if home is None or reservation_id in self.attempts:
            return
        actor = self._actors[home]
        if actor.in_doubt:  # looked at again once the settle ends (``settled``)
            self.kept.setdefault(home, set()).add(reservation_id)
        elif actor.ledger.reservation(reservation_id) is None:
            del self.homes[reservation_id]

    def forget_evicted(self, shard: int, reservation_id: str) -> None:
        """A resolved record ``shard`` forgot after its retention: its route goes too, unless a
        retry with its id is on its way."""
        if self.homes.get(reservation_id) == shard and reservation_id not in self.attempts:
            del self.homes[reservation_id]
