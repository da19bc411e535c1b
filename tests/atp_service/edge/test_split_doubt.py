"""A call split by owner (``RecordEvents``, ``LoadCounts``) or asked of every process (a located
``Confirm``), between two real services: one part in doubt (R7) and another refused definitely —
here an owner that cannot be reached at all (a process gone, still in the routing table until its
leases run out: gRPC's "failed to connect", which says nothing was sent there). The caller is told
the part in doubt, whatever the other owner answered and in whichever order the parts were sent.

As in ``test_forward``, the services own keyspaces of their own and a test makes the first refuse a
part ``Moved`` to its owner: the address nothing listens at, or a relay to the second service, which
holds its part in hand (``InHand``) until the relay is cut, then makes it.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from atp_client import AtpClient, place, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import forward
from atp_service.edge.errors import trailers_of
from atp_service.edge.forward import Relayed
from atp_service.edge.routing import Route, RoutingTable
from reservation import DomainError, InvalidArgument, Moved, Reason, ResourceExhausted, Unavailable
from tests.atp_service.app.test_processes_split import counts_block
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_forward import ANSWER_BOUND_S, TOKEN, InHand, Pair, Relay, lost_in_hand, pair
from tests.atp_service.edge.test_routing import stock
from tests.atp_service.refusals import refused

__all__ = ["pair"]  # the fixture, used here by name
GONE = "127.0.0.1:1"
"""An owner nothing listens at: its part is refused "failed to connect", never sent."""


def skus_on_groups(shards: int, n: int) -> list[str]:
    """``n`` SKUs of ``n`` different groups, in ascending order of their groups."""
    found: dict[int, str] = {}
    for i in range(10_000):
        found.setdefault(place(sku := f"s{i}", shards), sku)
        if len(found) == n:
            return [found[g] for g in sorted(found)]
    raise AssertionError("too few groups")


async def on_hand(client: AtpClient, sku: str, location: str) -> int:
    (position,) = await client.availability([(sku, location)])
    return position.on_hand


async def test_facts_split_by_owner_are_in_doubt_when_one_owner_was_lost_whatever_another_answered(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two facts of two owners' groups: the first owner cannot be reached, the second was lost with
    its fact in hand (the connection to it reset) and applied it. The caller was told the first
    owner's "failed to connect" - the first refusal in the order of the facts, which says nothing was
    sent - while the second owner's fact was applied (R7). It is told OUTCOME_UNKNOWN."""
    a, a_address, b, b_address = pair
    relay = Relay(b_address)
    holder = await relay.start()
    first, second = skus_on_groups(a.config.shards, 2)
    assert b.desk is not None
    record = b.desk.record
    in_hand = InHand(lambda args: record(*args))
    monkeypatch.setattr(b.desk, "record", lambda *args, **_: in_hand(args))

    async def elsewhere(facts: Any, _origin: str, **_: Any) -> list[Moved]:
        return [Moved(place(f.sku, a.config.shards), GONE if f.sku == first else holder, epoch=1) for f in facts]

    monkeypatch.setattr(a.desk, "record", elsewhere)
    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        lost = await lost_in_hand(via_a.record_events([receipt("f1", first, "L", 3, a.clock.now_ms() - 1000),
                                                       receipt("f2", second, "L", 4, a.clock.now_ms() - 1000)]),
                                  in_hand, relay)
        assert await on_hand(at_b, second, "L") == 4  # the second owner's fact was applied
    refusal = typed(lost).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


