"""``python -m tests.sim [--seeds N | --seed S] [--steps K]``: run the deterministic simulation."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from .driver import run_seed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seeds", type=int, default=1000, help="run seeds 0..N-1")
    parser.add_argument("--seed", type=int, help="replay one seed")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    seeds = [args.seed] if args.seed is not None else range(args.seeds)
    started, recoveries = time.perf_counter(), 0
    for seed in seeds:
        world = asyncio.run(run_seed(seed, args.steps))
        recoveries += world.recoveries
    print(f"{len(seeds)} seeds x {args.steps} steps, {recoveries} crash recoveries, all invariants held "
          f"({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
