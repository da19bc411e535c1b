"""E10/R7: with nothing in flight, each shard's memory equals a fresh start from what Redis holds (its
snapshot, then the log after it) — not only its positions and reservations, but everything a later call
reads: the kept fact history (E2, E9), the facts it remembers (E8), its holds by position, its expiry
queue, its stream time and what it has forgotten (E6, E8, E9).

What may differ is what upkeep forgets (E8, E9), which a replay of the log does not repeat and whose cadence a
snapshot does not carry. The live ledger forgets remembered facts and frees kept deltas stamped before its horizon
(``Upkeep.late_horizon``: stream time less the grace, never before ``forgotten_before``), at most once each time
that horizon moves a sixteenth of the grace (``Upkeep._pass_every``). The fresh one, compared here, has forgotten
nothing since its snapshot: the live one may remember less than it, never anything it does not, and exactly the
same from the horizon on (the same in both). The fresh one's first pass then forgets at once all that is stamped
before the horizon, which the live one may keep until its next: after their passes either may remember less than
the other, only ever facts stamped before that shared horizon — E8's window (the grace) stays covered by both
(``tests/reservation/test_forgetting_restored.py``). That changes no position, record or stream time, but it
changes one answer: a resend of such a fact is a duplicate (or a conflict, quarantined) where it is remembered, and
late (E6, quarantined) where it is forgotten — applied by neither. Everything is compared by content (the order of
a set, whether a remembered fact is sealed yet, is no answer's)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from reservation import TERMINAL, Ledger, State
from reservation._keys import pair_key
from tests.sim.checks import Violation

if TYPE_CHECKING:
    from tests.sim.tailloss import TailLoss

_LIVE = (State.HELD, State.CONFIRMED)


def replay_equals_live(world: Any, recovered: list[tuple[Ledger, int]]) -> None:
    """E10/R7: with nothing in flight, memory equals a fresh start from the log (see the module)."""
    for actor, (fresh, seq) in zip(world.eng.actors, recovered, strict=True):
        live, shard = actor.ledger, actor.shard
        if seq != actor.seq:
            raise Violation(f"E10: shard {shard} memory at entry {actor.seq}, log at {seq}")
        if sorted(live.store.items()) != sorted(fresh.store.items()):
            raise Violation(f"E10: shard {shard} positions differ from a replay of the log")
        if live.reservations != fresh.reservations:
            raise Violation(f"E10: shard {shard} reservations differ from a replay of the log")
        bookkeeping_whole(shard, live)
        if live._holds_at._at != fresh._holds_at._at:  # by content: each position's ids, in any order
            raise Violation(f"E10: shard {shard}'s holds by position differ from a replay of the log's")
        if live.live_reservations != fresh.live_reservations:
            raise Violation(f"E10: shard {shard} counts {live.live_reservations} live reservations in memory, "
                            f"{fresh.live_reservations} after a replay of the log")
        times_equal(shard, live, fresh)
        histories_equal(shard, live, fresh)
        remembered_equal(shard, live, fresh)


async def held_after_loss(world: Any, restart: Callable[[], Awaitable[None]]) -> None:
    """Redis lost a tail since the instance started: by the step's end (the owner check run, as it runs every
    owner_check_s) the instance stopped to be restarted (``restart``), or holds only what Redis holds (R7)."""
    await world.owner_check()
    if world.must_restart:
        await restart()
        await world.quiesce()
        return
    await _holds_what_redis_holds(world, "the instance, still serving,")


async def held_after_loss_leased(world: Any, tail: TailLoss | None, trace: list[str], step: int) -> None:
    """Several processes: every running one's owner check runs at the step's end (finding nothing unless Redis lost
    a tail). After a loss (``tail.stale``, read once the checks ran), a group found short was given up and is taken
    again from what Redis holds — no process restarts, its reader goes on with what it holds: the processes renew
    and balance — and then every group's owner holds exactly what Redis holds (R7)."""
    await world.owner_check()
    if tail is None or not tail.stale:
        return
    await world.converge_membership()
    await world.quiesce()
    await _holds_what_redis_holds(world, "a process, still serving the group,")
    trace.append(f"{step}: every group served from what Redis holds after it lost a tail")


async def _holds_what_redis_holds(world: Any, who: str) -> None:
    """Memory holds exactly what a recovery from Redis holds (R7), else ``who`` served what Redis lost; the loss
    then forgotten."""
    try:
        replay_equals_live(world, await world.recovered())
    except Violation as exc:
        raise Violation(f"R7: Redis lost acknowledged entries and {who} did not notice by its owner check: "
                        f"{exc}") from None
    world.forget_loss()


def times_equal(shard: int, live: Ledger, fresh: Ledger) -> None:
    """E6: the stream time and the late horizon (which facts are late) are the log's; the live ledger has
    forgotten no less than its snapshot said (``forgotten_before`` never goes back, E8, E9)."""
    if live.stream_time != fresh.stream_time:
        raise Violation(f"E6/E10: shard {shard} stream time {live.stream_time} in memory, {fresh.stream_time} "
                        f"in a replay of the log")
    if live.forgotten_before < fresh.forgotten_before:
        raise Violation(f"E8/E9: shard {shard} forgot before {live.forgotten_before} in memory, a replay of the "
                        f"log before {fresh.forgotten_before} (went back)")
    if live.late_horizon(live.stream_time) != fresh.late_horizon(fresh.stream_time):
        raise Violation(f"E6/E10: shard {shard} takes facts before {live.late_horizon(live.stream_time)} as late "
                        f"in memory, before {fresh.late_horizon(fresh.stream_time)} after a replay of the log")
    if fresh.clock > live.clock:
        raise Violation(f"R6: shard {shard} memory's clock {live.clock} is behind the log's {fresh.clock}")


