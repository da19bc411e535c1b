"""A CountsLoaded entry taken back (its append failed) marks its SKUs for curation with a source
time, as every other undone event does: the curator reads a changed offer's time from that mark
(``max(times.values())``), so an empty mark would fail the round."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from atp_service.channels.desk import ChannelDesk
from reservation._events import CountsLoaded


def test_an_undone_load_marks_its_skus_with_a_time() -> None:
    desk = SimpleNamespace(_dirty={}, _dirty_at={})
    event = CountsLoaded("erp", ["A", "B"], ["L1"], np.arange(2, dtype="<u4").tobytes(),
                         np.zeros(2, dtype="<u4").tobytes(), np.ones(2, dtype="<i8").tobytes(),
                         np.full(2, 5, dtype="<i8").tobytes(), np.zeros(1, dtype="<i8").tobytes())
    ChannelDesk._mark_loaded(desk, event, False, 1000)  # type: ignore[arg-type]
    assert desk._dirty == {"A": {"": 0}, "B": {"": 0}}
    ChannelDesk._mark_loaded(desk, event, True, 1000)  # type: ignore[arg-type]
    assert desk._dirty == {"A": {"": 5}, "B": {"": 5}}
