"""A group given up as failed (its shard stopped working) while a leased stop hands the others over: its
give-up — the shard vacated, then its lease given back — ran in a task the stop did not wait for. The stop
returned with it still running; the process then closed its Redis connections under it, and the lease,
never given back, kept the group from every other process until it ran out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import atp_service.app.membership as membership_module
from tests.atp_service.app.test_lease_taking_answer_lost import key_value
from tests.conftest import services_on
from tests.ports import held_port

SHARDS = 4


async def test_a_group_given_up_during_a_stop_is_given_back_before_the_stop_returns(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with services_on(redis_url, ownership="leases", lease_ms=60_000, shards=SHARDS,
                           input_streams=()) as start:
        service, _ = await start(port=held_port(), host="127.0.0.1")
        membership, engine = service.membership, service.engine
        assert membership is not None and engine is not None and len(membership.leases.held) == SHARDS
        failing = SHARDS - 1
        hand_overs_done, stop_waits_or_ended = asyncio.Event(), asyncio.Event()
        _hold_give_up_until(engine, failing, stop_waits_or_ended, monkeypatch)
        _fail_during_first_hand_over(engine, membership, failing, monkeypatch)
        _note_when_handed_over(hand_overs_done, monkeypatch)
        _note_when_waiting_after(hand_overs_done, stop_waits_or_ended, monkeypatch)
        left_running = _left_running_at_stop(membership, stop_waits_or_ended, monkeypatch)
        await service.stop()
        assert left_running == [0], "the give-up ended within the membership's stop"
        for group in range(SHARDS):
            assert await key_value(redis_url, membership.leases.key(group)) is None, f"group {group}'s lease"


def _left_running_at_stop(membership: Any, ended: asyncio.Event, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many of ``membership``'s tasks were still running as its stop returned (the service's stop
    closes the Redis connections after it); ``ended`` set then."""
    stop, running = membership.stop, [-1]

    async def counted() -> None:
        await stop()
        running[0] = len([task for task in membership._work if not task.done()])
        ended.set()

    monkeypatch.setattr(membership, "stop", counted)
    return running


def _hold_give_up_until(engine: Any, group: int, event: asyncio.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first vacating of ``group`` (its give-up's) begins once ``event`` is set (a slow Redis): once the stop,
    its hand-overs done, waits for the work under way, or once it returned without (the give-up then left running,
    whatever the host's pace)."""
    vacate, first = engine.vacate, [True]

    async def held(shard: int, snapshot: bool) -> None:
        if shard == group and first[0]:
            first[0] = False
            await event.wait()
        await vacate(shard, snapshot)

    monkeypatch.setattr(engine, "vacate", held)


def _fail_during_first_hand_over(engine: Any, membership: Any, group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``group``'s shard fails (``Membership.failed``) as the stop's first hand-over begins."""
    vacate = engine.vacate

    async def failing(shard: int, snapshot: bool) -> None:
        if shard != group and engine.actors[group].failure is None and group in membership.leases.held:
            membership.failed(engine.actors[group])
        await vacate(shard, snapshot)

    monkeypatch.setattr(engine, "vacate", failing)


def _note_when_handed_over(event: asyncio.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """``event`` set once the stop's hand-overs (``hand_over_all``) have ended."""
    hand_over_all = membership_module.hand_over_all

    async def noted(*args: Any) -> None:
        try:
            await hand_over_all(*args)
        finally:
            event.set()

    monkeypatch.setattr(membership_module, "hand_over_all", noted)


def _note_when_waiting_after(handed_over: asyncio.Event, event: asyncio.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """``event`` set once the membership's stop, ``handed_over`` set, waits for its work under way
    (``all_kept_ended``)."""
    all_kept_ended = membership_module.all_kept_ended

    async def noted(held: Any) -> None:
        if handed_over.is_set():
            event.set()
        await all_kept_ended(held)

    monkeypatch.setattr(membership_module, "all_kept_ended", noted)
