"""A round offers the changes it curated a slice at a time, sized for offers (``CELLS_PER_OFFER``), not for curated
cells: an offer is a Python step per key, and slices of ``curate_slice_cells`` offers held the event loop 25-45 ms under
a burst. A write of stock-outs started between slices advanced one hop per slice, so a stock-out waited behind them
(C2: ``benchmarks/publish.py``'s stock-out p99 120 ms)."""

from __future__ import annotations

from pathlib import Path

from atp_service.channels.curator import Offer
from atp_service.config_slices import CELLS_PER_OFFER
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.channels.test_desk_slices import calls_with_turns
from tests.conftest import ServiceFactory

SLICE_CELLS = 200


async def test_a_rounds_offers_go_to_the_feeds_in_slices_sized_for_offers_with_a_turn_of_the_loop_between_C2(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    service, _ = await start_service(estate=write_estate(tmp_path), shards=1, curate_slice_cells=SLICE_CELLS)
    desk = service.channels
    assert desk is not None
    feed = desk.feeds["pickup"]
    offers: list[Offer] = [(feed, f"sku-{i:03d}", "store-1", 5, 1) for i in range(SLICE_CELLS)]
    with calls_with_turns(desk._curator, "drop_stale", lambda args: len(args[0])) as parts:
        await desk._offer_in_slices(offers, desk.estate)
    assert sum(n for _, n in parts) == len(offers)
    assert max(n for _, n in parts) <= SLICE_CELLS // CELLS_PER_OFFER, f"offers made in one go: {parts}"
    turns = [tick for tick, _ in parts]
    assert turns == sorted(set(turns)), f"slices offered without a turn of the loop between: {parts}"