async def test_counts_split_by_owner_are_in_doubt_when_one_owner_was_lost_saying_what_was_loaded(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block of three rows: one of an owner that cannot be reached, one of an owner lost with its
    part in hand (which loads it), one loaded here. The caller was told the unreachable owner's
    UNAVAILABLE without a reason (the first part by group) - a refusal read as nothing sent there -
    while the lost owner's row was loaded (R7). It is told OUTCOME_UNKNOWN, and still exactly what
    is known: one row loaded (here), two refused or in doubt."""
    a, a_address, b, b_address = pair
    assert a.engine is not None
    relay = Relay(b_address)
    holder = await relay.start()
    gone_sku, held_sku, here_sku = skus = skus_on_groups(a.config.shards, 3)
    owners = {place(gone_sku, a.config.shards): GONE, place(held_sku, a.config.shards): holder}
    local = a.engine.local

    def owned_elsewhere(shard: int) -> Any:
        if shard in owners:
            raise Moved(shard, owners[shard], epoch=1)
        return local(shard)

    monkeypatch.setattr(a.engine, "local", owned_elsewhere)
    assert b.desk is not None
    load_part = b.desk.load_part
    in_hand = InHand(lambda args: load_part(*args))
    monkeypatch.setattr(b.desk, "load_part", lambda *args: in_hand(args))
    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        lost = await lost_in_hand(via_a.load_counts(counts_block(skus, [5, 6, 7], a.clock.now_ms() - 1000)),
                                  in_hand, relay)
        assert await on_hand(at_b, held_sku, "DC") == 6  # the lost owner's row was loaded
        assert await on_hand(via_a, here_sku, "DC") == 7  # and this process's own
    refusal = typed(lost).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal
    assert {k: refusal.metadata.get(k) for k in ("rows_loaded", "rows_applied", "rows_not_loaded")} == \
        {"rows_loaded": "1", "rows_applied": "1", "rows_not_loaded": "2"}, refusal


async def test_a_located_change_its_holder_answered_in_doubt_is_told_so_whatever_another_peer_answered(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Confirm asked of every process: its holder made it but answered OUTCOME_UNKNOWN itself (its
    write's reply lost: R7), and another peer could not be reached. Only a refusal by ``refusal_of``
    (a holder lost in hand) was put first: the caller was told the other peer's "failed to connect"."""
    a, a_address, b, b_address = pair
    assert a.engine is not None and b.engine is not None
    assert sorted([GONE, b_address])[0] == GONE  # the peer not reached sorts first
    table = RoutingTable(a.config.shards, a_address,
                         (Route(0, GONE, 1), *(Route(g, b_address, 1) for g in range(1, a.config.shards))))
    monkeypatch.setattr(a._servicer.forwarder, "routing", lambda: table)
    confirm = b.engine.confirm

    async def made_but_unknown(*args: Any) -> Any:
        await confirm(*args)
        raise Unavailable("the write's reply was lost", Reason.OUTCOME_UNKNOWN)

    async def not_here(*_args: Any) -> Any:
        raise Moved(-1, "", serving=())

    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        await stock(at_b, b.clock.now_ms())
        await at_b.reserve("r1", [("A", "L", 2)])
        monkeypatch.setattr(a.engine, "confirm", not_here)
        monkeypatch.setattr(b.engine, "confirm", made_but_unknown)
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await via_a.confirm("r1")
        assert (await at_b.get_reservation("r1")).state == pb.RESERVATION_STATE_CONFIRMED  # it was made
    refusal = typed(lost.value).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


async def test_facts_split_by_owner_refused_by_one_say_what_the_others_recorded(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three facts: one of an owner that cannot be reached, one another owner applies, one applied here.
    The unreachable owner's refusal ("failed to connect") is told, and with it what the others recorded
    (its words alone read as nothing applied); the same call again applies the rest once (E8)."""
    a, a_address, _, b_address = pair
    assert a.desk is not None
    gone_sku, there_sku, here_sku = skus_on_groups(a.config.shards, 3)
    record = a.desk.record

    monkeypatch.setattr(a.desk, "record", split_by_owner(record, here_sku, a.config.shards,
                                                         lambda sku: GONE if sku == gone_sku else b_address))
    facts = [receipt(f"f{n}", sku, "L", 3 + n, a.clock.now_ms() - 1000) for n, sku in enumerate((gone_sku, there_sku,
                                                                                                  here_sku))]
    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as client, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        refusal = await refused(client.record_events(facts))
        assert (await on_hand(at_b, there_sku, "L"), await on_hand(client, here_sku, "L")) == (4, 5)
    assert refusal.code == grpc.StatusCode.UNAVAILABLE and refusal.reason != "OUTCOME_UNKNOWN", refusal
    assert_told_recorded(refusal, 2, 2, 3)


async def test_facts_refused_by_two_owners_count_what_each_recorded(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four facts: one of an owner that cannot be reached (told: the first refusal), two of an owner whose
    shard sheds one after another of its shards applied the other (its refusal says it recorded one), one
    applied here. The call's refusal counts the second owner's fact too, whichever owner's refusal is told:
    said as one recorded of four, a caller read the other owner's part as nothing done."""
    a, a_address, b, b_address = pair
    assert a.desk is not None and b.desk is not None
    gone_sku, there_sku, shed_sku, here_sku = skus_on_groups(a.config.shards, 4)
    record_here, record_there = a.desk.record, b.desk.record

    async def shedding(facts: Any, origin: str, **_: Any) -> list[Any]:
        there = iter(await record_there([f for f in facts if f.sku != shed_sku], origin))
        return [ResourceExhausted("shard shed it", Reason.SHARD_OVERLOADED) if f.sku == shed_sku else next(there)
                for f in facts]

    monkeypatch.setattr(a.desk, "record", split_by_owner(record_here, here_sku, a.config.shards,
                                                         lambda sku: GONE if sku == gone_sku else b_address))
    monkeypatch.setattr(b.desk, "record", shedding)
    facts = [receipt(f"f{n}", sku, "L", 3 + n, a.clock.now_ms() - 1000)
             for n, sku in enumerate((gone_sku, there_sku, shed_sku, here_sku))]
    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as client, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        refusal = await refused(client.record_events(facts))
        assert (await on_hand(at_b, there_sku, "L"), await on_hand(client, here_sku, "L")) == (4, 6)
    assert refusal.code == grpc.StatusCode.UNAVAILABLE and refusal.reason != "OUTCOME_UNKNOWN", refusal
    assert_told_recorded(refusal, 2, 2, 4)


@pytest.mark.parametrize("owner", ["b", ""])
async def test_facts_of_a_group_moved_while_others_were_recorded_are_told_moved_with_the_counts(
        pair: Pair, monkeypatch: pytest.MonkeyPatch, owner: str) -> None:
    """Two facts of a caller that routes by itself: one recorded here, the other's group handed over (to the
    second process, or to none yet) after the call was checked for redirects and before its shard took it.
    ``GROUP_MOVED`` says "nothing was applied by this try": told bare, the caller read the first fact as not
    recorded. It keeps its status, reason and ``atp-moved``, and says what was recorded."""
    a, a_address, _, b_address = pair
    assert a.desk is not None
    here_sku, moved_sku = skus_on_groups(a.config.shards, 2)
    record = a.desk.record
    to = b_address if owner else ""

    monkeypatch.setattr(a.desk, "record", split_by_owner(record, here_sku, a.config.shards, lambda _: to))
    facts = [receipt(f"f{n}", sku, "L", 3 + n, a.clock.now_ms() - 1000) for n, sku in enumerate((here_sku, moved_sku))]
    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.RecordEvents(pb.RecordEventsRequest(events=facts),
                                           metadata=(("atp-routing", "redirect"),))
        assert await on_hand(client, here_sku, "L") == 3
    refusal = typed(err.value).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "GROUP_MOVED"), refusal
    assert refusal.metadata.get("owner") == to, refusal
    assert_told_recorded(refusal, 1, 1, 2)
    assert "atp-moved" in dict(err.value.trailing_metadata())  # type: ignore[arg-type]


async def test_facts_of_shards_here_are_in_doubt_when_one_shard_was_whatever_another_answered(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two facts of two shards of the process that took the call: the first shard shed its fact
    (SHARD_OVERLOADED: nothing applied), the second's write is in doubt. The caller was told the
    first refusal in the order of the facts - the shed, whose retry after the delay says nothing of
    the fact in doubt (R7). It is told OUTCOME_UNKNOWN."""
    a, a_address, _, _ = pair

    async def shed_and_in_doubt(facts: Any, _origin: str, **_: Any) -> list[DomainError]:
        return [ResourceExhausted("shard queue full"), Unavailable("its reply was lost", Reason.OUTCOME_UNKNOWN)]

    monkeypatch.setattr(a.desk, "record", shed_and_in_doubt)
    first, second = skus_on_groups(a.config.shards, 2)
    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as client:
        refusal = await refused(client.record_events([receipt("f1", first, "L", 3, a.clock.now_ms() - 1000),
                                                      receipt("f2", second, "L", 4, a.clock.now_ms() - 1000)]))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


def test_the_refusal_told_is_one_in_doubt_else_the_first() -> None:
    in_doubt, told_first = forward.in_doubt, forward.told_first
    definite = Relayed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", ())
    mine = InvalidArgument("events", "bad")
    lost = Unavailable("lost in hand", Reason.OUTCOME_UNKNOWN)
    owners = Relayed(grpc.StatusCode.UNAVAILABLE, lost.message, trailers_of(lost))  # an owner's own, relayed
    assert not in_doubt(definite) and not in_doubt(mine) and in_doubt(lost) and in_doubt(owners)
    assert not in_doubt(Relayed(grpc.StatusCode.UNAVAILABLE, "busy", trailers_of(Unavailable("x"))))
    assert told_first([definite, mine]) is definite
    assert told_first([definite, mine, lost]) is lost
    assert told_first([mine, owners]) is owners


def split_by_owner(record: Any, here_sku: str, shards: int, owner_of: Any) -> Any:
    """A ``FactDesk.record`` that records ``here_sku``'s facts here and answers every other fact ``Moved`` to
    ``owner_of(sku)`` (as a group another process owns, or none: "")."""
    async def split(facts: Any, origin: str, **_: Any) -> list[Any]:
        here = iter(await record([f for f in facts if f.sku == here_sku], origin))
        return [next(here) if f.sku == here_sku else Moved(place(f.sku, shards), owner_of(f.sku), epoch=1)
                for f in facts]
    return split


def assert_told_recorded(refusal: Any, recorded: int, applied: int, facts: int) -> None:
    """The refusal says, in ``ErrorInfo`` and in words, how many of the call's ``facts`` were recorded."""
    assert {k: refusal.metadata.get(k) for k in ("facts_recorded", "facts_applied", "facts_not_recorded")} == \
        {"facts_recorded": str(recorded), "facts_applied": str(applied), "facts_not_recorded": str(facts - recorded)}, \
        refusal
    assert f"{recorded} of the call's {facts} facts were recorded ({applied} applied)" in refusal.message, refusal

