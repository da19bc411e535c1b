"""The end of ``fault_soak.py``: what the durable state is, and whether the service, its reservations
and its channel feeds agree with it.

The durable state is read from Redis in this process with the service's own recovery steps (each
shard's snapshot, then its log after it: ``LogStore`` reads, ``Ledger.restore``/``replay``) — read
only: the keyspace is never claimed, so the running service is not fenced. Each check returns one
line per violation; the figures count them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.channels.estate import Estate
from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import values_of
from atp_service.storage.log import LogStore
from benchmarks.soak_load import DCS, Book, Layout
from reservation import ZERO, Key, Ledger, Limits, Quantities, Reservation, curate, decode_entry
from reservation import _orders as orders

Position = tuple[str, str]
HELD, CONFIRMED, FULFILLED, RELEASED, EXPIRED, REJECTED = (
    pb.RESERVATION_STATE_HELD, pb.RESERVATION_STATE_CONFIRMED, pb.RESERVATION_STATE_FULFILLED,
    pb.RESERVATION_STATE_RELEASED, pb.RESERVATION_STATE_EXPIRED, pb.RESERVATION_STATE_REJECTED)
SUCCESSORS: dict[int, set[int]] = {
    HELD: {HELD, CONFIRMED, FULFILLED, RELEASED, EXPIRED},
    CONFIRMED: {CONFIRMED, FULFILLED, RELEASED},
    FULFILLED: {FULFILLED}, RELEASED: {RELEASED}, EXPIRED: {EXPIRED},
    REJECTED: {REJECTED},
}
"""R3: the states a reservation acknowledged in one state may be found in later."""
READ_TRIES = 20
"""Reads of one shard's durable state when a snapshot moves under the read (it trims the log)."""
IN_FLIGHT = 32
"""GetReservation calls at once while checking."""
CALL_TIMEOUT_S = 5.0


@dataclass
class Durable:
    ledgers: list[Ledger]

    def positions(self) -> dict[Position, Quantities]:
        return {(sku, loc): q for ledger in self.ledgers for sku, loc, q in ledger.store.items()}

    def reservations(self) -> dict[str, Reservation]:
        """Every reservation as its callers see it: an order spanning shards (on a Redis Cluster)
        with its parts' lines; the parts themselves are not the callers'."""
        records = {rid: rec for ledger in self.ledgers for rid, rec in ledger.reservations.items()}
        out: dict[str, Reservation] = {}
        for rid, rec in records.items():
            if orders.order_of(rid) is not None:
                continue
            parts = {g: records[p] for g in rec.parts if (p := orders.part_id(rid, g)) in records}
            out[rid] = orders.view(rec, parts) if rec.is_order else rec  # as GetReservation shows it
        return out


async def read_durable(client: Any, prefix: str, shards: int, limits: Limits) -> Durable:
    store = LogStore(client, prefix, pipeline_max=1)  # for its reads only
    return Durable([await _read_shard(store, shard, limits) for shard in range(shards)])


async def _read_shard(store: LogStore, shard: int, limits: Limits) -> Ledger:
    for _ in range(READ_TRIES):
        snap = await store.load_snapshot(shard)
        ledger = Ledger.restore(shard, limits, snap.ledger) if snap else Ledger(shard, limits)
        async for _seq, data in store.entries_after(shard, snap.seq if snap else 0):
            ledger.replay(decode_entry(data))
        again = await store.load_snapshot(shard)
        if (again.seq if again else 0) == (snap.seq if snap else 0):
            return ledger  # no snapshot (and trim) in between: the entries read follow this snapshot
    raise RuntimeError(f"shard {shard}: its snapshot moved under every one of {READ_TRIES} reads")


