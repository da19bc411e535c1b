"""The checks the fault injection adds, after every step (``checks.py`` holds the original ones)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from reservation import Key, Ledger, Outcome, ReserveCommand
from reservation import _orders as orders
from tests.sim.checks import Violation, holds_match_positions
from tests.sim.durable import channel_keys, curated
from tests.sim.simchannels import ESTATE
from tests.sim.world import World


class ServiceErrors(logging.Handler):
    """Every ERROR the service logs is a bug it caught (a listener that raised, a command that failed
    unexpectedly, a shard that stopped): the step that logs one fails, even where the service went on."""

    def __init__(self, expected: Callable[[logging.LogRecord], bool] | None = None) -> None:
        """``expected``: the errors a fault makes the service log by design (Redis lost a tail)."""
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.expected = expected

    def emit(self, record: logging.LogRecord) -> None:
        if self.expected is None or not self.expected(record):
            self.records.append(record)

    def __enter__(self) -> ServiceErrors:
        logging.getLogger("atp_service").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("atp_service").removeHandler(self)

    def check(self) -> None:
        if self.records:
            record = self.records[0]
            cause = record.exc_info[1] if record.exc_info else None
            raise Violation(f"the service logged an error: {record.getMessage()} ({cause!r})")


async def every_shard_answers(world: World) -> None:
    """R8 liveness: no shard task died, none is parked or wedged — each answers a trivial command."""
    for actor in world.eng.actors:
        if actor.failure is not None:
            raise Violation(f"liveness: shard {actor.shard} failed: {actor.failure!r}")
        if actor._task is None or actor._task.done():
            raise Violation(f"liveness: shard {actor.shard}'s task ended")
        if (instead := await world.answers(actor.shard)) is not None:
            raise Violation(f"liveness: shard {actor.shard} {instead}")


def snapshots_whole(world: World) -> None:
    """R7 (``snapshot_parts.py``): the snapshot Redis holds is always one the service wrote, whole —
    never a mixture of two tries' parts, nor a try's parts with some lost."""
    if world.log.torn:
        raise Violation(f"R7: {world.log.torn[0]}")


def every_record_routed(world: World) -> None:
    """A reservation the ledgers hold is found by id (confirm, release, get): its route points home."""
    for actor in world.eng.actors:
        router = world.router_of(actor.shard)  # several processes: the shard's owner routes its records
        for rid in actor.ledger.reservations:
            if orders.order_of(rid) is not None:
                continue  # a part of an order spanning groups: reached through its order, never by id
            if router.home_of(rid) != actor.shard:
                raise Violation(f"routes: {rid} lives on shard {actor.shard}, the engine routes it to "
                                f"{router.home_of(rid)} (confirm/release would answer NOT_FOUND)")


def one_record_per_id(world: World) -> None:
    """R5 across groups: no two shards hold a record of one reservation id (an order's parts have ids of
    their own). ``every_record_routed`` sees a second record only where one process routes both: a
    retry with other lines decided without its id's claim (``engine/ids.py``) made one in a group
    another process served, its route that process's alone."""
    seen: dict[str, int] = {}
    for actor in world.eng.actors:
        for rid in actor.ledger.reservations:
            if orders.order_of(rid) is None and seen.setdefault(rid, actor.shard) != actor.shard:
                raise Violation(f"R5: {rid} has a record on shard {seen[rid]} and another on shard {actor.shard}")


def no_route_without_record(world: World) -> None:
    """At rest (nothing in flight, nothing in doubt), every route of every live process leads to a record: a
    route with no record and no Reserve attempt holds memory for the process's life, and in leased mode one
    to a group now another's forwards GetReservation/Confirm/Release there, to be answered "not held" for good."""
    processes = getattr(world, "processes", None)
    engines = [world.eng] if processes is None else [p.engine for p in world.running()]  # type: ignore[attr-defined]
    for engine in engines:
        routes = engine.routes
        for rid, home in routes.homes.items():
            if rid in routes.attempts:
                continue  # a Reserve on its way (a saga left to housekeeping): its record may yet be made
            actor = engine.actors[home]
            if actor.ledger.reservation(rid) is None:
                where = "a group not served here" if actor.vacant else "no record there"
                raise Violation(f"routes: {rid} is routed to shard {home}, {where} (a stale route)")


def durable_state_consistent(recovered: list[tuple[Ledger, int]]) -> None:
    """Q2/Q3 in what a restart would find: no order held on one shard and missing on another (R2)."""
    ledgers = [ledger for ledger, _ in recovered]
    records = {rid: rec for ledger in ledgers for rid, rec in ledger.reservations.items()}
    try:
        holds_match_positions(ledgers, records)
    except Violation as exc:
        raise Violation(f"in the durable log: {exc}") from None


def abandoned_reserves_whole(world: World, abandoned: list[ReserveCommand]) -> None:
    """R8 (and R2): a reserve whose caller gave up was applied whole or not at all — every line of an
    all-or-nothing order granted, or none (each shard's half is checked by Q2/Q3 and E10)."""
    for cmd in abandoned:
        rec = next((a.ledger.reservations[cmd.reservation_id] for a in world.eng.actors
                    if cmd.reservation_id in a.ledger.reservations), None)
        if rec is None or rec.allow_partial:
            continue
        granted = [line.outcome == Outcome.GRANTED for line in rec.lines]
        if any(granted) and not all(granted):
            raise Violation(f"R8: abandoned reserve {cmd.reservation_id} was granted in part: {rec.lines}")


def channels_follow_durable_state(world: World, recovered: list[tuple[Ledger, int]]) -> None:
    """C4 once converged: each channel stream's newest value per key is the curated value of the
    durable state (a fresh recovery), and the desk believes exactly what the stream holds."""
    if world.desk is None:
        return
    expected: dict[str, dict[Key, int]] = {name: {} for name in ESTATE.channels}
    for ledger, _ in recovered:
        by_sku: dict[str, dict[str, int]] = {}
        for sku, loc, q in ledger.store.items():
            by_sku.setdefault(sku, {})[loc] = q.on_hand - q.reserved - q.committed - q.safety_stock
        for sku, available in by_sku.items():
            for loc in available:
                for channel, key in channel_keys(ESTATE, sku, loc):
                    values = available if key[1] == "" else {loc: available[loc]}
                    expected[channel][key] = curated(ESTATE, channel, values)
    for channel, want in expected.items():
        stream = world.channels.state[channel]
        for key in set(want) | set(stream):
            shown = stream[key].quantity if key in stream else None
            if shown != want.get(key, 0):
                raise Violation(f"C4: channel {channel} shows {key} = {shown}, the durable state curates to "
                                f"{want.get(key, 0)}")
        believed = {k: p for k, p in world.desk.desk.feeds[channel].published.items()}
        if believed != stream:
            raise Violation(f"C4: the desk believes {channel} shows {believed}, the stream holds {stream}")
