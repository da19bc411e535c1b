"""R5, E10: a restored instance answers every read and every retry exactly as the live one did.

A history (``restored_history.HISTORY``: Reserves held, refused for stock, refused as bad input, partial, over
location groups, across shards; Confirm, Release and Fulfil whole and by operation; holds expired; facts applied,
duplicated, conflicting, absorbed, late, from the future, shipments naming reservations; safety stock) and a
seeded random one (``restored_random``: LoadCounts blocks too, and a short retention) are driven through a real
service on a real Redis. Every answer is recorded: each step's first, GetReservation of every id, GetAvailability
and ExplainAvailability of every position, each channel's published values (a watch's snapshot) and a retry of
every step with the same content (then of some with other content: refused naming the field). The service is
then restarted — a clean stop, or a crash (Redis's image of one moment put back after the stop: every
acknowledged write, no final snapshot), snapshots taken every entry, every few or none — and everything is
asked again, field by field; a second run of the same history restarted after some of its steps must answer each
step as the run without restarts did; also with one process of ``ownership = leases`` (orders across groups are
sagas there). The service clock is a ``ManualClock``, so both runs stamp alike."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from reservation import Limits
from tests.atp_service.app.restored_history import HISTORY, IDS, T, answers, drive, published
from tests.atp_service.app.restored_random import RandomHistory, drive_random, random_answers
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import write_estate
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

Answers = dict[str, Any]


def differences(live: Answers, again: Answers) -> list[str]:
    return [f"{k}:\n  live     {live[k]}\n  restored {again.get(k)}" for k in live if live[k] != again.get(k)]


class Served:
    """A service of ``start`` on its clock, restarted as asked: stopped, or crashed (``crash``)."""

    def __init__(self, start: ServiceFactory, redis_url: str, crash: bool, **settings: Any) -> None:
        self.start, self.redis_url, self.crash, self.settings = start, redis_url, crash, settings
        self.clock = ManualClock(T)
        self.service: AtpService | None = None
        self.client: AtpClient

    async def begin(self) -> None:
        self.service, self.client = await self.start(clock=self.clock, **self.settings)

    @property
    def channels(self) -> Any:
        assert self.service is not None and self.service.channels is not None
        return self.service.channels

    async def restart(self) -> None:
        assert self.service is not None
        direct = aioredis.Redis.from_url(self.redis_url)
        try:
            await direct.execute_command("CLIENT", "PAUSE", "10000", "WRITE")  # an image of one moment
            try:
                image = await saved(direct)
            finally:
                await direct.execute_command("CLIENT", "UNPAUSE")
            await self.end()
            if self.crash:  # as a kill -9 at the image: every acknowledged write, no final snapshot
                await restored(direct, image, at_once=True)
        finally:
            await direct.aclose()
        await self.begin()

    async def end(self) -> None:
        assert self.service is not None
        await self.client.close()
        await self.service.stop(grace_s=0.1)


async def flushed(redis_url: str) -> None:
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.flushall()
    finally:
        await direct.aclose()


async def run_world(start: ServiceFactory, redis_url: str, tmp_path: Path, restart_after: frozenset[str],
                    crash: bool) -> tuple[Answers, Answers, Answers]:
    """The history's first answers, then every answer before the last restart and after it."""
    await flushed(redis_url)
    world = Served(start, redis_url, crash, estate=write_estate(tmp_path), snapshot_every_entries=7)
    await world.begin()
    first = await drive(world, restart_after)
    live = await answers(world.client)
    live.update(await published(world, world.channels, IDS))
    await world.restart()
    after = await published(world, world.channels, IDS)
    after.update(await answers(world.client))
    await world.end()
    return first, live, after


@pytest.mark.parametrize("crash", [False, True])
async def test_a_restored_service_answers_as_the_live_one(start_service: ServiceFactory, tmp_path: Path,
                                                          redis_url: str, crash: bool) -> None:
    first, live, after = await run_world(start_service, redis_url, tmp_path, frozenset(), crash)
    assert differences(live, after) == []
    names = [name for name, _ in HISTORY]
    first2, live2, after2 = await run_world(start_service, redis_url, tmp_path, frozenset(names[1::5]), crash)
    assert differences(first, first2) == []
    assert differences(live, live2) == []
    assert differences(live, after2) == []


class Leased(Served):
    """One process of ``ownership = leases`` (orders across groups are sagas), serving once it holds every group."""

    async def begin(self) -> None:
        await super().begin()
        service = self.service
        assert service is not None and service.membership is not None and service.engine is not None
        held = service.membership.leases.held
        actors = service.engine.actors
        await until(lambda: len([g for g in held if not actors[g].vacant]) == len(actors), "every group taken")


async def leased_world(redis_url: str, restart_after: frozenset[str]) -> tuple[Answers, Answers, Answers]:
    """``run_world`` with one leased process (no channels there: no estate, so no location groups)."""
    await flushed(redis_url)
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, input_streams=()) as start:
        world = Leased(start, redis_url, False, snapshot_every_entries=7, port=held_port(), host="127.0.0.1")
        await world.begin()
        first = await drive(world, restart_after)
        live = await answers(world.client)
        await world.restart()
        after = await answers(world.client)
        await world.end()
    return first, live, after


async def test_a_restored_leased_process_answers_as_the_live_one(redis_url: str) -> None:
    first, live, after = await leased_world(redis_url, frozenset())
    assert differences(live, after) == []
    names = [name for name, _ in HISTORY]
    first2, live2, after2 = await leased_world(redis_url, frozenset(names[1::5]))
    assert differences(first, first2) == []
    assert differences(live, live2) == []
    assert differences(live, after2) == []


async def random_world(start: ServiceFactory, redis_url: str, tmp_path: Path, seed: int,
                       restart_after: frozenset[int], crash: bool, retention_ms: int) -> tuple[Answers, Answers]:
    """The random history of ``seed``: its first answers, and every answer at its end."""
    await flushed(redis_url)
    history = RandomHistory(seed, 60)
    steps = history.build(T)
    world = Served(start, redis_url, crash, estate=write_estate(tmp_path), snapshot_every_entries=5,
                   limits=Limits(retention_ms=retention_ms))
    await world.begin()
    first = await drive_random(world, steps, history.ids, restart_after, retention_ms)
    final = await random_answers(world, steps, history.ids)
    final.update(await published(world, world.channels, history.ids, retention_ms))
    await world.end()
    return first, final


@pytest.mark.parametrize(("seed", "crash", "retention_ms"), [(1, True, 24 * 3600_000), (2, False, 6_000)])
async def test_a_random_history_answers_alike_restarted_or_not(start_service: ServiceFactory, tmp_path: Path,
                                                               redis_url: str, seed: int, crash: bool,
                                                               retention_ms: int) -> None:
    first, final = await random_world(start_service, redis_url, tmp_path, seed, frozenset(), False, retention_ms)
    points = frozenset(random.Random(seed).sample(range(60), 4))
    first2, final2 = await random_world(start_service, redis_url, tmp_path, seed, points, crash, retention_ms)
    assert differences(first, first2) == []
    assert differences(final, final2) == []