async def until_clean(check: Callable[[], Awaitable[list[str]]], bound_s: float, every_s: float = 0.5,
                      clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Run ``check`` until it finds nothing or ``bound_s`` has passed since the first run ended;
    what it found last. The bound starts after the first run: a first full comparison of a long
    soak takes tens of seconds, the durable state is read at its start and memory during it, so
    a hold that expires meanwhile differs in that run only — a run that ends past the bound must
    not be the last word."""
    found = await check()
    deadline = clock() + bound_s
    while found and clock() < deadline:
        await asyncio.sleep(every_s)
        found = await check()
    return found


# -- liveness ------------------------------------------------------------------------------
async def liveness(stub: Any, layout: Layout, book: Book, tag: str, bound_s: float) -> list[str]:
    """A read and a write on a SKU of every shard, each answered within ``bound_s``."""
    found = await asyncio.gather(*(_probe(stub, layout.probes[s], s, book, tag, bound_s)
                                   for s in range(layout.shards)))
    return [f for f in found if f]


async def _probe(stub: Any, sku: str, shard: int, book: Book, tag: str, bound_s: float) -> str:
    deadline, last = time.monotonic() + bound_s, "no answer"
    fact = pb.Fact(event_id=f"probe-{tag}-{shard}", source=f"probe-{tag}-{shard}", kind=pb.FACT_KIND_RECEIPT, sku=sku,
                   location=DCS[0],
                   quantity=1, event_time=timestamp(int(time.time() * 1000)))
    book.facts_tried[fact.event_id] = (sku, DCS[0])
    read = write = False
    while time.monotonic() < deadline:
        timeout = max(0.05, min(CALL_TIMEOUT_S, deadline - time.monotonic()))
        try:
            if not read:
                await stub.GetAvailability(pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=sku, location=DCS[0])]),
                                           timeout=timeout)
                read = True
            resp = await stub.RecordEvents(pb.RecordEventsRequest(events=[fact]), timeout=timeout)
            book.ack_facts([fact], list(resp.results))
            write = True
            break
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name} {exc.details()}"
            await asyncio.sleep(0.2)
    return "" if read and write else (f"shard {shard} ({sku}): {'write' if read else 'read'} not answered "
                                      f"within {bound_s:.0f} s: {last}")


# -- reservations and facts, through the API -------------------------------------------------
async def api_reservations(stub: Any, ids: Iterable[str]) -> dict[str, pb.Reservation | None]:
    gate, out = asyncio.Semaphore(IN_FLIGHT), {}

    async def one(rid: str) -> None:
        async with gate:
            try:
                resp = await stub.GetReservation(pb.GetReservationRequest(reservation_id=rid), timeout=CALL_TIMEOUT_S)
                out[rid] = resp.reservation
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                out[rid] = None

    await asyncio.gather(*(one(rid) for rid in ids))
    return out


async def lost_reservations(stub: Any, book: Book) -> list[str]:
    """Every acknowledged reservation is there, in its acknowledged state or a successor (R3, R7)."""
    found = await api_reservations(stub, sorted(book.acked))
    out = []
    for rid, acked in sorted(book.acked.items()):
        rec = found[rid]
        if rec is None:
            out.append(f"reservation {rid}: acknowledged {pb.ReservationState.Name(acked)}, now NOT_FOUND")
        elif rec.state not in SUCCESSORS[acked]:
            out.append(f"reservation {rid}: acknowledged {pb.ReservationState.Name(acked)}, now "
                       f"{pb.ReservationState.Name(rec.state)}")
    return out


async def lost_facts(stub: Any, layout: Layout, book: Book) -> tuple[list[str], list[str]]:
    """(acknowledged facts missing from their position, facts applied more than once)."""
    positions = sorted(set(book.facts_tried.values()))
    applied: dict[Position, Counter[str]] = {}
    for sku, loc in positions:
        ex = await stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=sku, location=loc),
                                            timeout=CALL_TIMEOUT_S)
        ids = Counter(d.source for d in ex.deltas_after_count)  # the load gives each fact its own source
        if ex.has_count:
            ids[ex.count_event_id] += 1
        applied[(sku, loc)] = ids
    lost = [f"fact {fid} at {pos}: acknowledged, not applied" for fid, pos in sorted(book.facts_acked.items())
            if fid not in applied[pos]]
    twice = [f"fact {fid} at {pos}: applied {n} times" for pos, ids in applied.items() for fid, n in ids.items()
             if n > 1 and fid in book.facts_tried]
    return lost, twice


# -- invariants of the durable state -----------------------------------------------------------
def hold_mismatches(durable: Durable) -> list[str]:
    """Per position, reserved and committed equal what the reservations hold there (Q2, Q3). Records
    and positions may live on different shards, read one after another: poll (``until_clean``)."""
    held: Counter[Position] = Counter()
    committed: Counter[Position] = Counter()
    for rec in durable.reservations().values():
        for line in rec.lines:
            held[(line.sku, line.location)] += line.held
            committed[(line.sku, line.location)] += line.committed
    out = []
    for pos, q in sorted(durable.positions().items()):
        if (q.reserved, q.committed) != (held[pos], committed[pos]):
            out.append(f"position {pos}: reserved {q.reserved} committed {q.committed}, reservations hold "
                       f"{held[pos]} and commit {committed[pos]}")
    return out


def oversold(durable: Durable, book: Book) -> list[tuple[str, int]]:
    """Units promised beyond on hand at the DCs, less what SHIPMENTs took without fulfilling: no
    other fact lowers stock there, and none is late, so nothing else can explain them (Q5, R2)."""
    out = []
    for (sku, loc), q in sorted(durable.positions().items()):
        if loc in DCS:
            units = q.reserved + q.committed - q.on_hand - book.stock_only[(sku, loc)]
            if units > 0:
                out.append((f"position {(sku, loc)}: {units} units oversold (on hand {q.on_hand}, reserved "
                            f"{q.reserved}, committed {q.committed})", units))
    return out


# -- memory against the log (E10): the live service's answers against the durable state ----------
async def divergences(stub: Any, durable: Durable, ids: Iterable[str],
                      known: Iterable[Position]) -> tuple[list[str], set[str]]:
    """The positions of the durable state and the ``known`` ones, and the reservations ``ids``, as
    the service answers them and as the log has them (a position the log lacks is all zeros).
    Returns the differences and the reservation ids that differ."""
    positions = durable.positions()
    keys = sorted(set(positions) | set(known))
    live: dict[Position, tuple[int, ...]] = {}
    for i in range(0, len(keys), 1000):
        req = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=s, location=loc) for s, loc in keys[i:i + 1000]])
        for p in (await stub.GetAvailability(req, timeout=CALL_TIMEOUT_S)).positions:
            live[(p.sku, p.location)] = (p.on_hand, p.reserved, p.committed, p.safety_stock)
    logged_q = {pos: (q.on_hand, q.reserved, q.committed, q.safety_stock)
                for pos in keys for q in [positions.get(pos, ZERO)]}
    out = [f"position {pos}: live {live.get(pos)}, log {q}" for pos, q in logged_q.items() if live.get(pos) != q]
    records, bad = durable.reservations(), set()
    for rid, rec in sorted((await api_reservations(stub, ids)).items()):
        mine, theirs = _record(records.get(rid)), _record(rec)
        if mine != theirs:
            out.append(f"reservation {rid}: live {theirs}, log {mine}")
            bad.add(rid)
    return out, bad


def _record(rec: Reservation | pb.Reservation | None) -> tuple[int, tuple[tuple[Any, ...], ...]] | None:
    """State and per-line quantities: what must be the same in memory and in the log."""
    if rec is None:
        return None
    return int(rec.state), tuple((ln.sku, ln.location, ln.held, ln.committed, ln.fulfilled, ln.released)
                                 for ln in rec.lines)


# -- channels (C1, C4) ----------------------------------------------------------------------------
def expected_channels(durable: Durable, estate: Estate) -> dict[str, dict[Key, int]]:
    """C1 over the durable state: per channel, the value of every key it is offered."""
    positions = durable.positions()
    out: dict[str, dict[Key, int]] = {}
    for name, channel in estate.channels.items():
        sells = set(channel.sells_from)
        values: dict[Key, int] = {}
        if channel.per_location:
            keys = [(sku, loc) for sku, loc in positions if loc in sells]
            shown = curate(np.array([positions[k].available for k in keys], dtype=np.int64), channel.rules)
            values = dict(zip(keys, shown.tolist(), strict=True))
        else:
            totals: dict[str, int] = {}
            for (sku, loc), q in positions.items():
                if loc in sells:
                    totals[sku] = totals.get(sku, 0) + max(q.available, 0)
            skus = sorted(totals)
            shown = curate(np.array([totals[s] for s in skus], dtype=np.int64), channel.rules)
            values = {(s, ""): v for s, v in zip(skus, shown.tolist(), strict=True)}
        out[name] = values
    return out


async def channel_mismatches(client: Any, prefix: str, durable: Durable, estate: Estate) -> list[str]:
    """The last published value of every key (state hash, and the stream's newest entry for it)
    against C1 over the durable state. A key the durable state does not have must show 0."""
    store = ChannelStore(client, prefix, epoch=lambda: "0")  # for its reads only
    out = []
    for name, expected in expected_channels(durable, estate).items():
        published, _, _ = await store.load(name)
        streamed = await _stream_last(store, name)
        for key in sorted(set(expected) | set(published)):
            want, pub = expected.get(key, 0), published.get(key)
            got = None if pub is None else pub.quantity
            if got != want:
                out.append(f"channel {name} {key}: published {got}, durable state curates to {want}")
            elif key in streamed and streamed[key] != got:
                out.append(f"channel {name} {key}: state hash {got}, stream's last entry {streamed[key]}")
    return out


async def _stream_last(store: ChannelStore, channel: str, chunk: int = 10_000) -> dict[Key, int]:
    last: dict[Key, int] = {}
    version = 0
    while updates := await store.read_after(channel, version, chunk, None):
        for u in values_of(updates):  # a start's marker is no key's value
            last[u.key] = u.quantity
        version = updates[-1].version
    return last