def histories_equal(shard: int, live: Ledger, fresh: Ledger) -> None:
    """E1-E5, E9: each position's latest count and the kept deltas that still count (``Ledger.history``,
    whether E9's sweep has freed the others yet or not) are a replay's."""
    mine_at, theirs_at = live.late_horizon(live.stream_time), fresh.late_horizon(fresh.stream_time)  # ``_horizon``
    view_mine, view_theirs, cell_mine, cell_theirs = (live.histories.view, fresh.histories.view, live.store.locate,
                                                      fresh.store.locate)  # ``Ledger.history``, at one look-up
    for sku, location, _ in live.store.items():
        mine = view_mine(cell_mine(sku, location), mine_at)
        theirs = view_theirs(cell_theirs(sku, location), theirs_at)
        if mine != theirs:
            raise Violation(f"E2/E9/E10: shard {shard} {sku}@{location}'s latest count and kept deltas are {mine} "
                            f"in memory, {theirs} in a replay of the log")


def remembered(ledger: Ledger) -> dict[bytes, int]:
    """E8: the identities the ledger remembers, sealed or open: digest -> payload (``_dedupe``)."""
    memory = ledger.memory
    if not len(memory._his):
        return memory.open
    out = dict(memory.open)
    for hi, lo, at, rest in zip(memory._his.tolist(), memory._los.tolist(), memory._times.tolist(),
                                memory._rests.tolist(), strict=True):
        key = hi.to_bytes(8, "big") + lo.to_bytes(8, "big")
        if key in out:
            raise Violation(f"E8: shard {ledger.shard} remembers one fact twice, sealed and open")
        out[key] = at << 64 | rest
    return out


def remembered_equal(shard: int, live: Ledger, fresh: Ledger) -> None:
    """E8: the live ledger remembers what a replay does, with the same payload, but for what it forgot:
    stamped before its ``forgotten_before`` (a resend of one is late, E6, never applied)."""
    mine, theirs = remembered(live), remembered(fresh)
    if mine == theirs:
        return
    differ = sorted(key for key in mine if theirs.get(key) != mine[key])
    if differ:
        raise Violation(f"E8/E10: shard {shard} remembers {len(differ)} fact(s) a replay of the log does not, or "
                        f"with another payload (event times {[mine[k] >> 64 for k in differ[:5]]})")
    missing = sorted(at for key, payload in theirs.items() if key not in mine
                     and (at := payload >> 64) >= live.forgotten_before)
    if missing:
        raise Violation(f"E8/E10: shard {shard} has forgotten {len(missing)} fact(s) a replay of the log "
                        f"remembers, stamped at or after what it forgot before ({live.forgotten_before}): event "
                        f"times {missing[:5]}")


def bookkeeping_whole(shard: int, ledger: Ledger, name: str = "memory") -> None:
    """The indexes a ledger keeps beside its records say what the records do: holds by position (the
    reservations with units outstanding there, ``Ledger.holds_at``), each hold in the expiry queue at its
    expiry (R3: else it never expires), each resolved one queued for eviction (R5: else it is kept for
    good), and the count of live ones (``max_live_reservations_per_shard``)."""
    records = ledger.reservations
    held: dict[str, set[str]] = {}
    for rid, rec in records.items():
        for line in rec.lines:
            if line.held or line.committed:
                held.setdefault(pair_key(line.sku, line.location), set()).add(rid)
    index = {key: set(holders.ids) for key, holders in ledger._holds_at._at.items()}
    if index != held:
        wrong = sorted(key for key in set(index) | set(held) if index.get(key) != held.get(key))
        raise Violation(f"Q2/E10: shard {shard}'s holds by position in {name} name {[index.get(k) for k in wrong[:3]]} "
                        f"at {wrong[:3]}, its records {[held.get(k) for k in wrong[:3]]}")
    queued = set(ledger._expiry) | set(ledger._passed)  # those a turn passed over, set aside
    resolved = set(ledger._resolved)
    live = 0
    for rid, rec in records.items():
        live += rec.state in _LIVE
        if rec.state == State.HELD and (rec.expires_at, rid) not in queued:
            raise Violation(f"R3: shard {shard}'s hold {rid} (expires at {rec.expires_at}) is not in its expiry "
                            f"queue in {name}: it would never expire")
        if rec.state in TERMINAL and rec.pending is None and (rec.updated_at, rid) not in resolved:
            raise Violation(f"R5: shard {shard}'s resolved {rid} is not queued for eviction in {name}: it would be "
                            f"kept for good")
    if live != ledger.live_reservations:
        raise Violation(f"E10: shard {shard} counts {ledger.live_reservations} live reservations in {name}, "
                        f"holds {live}")
