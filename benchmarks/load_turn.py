"""How long one shard's turn holds the event loop for a LoadCounts block: ``new_positions`` (the room
check, run by the edge before the block goes to the shards and again in the shard's turn) and
``Ledger.load_counts`` (the turn itself, the room check included). No I/O: one shard's ``Ledger``.

The shard holds ``--positions`` positions, each counted ``--held-age-h`` hours before the extract; a block
names them all again (a newer count each) plus new positions up to ``--rows`` rows, in a random order,
stamped as of the extract — except, per scenario, rows stamped before stream time minus grace (E6:
quarantined late), or stamps spread over ``--spread-h`` hours (a row late or not by the rows before it;
``ascending``: in stamp order, so none is late and each moves stream time).
Scenarios ``repeat`` and ``kept`` add 1 % of rows naming a position twice, and 1 % of positions keeping
deltas (a sale after their count), which go row by row. Each block is taken back after each round
(R7), so every round finds the same shard. Prints one JSON line per rows x scenario: the outcomes and
the milliseconds of each round.

    python benchmarks/load_turn.py [--positions 25000 --rows 50000,100000 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reservation import Fact, FactKind, Ledger, Limits
from reservation._bulk import CountRows, new_positions

HOUR = 3_600_000
T0 = 1_790_000_000_000
LOCATIONS = 250
SCENARIOS = ("none_late", "one_late", "late_1pct", "late_10pct", "spread", "ascending", "repeat", "kept")


def shard(positions: int, rows: int, age_h: float) -> tuple[Ledger, list[str], list[str]]:
    """A shard whose first ``positions`` cells (SKU-major) hold a count, stream time at that count."""
    skus = [f"sku-{s:06d}" for s in range(-(-rows // LOCATIONS))]
    locations = [f"loc-{loc:04d}" for loc in range(LOCATIONS)]
    ledger = Ledger(0, Limits())
    cells = np.arange(positions, dtype=np.int64)
    at = T0 - int(age_h * HOUR)
    ledger.load_counts(CountRows("erp", skus, locations, (cells // LOCATIONS).astype(np.uint32),
                                 (cells % LOCATIONS).astype(np.uint32), np.full(positions, 40, dtype=np.int64),
                                 np.full(positions, at, dtype=np.int64)))
    ledger.commit(T0)
    return ledger, skus, locations


def block(scenario: str, rows: int, positions: int, spread_h: float, rng: np.random.Generator,
          names: tuple[list[str], list[str]]) -> CountRows:
    """The extract's rows: every position held again, then new ones, shuffled; stamps by scenario."""
    cells = rng.permutation(rows).astype(np.int64)
    at = np.full(rows, T0, dtype=np.int64)
    late = {"one_late": 1, "late_1pct": rows // 100, "late_10pct": rows // 10}.get(scenario, 0)
    at[rng.choice(rows, late, replace=False)] = T0 - 30 * HOUR  # past the 24 h of grace: quarantined (E6)
    if scenario in ("spread", "ascending"):
        at = T0 - rng.integers(0, int(spread_h * HOUR), rows)
    if scenario == "ascending":  # an extract in the order it was taken: each row moves stream time on
        at.sort()
    if scenario == "repeat":  # 1 % of rows name a position a row before them named, another stamp
        again = rng.choice(np.arange(1, rows), rows // 100, replace=False)
        cells[again] = cells[again - 1]
        at[again] -= 60_000
    skus, locations = names
    return CountRows("erp", skus, locations, (cells // LOCATIONS).astype(np.uint32),
                     (cells % LOCATIONS).astype(np.uint32), rng.integers(0, 100, rows).astype(np.int64), at)


def keep_deltas(ledger: Ledger, positions: int, rng: np.random.Generator, names: tuple[list[str], list[str]]) -> None:
    """1 % of the held positions sold from after their count: their newer counts go row by row (E2)."""
    skus, locations = names
    for n, cell in enumerate(rng.choice(positions, positions // 100, replace=False).tolist()):
        ledger.record_fact(Fact(f"sale-{n}", "pos", FactKind.SALE, skus[cell // LOCATIONS], locations[cell % LOCATIONS],
                                1, ledger.stream_time + 1, ""))
    ledger.commit(T0)


def measure(ledger: Ledger, rows: CountRows, rounds: int) -> dict[str, object]:
    room_ms, load_ms = [], []
    outcomes = np.zeros(0, dtype=np.uint8)
    for _ in range(rounds):
        start = time.perf_counter()
        new_positions(ledger, rows)
        room_ms.append(round((time.perf_counter() - start) * 1000, 1))
        start = time.perf_counter()
        outcomes, _ = ledger.load_counts(rows)
        load_ms.append(round((time.perf_counter() - start) * 1000, 1))
        ledger.rollback()  # R7: as a block whose append failed, so the next round finds the same shard
    counted = np.bincount(outcomes, minlength=5).tolist()
    return {"applied": counted[1], "duplicate": counted[2], "absorbed": counted[3], "quarantined": counted[4],
            "new_positions_ms": room_ms, "load_counts_ms": load_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=25_000)
    parser.add_argument("--rows", default="50000,100000", help="rows per block, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--held-age-h", type=float, default=2.0)
    parser.add_argument("--spread-h", type=float, default=40.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    for rows in [int(r) for r in args.rows.split(",")]:
        if rows < args.positions:
            parser.error("--rows must be at least --positions: a block names every held position again")
        for scenario in args.scenarios.split(","):
            ledger, skus, locations = shard(args.positions, rows, args.held_age_h)
            rng = np.random.default_rng(1)
            if scenario == "kept":
                keep_deltas(ledger, args.positions, rng, (skus, locations))
            rows_block = block(scenario, rows, args.positions, args.spread_h, rng, (skus, locations))
            print(json.dumps({"rows": rows, "scenario": scenario, "positions": args.positions,
                              **measure(ledger, rows_block, args.rounds)}), flush=True)


if __name__ == "__main__":
    main()
