"""A curation round over a whole estate (after a start, a reload or a baseline load) is curated a
slice of SKUs at a time, and the event loop runs other work between slices: in one go it held every
shard, call and lease renewal for seconds at a retail estate's size (millions of positions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from atp_service import AtpService
from atp_service.channels.desk import ChannelDesk
from reservation import CountRows
from tests.atp_service.channel_helpers import write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

SKUS = 10_000
LOCATIONS = ["dc-1", "store-1", "store-2", "store-3"]
"""Every location of the estate: each SKU is 8 cells of its channels (market 1, pickup 3, web 4)."""


def _idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(f.pending == 0 and f.in_flight == 0 for f in desk.feeds.values())


async def _load_baseline(service: AtpService) -> None:
    """A count of 9 at every location for each of ``SKUS`` SKUs, loaded as LoadCounts does."""
    assert service.desk is not None
    skus, rows = [f"sku-{i:05d}" for i in range(SKUS)], SKUS * len(LOCATIONS)
    at = np.full(rows, int(time.time() * 1000) - 60_000, dtype=np.int64)
    await service.desk.load_counts(CountRows(
        "erp", skus, LOCATIONS, np.repeat(np.arange(SKUS, dtype=np.uint32), len(LOCATIONS)),
        np.tile(np.arange(len(LOCATIONS), dtype=np.uint32), SKUS), np.full(rows, 9, dtype=np.int64), at), "test")


@contextmanager
def calls_with_turns(obj: Any, method: str, size: Callable[[tuple[Any, ...]], int]) -> Iterator[list[tuple[int, int]]]:
    """(ticks of a task that only counts its turns of the loop, ``size(args)``) at each call of
    ``obj.method`` while the block runs: calls sharing a tick ran in one turn."""
    ticks, calls = 0, list[tuple[int, int]]()
    real = getattr(obj, method)

    def counted(*args: Any) -> Any:
        calls.append((ticks, size(args)))
        return real(*args)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    setattr(obj, method, counted)
    task = asyncio.get_running_loop().create_task(ticker())
    try:
        yield calls
    finally:
        task.cancel()
        setattr(obj, method, real)


def curations_seen(desk: ChannelDesk) -> AbstractContextManager[list[tuple[int, int]]]:
    """(ticks, SKUs) at each call of the desk's curator."""
    return calls_with_turns(desk._curator, "curate_shard", lambda args: len(args[2]))


async def test_a_round_over_every_sku_lets_other_work_run_between_slices(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    service, _ = await start_service(estate=write_estate(tmp_path), shards=1)
    desk = service.channels
    assert desk is not None
    await _load_baseline(service)
    rows = SKUS * len(LOCATIONS)
    await until(lambda: _idle(desk) and len(desk.feeds["pickup"].published) == rows - SKUS, "the baseline published",
                timeout_s=60)
    with curations_seen(desk) as calls:
        await service.reload_estate()  # every SKU curated again, in one round
        await until(lambda: _idle(desk) and sum(n for _, n in calls) >= SKUS, "the round over every SKU", timeout_s=60)
    assert len(calls) > 1, f"{SKUS} SKUs curated in one go: {calls}"
    turns = [tick for tick, _ in calls]
    assert turns == sorted(set(turns)), f"slices curated without a turn of the loop between: {calls}"


async def test_a_reload_passes_over_every_sku_and_key_a_slice_at_a_time(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """ReloadEstate marks every SKU and looks at every key a per-location channel shows (withdrawing
    those at dropped locations) in slices of ``curate_slice_cells``: a ticker gets a turn between them."""
    slice_cells = 1_000
    path = write_estate(tmp_path)
    service, _ = await start_service(estate=path, shards=1, curate_slice_cells=slice_cells)
    desk = service.channels
    assert desk is not None
    await _load_baseline(service)
    await until(lambda: _idle(desk) and len(desk.feeds["pickup"].published) == SKUS * 3, "the baseline published",
                timeout_s=60)
    ticks, done = 0, False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await service.reload_estate()
    during, done = ticks - before, True
    await task
    # 30,000 pickup keys and 10,000 SKUs, 1,000 a slice: a turn of the ticker between every two.
    assert during >= (SKUS * 3 + SKUS) // slice_cells - 2, f"{during} turns of other work during the reload"
