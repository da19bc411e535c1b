"""The consumer group deleted (XGROUP DESTROY, a Redis restored without it) while the reader held
entries delivered but not acknowledged: the group was made again after the newest entry read, its
pending list gone with the old group, so those entries were never read again and left no dead letter
— facts lost with nothing said. Real redis-server; the fact's shard refusing it held at the desk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis

from atp_service import AtpService
from atp_service.intake.facts import Result
from atp_service.intake.quarantine import Acks
from atp_service.intake.unacked import Unacked, before
from reservation import DomainError, Fact, Unavailable
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory
from tests.waiting import until

STREAM = "atp:in:pos"


class Refusing:
    """The desk's ``record``, refusing the fact ``held`` (its entry left pending) while ``refuse`` is
    set, its first refusal held at ``release``; every other fact recorded as the desk does."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.calls = 0
        self.first_held, self.release, self.refuse = asyncio.Event(), asyncio.Event(), True

    @classmethod
    def installed(cls, service: AtpService, released: bool) -> Refusing:
        """One in place of ``service``'s desk's ``record``; its first refusal ``released`` at once, or held."""
        assert service.ingestor is not None
        desk = cls(service.ingestor._desk.record)
        service.ingestor._desk.record = desk  # type: ignore[method-assign]
        if released:
            desk.release.set()
        return desk

    async def __call__(self, facts: Sequence[Fact], origin: str,
                       acks: Acks | None = None) -> list[Result | DomainError]:
        """``acks`` not passed on: the entries of the facts quarantined acknowledged by the reader, after."""
        held = [n for n, fact in enumerate(facts) if fact.event_id == "held"] if self.refuse else []
        if held:
            self.calls += 1
            if self.calls == 1:
                self.first_held.set()
                await self.release.wait()
        others = [fact for n, fact in enumerate(facts) if n not in held]
        recorded = iter(await self._real(others, origin) if others else [])
        return [Unavailable("the shard's log does not answer") if n in held else next(recorded)
                for n in range(len(facts))]


async def _group_made_again(r: Any) -> bool:
    return r.exists(STREAM) and any(g["name"] == b"atp" for g in r.xinfo_groups(STREAM))


def _delivered_through(r: Any, last: bytes, pending: int) -> bool:
    """The group ``atp`` delivered ``last`` and holds ``pending`` entries pending."""
    groups = [g for g in r.xinfo_groups(STREAM) if g["name"] == b"atp"]
    return bool(groups) and groups[0]["last-delivered-id"] == last and groups[0]["pending"] == pending


async def test_an_entry_left_pending_when_its_group_was_deleted_is_read_again(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``held`` was delivered, its fact refused (its entry pending, to be read again), then
    the group deleted: made again after ``held``, the group never delivered it again and the reader's
    own pending list had lost it — the RECEIPT never applied, no dead letter, nothing pending."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service()
    desk = Refusing.installed(service, released=True)
    r.xadd(STREAM, F("held", "RECEIPT", "A", "S1", 4, now - 100).fields())
    await until(lambda: desk.calls >= 1 and r.xpending(STREAM, "atp")["pending"] == 1, "held refused, pending")
    r.xgroup_destroy(STREAM, "atp")
    r.xadd(STREAM, F("after", "RECEIPT", "A", "S1", 1, now - 50).fields())
    await until(lambda: _group_made_again(r), "the group made again")
    await until(lambda: _on_hand_is(client, 1), "the entry after it applied")
    desk.refuse = False  # the shard answers again: the fact is applied once its entry is read again
    await until(lambda: _on_hand_is(client, 5), "the entry left pending read again and applied")


async def test_an_entry_in_hand_when_its_group_was_deleted_is_read_again(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``held`` was being applied when the group was deleted and made again after it; its
    fact then refused, the entry was to be read again from the reader's pending list, which the new
    group does not have: the RECEIPT was never applied."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service()
    desk = Refusing.installed(service, released=False)
    r.xadd(STREAM, F("held", "RECEIPT", "A", "S1", 4, now - 100).fields())
    await until(desk.first_held.is_set, "held in hand")
    r.xgroup_destroy(STREAM, "atp")
    r.xadd(STREAM, F("after", "RECEIPT", "A", "S1", 1, now - 50).fields())
    await until(lambda: _group_made_again(r), "the group made again")
    await until(lambda: _on_hand_is(client, 1), "the entry after it applied")
    desk.refuse = False
    desk.release.set()  # its fact refused now: the entry stays to be read again
    await until(lambda: _on_hand_is(client, 5), "the entry in hand read again and applied")


async def _on_hand_is(client: Any, units: int) -> bool:
    return bool((await client.availability([("A", "S1")]))[0].on_hand == units)


def test_a_group_made_again_starts_before_what_the_reader_holds_unacknowledged() -> None:
    """The bound itself: a batch in hand and entries left pending hold it back; a pass over the
    reader's own pending list read through lets it go up to what that pass left."""
    unacked, seen = Unacked(), b"10-0"
    assert unacked.start(STREAM, seen) == seen  # nothing held: after the newest entry read
    held = unacked.hold([(STREAM, b"5-0", None), (STREAM, b"6-1", None)])
    assert unacked.start(STREAM, seen) == b"4-18446744073709551615"
    unacked.left([(STREAM, b"6-1")])
    unacked.release(held)
    assert unacked.start(STREAM, seen) == b"6-0" and unacked.start("atp:in:wms", seen) == seen
    unacked.pass_begun()
    unacked.pass_at(STREAM, b"3-0")  # the first pass since the start: the run before's entries after it
    assert unacked.start(STREAM, seen) == b"3-0"
    unacked.left([(STREAM, b"8-0")])
    unacked.pass_read_through()
    assert unacked.start(STREAM, seen) == b"7-18446744073709551615"
    unacked.pass_begun()
    unacked.pass_read_through()  # nothing left: after the newest entry read again
    assert unacked.start(STREAM, seen) == seen and before(b"0-1") == b"0-0"
