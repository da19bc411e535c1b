"""A group moving away forgets the routes of its records a slice at a time (``Routes.drop``): a walk of
every route of every shard in one go held the event loop ~100 ms a group moved at a few million
reservations kept for retention. Pure logic: the routes table alone."""

from __future__ import annotations

import asyncio

import pytest

from atp_service.engine import routes as routes_module
from atp_service.engine.routes import Routes


def table(per_shard: int) -> Routes:
    routes = Routes([], lambda _sku: 0)
    for shard in range(3):
        for n in range(per_shard):
            routes.homes[f"s{shard}-r{n}"] = shard
    return routes


async def test_only_the_moved_shards_routes_go_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_module, "ROUTES_DROP_SLICE", 100)
    routes = table(1000)
    seen: list[int] = []

    async def watch() -> None:  # another task, run between the slices
        for _ in range(5):
            seen.append(sum(1 for home in routes.homes.values() if home == 1))
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    await routes.drop(1, [f"s1-r{n}" for n in range(1000)], lambda: True)
    await watcher
    assert sorted(set(routes.homes.values())) == [0, 2] and len(routes.homes) == 2000  # the others kept
    assert any(0 < left < 1000 for left in seen), seen  # the loop ran between slices, part-way through


async def test_a_shard_taken_again_meanwhile_keeps_its_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_module, "ROUTES_DROP_SLICE", 100)
    routes = table(1000)
    taken_again = False

    async def take_again() -> None:
        nonlocal taken_again
        await asyncio.sleep(0)
        taken_again = True  # adopt() would route its records to shard 1 again now

    taker = asyncio.ensure_future(take_again())
    await routes.drop(1, [f"s1-r{n}" for n in range(1000)], lambda: not taken_again)
    await taker
    assert 0 < sum(1 for home in routes.homes.values() if home == 1) < 1000  # stopped where it was
