"""The answer to a LoadCounts call the service accepts must fit a gRPC message (``max_message_bytes``):
past it the server cannot send it (RESOURCE_EXHAUSTED after the rows were decided) and ``atpctl
stock load`` stops without its report. Two ordinary extracts do that: one older than the grace
window (every row quarantined, E6) and one stamped in a zone mistaken for UTC (every row ahead of
the clock, E7). Rows refused alike are answered together: a few bytes a row."""

from __future__ import annotations

import numpy as np
import pytest

from atp_service.config import ServiceConfig
from atp_service.edge import convert
from reservation import Ledger, Limits, count_rows

HOUR = 3_600_000
T0 = 1_790_000_000_000
ROWS = 50_000  # atpctl stock load's default --batch (the service takes up to max_rows_per_load, 100,000)


def _columns(n: int, at: int) -> tuple[bytes, bytes, bytes, bytes]:
    return (np.arange(n, dtype="<u4").tobytes(), np.zeros(n, dtype="<u4").tobytes(),
            np.full(n, 5, dtype="<i8").tobytes(), np.full(n, at, dtype="<i8").tobytes())


@pytest.mark.parametrize("case", ["older than the grace window", "ahead of the clock"])
def test_the_answer_to_a_block_of_rejected_rows_fits_a_message(case: str) -> None:
    limits = Limits()
    skus = [f"SKU-{i:08d}" for i in range(ROWS)]
    at = T0 - 30 * HOUR if case == "older than the grace window" else T0 + 2 * HOUR
    block, errors = count_rows("erp", skus, ["L1"], _columns(ROWS, at), T0, limits)
    ledger = Ledger(0, limits)
    ledger.stream_time = T0
    outcomes, reasons = ledger.load_counts(block)
    answer = convert.load_counts_response(np.flatnonzero(np.ones(ROWS, dtype=np.bool_)) if not errors else
                                          np.zeros(0, dtype=np.intp), outcomes, reasons, errors)
    assert answer.quarantined + answer.invalid == ROWS
    assert len(answer.rejected) == 1 and list(answer.rejected[0].rows) == list(range(ROWS))  # one reason, every row
    assert answer.ByteSize() <= ServiceConfig().max_message_bytes // 16
