"""``--input-streams``: what every entry became, checked at a seed's end (Redis answering, nothing pending).

Each entry is done with: acknowledged (an XACK of it taken, or sent while it was pending nowhere: its group deleted, or
made again past it), taken out of the pending list by a claim that found it trimmed (its dead letter written by that
claim), or trimmed before any consumer read it — and then counted by the read that crossed the gap, told and forgotten
(``unread._ACK``), each such entry exactly once. An entry that is no fact has one dead letter at least and is never
applied; one trimmed while pending has its fact not both applied and quarantined (its dead letter,
``TRIMMED_WHILE_PENDING``, says it is not known to be applied); an entry may have two dead letters, as
docs/OPERATIONS.md "Dead letters" says (one written again by a consumer that read it before another claimed it and
dead-lettered it: counted, ``input_dead_letters_again``). A consumer group deleted takes its pending list: the reader
that finds it gone makes it again at the bound of the token Redis holds (``bounds.py``), before the oldest entry
pending in the group as the token was told, whichever consumer held it: the entries the other consumer held then come
again, and only those trimmed before they did are lost with it (``lost_with_group``; any other is a violation). An
entry the group made again delivers again to a reader other than the one that made it — the other consumer's, which
saw no NOGROUP, or one started since — is told by the group's made-again mark (``again.py``) as it is to the reader
that made it: one whose fact was quarantined is counted (``input_quarantined_elsewhere``: the case at work) and held
to the rule as any. Every entry whose fact has no other entry is applied, quarantined or dead-lettered as stamped in
the future (E7, ``--fact-times``: by the clock of the reader or the owner that judged it), exactly one, each once (E6,
E7, E8). The quarantine stream holds each fact once. A made-again mark is forgotten once nothing it covers can come
again (``marks_forgotten``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reservation import Fact, FactKind
from reservation._keys import fact_payload
from tests.sim.checks import Violation

if TYPE_CHECKING:
    from tests.sim.inputcluster import InputsClusterDriver
    from tests.sim.inputdriver import InputsDriver

Entry = tuple[str, bytes]
Named = tuple[str, str, str, str, int]


def named(fact: Fact) -> Named:
    return fact.source, fact.event_id, fact.sku, fact.location, fact_payload(fact)


def named_fields(fields: dict[str, str]) -> Named:
    fact = Fact(fields["event_id"], fields["source"], FactKind[fields["kind"]], fields["sku"], fields["location"],
                int(fields["quantity"]), int(fields["event_time_ms"]), fields["reservation_id"])
    return named(fact)


def letters(driver: InputsDriver) -> dict[Entry, list[str]]:
    """Per input entry, the ``_code`` of each dead letter naming it."""
    out: dict[Entry, list[str]] = {}
    for _, fields in driver.redis.dead_letters:
        out.setdefault((fields["_stream"], fields["_id"].encode()), []).append(fields["_code"])
    return out


def trimmed(driver: InputsDriver) -> tuple[set[Entry], set[Entry]]:
    """The entries trimmed away, and of those the ones no consumer was ever given."""
    gone = {(stream, entry_id) for stream, held in driver.redis.streams.items() for entry_id in held.trimmed}
    return gone, {entry for entry in gone if entry not in driver.redis.delivered}


def lost_with_group(driver: InputsDriver) -> set[Entry]:
    """The entries a consumer held when the group was deleted, the group made again by the other consumer's reader,
    and not acknowledged since: only those trimmed before the group made again delivered them (``decided_once``)."""
    return {(stream, entry_id) for stream, pending, maker in driver.redis.groups_lost
            for entry_id, holder in pending.items() if maker is None or holder != maker[0]} \
        - set(driver.redis.acked) - driver.redis.acked_unheld


def entries_of(driver: InputsDriver) -> dict[tuple[str, str, str, str], int]:
    """Per fact identity at its position, its entries: those Redis holds, and those it lost once a consumer was
    given them (``Producer.read_lost``): a reader that held one may have decided its fact after the loss."""
    out: dict[tuple[str, str, str, str], int] = {}
    for fact in [*driver.producer.facts.values(), *driver.producer.read_lost.values()]:
        out[named(fact)[:4]] = out.get(named(fact)[:4], 0) + 1
    return out


def decided_once(driver: InputsDriver) -> None:
    redis, producer = driver.redis, driver.producer
    dead, (gone, unread), lost = letters(driver), trimmed(driver), lost_with_group(driver) | driver.acked_lost
    if held := sorted(lost_with_group(driver) - gone):  # the group made again past them, though Redis held them
        raise Violation(f"E6/R7: entries another consumer held when the group was deleted, never delivered again: "
                        f"{[f'{s} {e.decode()}' for s, e in held[:5]]}")
    done = set(redis.acked) | redis.acked_unheld | redis.unclaimed | unread | lost
    if missing := [e for e in [*producer.facts, *producer.malformed] if e not in done]:
        raise Violation(f"entries never acknowledged: {[f'{s} {e.decode()}' for s, e in missing[:5]]}")
    dead_lettered(driver, dead, unread | lost)
    if bad := [e for e in producer.malformed if e not in unread | lost and e not in dead]:
        raise Violation(f"entries that are no fact never dead-lettered: {[f'{s} {e.decode()}' for s, e in bad[:5]]}")
    remade = {stream for stream, _, _ in redis.groups_lost}  # a group made again counts what it finds unread
    told = sum(n for stream, n in redis.forgotten.items() if stream not in remade)
    owed, unread_kept = [h for h in redis.hashes.values() if h], [e for e in unread if e[0] not in remade]
    if told != len(unread_kept) or owed:
        raise Violation(f"{len(unread_kept)} entries trimmed before any consumer read them; {told} told and "
                        f"forgotten, still owed: {owed}")
    if redis.told_unowed and driver.tail is None:  # told twice: only across a loss (``inputtail``)
        raise Violation(f"E6: entries trimmed unread told again, their count forgotten: {redis.told_unowed}")
    if redis.forgotten != redis.owed_added:  # each count told once, whoever tells it (a sweep's move): E6
        raise Violation(f"E6: entries trimmed unread counted owed by the reads crossing them, per stream: "
                        f"{redis.owed_added}; told and forgotten: {redis.forgotten}")
    several = entries_of(driver)
    written = [named_fields(f) for _, f, _ in redis.quarantined]
    if len(written) != len(set(written)):
        raise Violation("E8: a fact written to the quarantine stream twice")
    driver._index()
    if wrong := [f"{source}/{event_id}" for source, event_id, *_ in driver._applied if event_id.startswith("m")]:
        raise Violation(f"entries that are no fact applied: {wrong[:5]}")
    refused_not_applied(driver, several)
    each_decided_once(driver, several, set(written), unread, gone | lost)
    tally = driver.tally
    tally.input_entries += len(producer.facts) + len(producer.malformed)
    tally.input_dead_lettered += len(dead)
    tally.input_dead_letters_again += sum(len(codes) - 1 for codes in dead.values())
    tally.input_trimmed_unread += len(unread)
    tally.input_trimmed_pending += len(gone) - len(unread)
    tally.input_lost_with_group += len(lost) - len(driver.acked_lost)
    tally.input_acked_lost += len(driver.acked_lost)


def refused_ahead(driver: InputsDriver) -> set[Entry]:
    """The fact entries dead-lettered as stamped in the future (E7: ``_field`` ``event_time_ms``)."""
    named = {(fields["_stream"], fields["_id"].encode()) for _, fields in driver.redis.dead_letters
             if fields.get("_field") == "event_time_ms"}
    return {entry for entry in named if entry in driver.producer.facts}


def each_decided_once(driver: InputsDriver, several: dict[tuple[str, str, str, str], int], written: set[Named],
                      unread: set[Entry], gone: set[Entry]) -> None:
    """E6, E7, E8: an entry whose fact has no other entry, not trimmed unread, has exactly one outcome: its fact
    applied, or quarantined, or the entry dead-lettered as stamped in the future (E7, by the clock of the reader, or
    of the owner, that judged it) — none only where it was trimmed while pending or lost with its group (``gone``)."""
    refused = refused_ahead(driver)
    for entry, fact in driver.producer.facts.items():
        if several[named(fact)[:4]] > 1 or entry in unread:
            continue
        applied, held, ahead = named(fact) in driver._applied, named(fact) in written, entry in refused
        driver.tally.input_quarantined_elsewhere += entry in driver.redis.elsewhere and held
        if applied + held + ahead > 1 or not (applied or held or ahead or entry in gone):
            said = [what for what, yes in (("applied", applied), ("quarantined", held),
                                           ("dead-lettered as stamped in the future", ahead)) if yes]
            raise Violation(f"E6/E7/E8: entry {entry[0]} {entry[1].decode()} ({fact.source}/{fact.event_id}) "
                            f"{' and '.join(said) if said else 'neither applied, quarantined nor dead-lettered'}")
        driver.tally.input_quarantined += held
        driver.tally.input_refused_ahead += ahead


def refused_not_applied(driver: InputsDriver, several: dict[tuple[str, str, str, str], int]) -> None:
    """E7, E8: an entry dead-lettered as stamped in the future (``_field`` ``event_time_ms``) has its fact not applied,
    whichever reader judged it. A refusal written after its entry was delivered again elsewhere (its group made again
    meanwhile, or the entry claimed past ``claim_idle_ms``), by a reader that judged it by its clock, said refused of a
    fact the reader now holding it applied: such a write is not written (``dead_letters._WRITE``; the model's
    ``inputscripts.write_dead_letters``, counted ``input_refusals_elsewhere``)."""
    for _, fields in driver.redis.dead_letters:
        fact = driver.producer.facts.get((fields["_stream"], fields["_id"].encode()))
        if fields.get("_field") != "event_time_ms" or fact is None or several[named(fact)[:4]] > 1:
            continue
        if named(fact) in driver._applied:
            raise Violation(f"E7/E8: entry {fields['_stream']} {fields['_id']} ({fact.source}/{fact.event_id}) "
                            f"applied, its dead letter saying it was refused as stamped in the future")


def dead_lettered(driver: InputsDriver, dead: dict[Entry, list[str]], excused: set[Entry]) -> None:
    """Each dead letter Redis holds names an entry a producer wrote (Redis holds it, or lost it: a reader may have held
    it still); a fact's only for its entry trimmed while pending (not known to be applied: its entry gone from the
    stream) or for its stamp ahead of a reader's clock (E7, ``_field`` ``event_time_ms``). An entry whose dead letter
    Redis lost coming back from older data, the entry kept (``inputtail``: pending again, or unread again), is
    dead-lettered again — but one trimmed since before any consumer read it again, or lost with a group
    (``excused``): never acknowledged with its letter nowhere (docs/OPERATIONS.md, "Dead letters")."""
    producer, redis = driver.producer, driver.redis
    gone = driver.tail.gone if driver.tail is not None else set()
    for _, fields in redis.dead_letters:
        entry = fields["_stream"], fields["_id"].encode()
        held = redis.streams.get(entry[0])
        if entry not in producer.facts and entry not in producer.malformed and entry not in gone:
            raise Violation(f"a dead letter naming no entry written: {entry[0]} {entry[1].decode()}")
        trimmed_away = fields["_code"] == "TRIMMED_WHILE_PENDING" and (held is None or entry[1] not in held.entries)
        if entry in producer.facts and not trimmed_away and fields.get("_field") != "event_time_ms":
            raise Violation(f"fact entry {entry[0]} {entry[1].decode()} dead-lettered {fields['_code']}, "
                            f"{'its entry held still' if fields['_code'] == 'TRIMMED_WHILE_PENDING' else 'valid'}")
    if driver.tail is not None:
        again = sorted(e for e in driver.tail.letters_lost - excused if e in producer.malformed and e not in dead)
        if again:
            raise Violation(f"E6: entries whose dead letter Redis lost (back from older data) never dead-lettered "
                            f"again: {[f'{s} {e.decode()}' for s, e in again[:5]]}")
        driver.tally.input_letters_lost += len(driver.tail.letters_lost)


def swept(driver: InputsClusterDriver) -> None:
    """``--new-addresses``, every entry done: each consumer left in the group is a live process's (those of processes
    gone from their address swept: bounded), and no owed hash or answered mark of a removed one is left."""
    if not driver.new_addresses:
        return
    if left := departed_left(driver):
        raise Violation(f"consumers of processes gone from their address never swept: {sorted(left)}")
    driver.tally.input_swept += len(driver.redis.swept)
    driver.tally.input_swept_owed += sum(moved for _, moved in driver.redis.swept)
    driver.tally.input_runs_redrawn += driver.redis.redrawn
    driver.tally.input_swept_refused += driver.redis.refused_swept
    driver.tally.input_stopped_holding += driver.stops.held if driver.stops is not None else 0


def departed_left(driver: InputsClusterDriver) -> set[str]:
    """The consumers in the group, or in its set of those owing (``unread.owing_key``), named for an address no running
    process has."""
    live = {f"atp@{proc.address}" for proc in driver.cluster.running()}
    named = {name for held in driver.redis.streams.values() for mine in held.groups.values() for name in mine.consumers}
    return {name for name in named.union(*driver.redis.owing.values()) if name not in live}


def marks_forgotten(driver: InputsDriver) -> None:
    """Every entry done, each group at its stream's newest entry with nothing pending: a read forgets every made-again
    mark (bounded: none kept once no entry at or before it can come again)."""
    if kept := dict(driver.redis.marks):
        raise Violation(f"made-again marks kept with nothing left that they cover: {kept}")


def fold_of_produced(driver: InputsDriver, ledgers: list) -> None:  # type: ignore[type-arg]
    """E3, every entry done: at a position nothing was quarantined at (no conflict, room) and no entry was trimmed or
    lost with a group at, on_hand is the E1 fold of every fact produced there but those refused as stamped in the
    future (E7), whatever order they arrived in."""
    skipped = {(f["sku"], f["location"]) for _, f, _ in driver.redis.quarantined}
    skipped |= {(sku, loc) for _, _, sku, loc, _ in driver._quarantined}
    gone, lost = trimmed(driver)[0], lost_with_group(driver) | driver.acked_lost
    skipped |= {(fact.sku, fact.location) for entry, fact in driver.producer.facts.items() if entry in gone | lost}
    skipped |= driver.lost_positions
    refused = {named(driver.producer.facts[entry]) for entry in refused_ahead(driver)} - driver._applied
    by_position: dict[tuple[str, str], dict[tuple[str, str], Fact]] = {}
    for fact in driver.producer.facts.values():
        if named(fact) in refused:  # E7: never applied (``each_decided_once``)
            continue
        by_position.setdefault((fact.sku, fact.location), {})[(fact.source, fact.event_id)] = fact
    actual = {(s, loc): q.on_hand for ledger in ledgers for s, loc, q in ledger.store.items()}
    for position, facts in by_position.items():
        if position in skipped:
            continue
        on_hand = 0
        for fact in sorted(facts.values(), key=lambda f: (f.event_time, f.kind == FactKind.COUNT, f.source,
                                                           f.event_id)):
            on_hand = fact.quantity if fact.kind == FactKind.COUNT else on_hand + fact.delta
        if actual.get(position, 0) != on_hand:
            raise Violation(f"E1/E3: {position} on_hand {actual.get(position, 0)}, the E1 fold of the facts "
                            f"produced there gives {on_hand}")
