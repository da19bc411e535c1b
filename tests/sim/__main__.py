"""``python -m tests.sim [--seeds N [--first F] | --seed S [--trace]] [--steps K] [--processes P] [--clock-skew]
[--redis-full] [--fact-times] [--shed] [--one-key] [--settle-faults] [--groups]
[--forward-streams] [--short-grace] [--input-streams] [--partition] [--clock-jumps] [--suspends] [--new-addresses]``:
run the deterministic simulation; the summary line counts the faults injected."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import warnings
from collections.abc import Iterable

from tests.sim import inputletters
from tests.sim.checks import Violation
from tests.sim.driver import DEFAULT_STEPS, Driver
from tests.sim.inputcluster import InputsClusterDriver
from tests.sim.inputdriver import InputsDriver
from tests.sim.tally import Tally


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seeds", type=int, default=1000, help="run seeds F..F+N-1")
    parser.add_argument("--first", type=int, default=0, help="with --seeds: the first seed (F)")
    parser.add_argument("--seed", type=int, help="replay one seed")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--trace", action="store_true", help="print every step of the run")
    parser.add_argument("--processes", type=int, default=1, choices=(1, 2, 3),
                        help="service processes sharing the keyspace (2, 3: leased groups, kills, pauses)")
    parser.add_argument("--late-across-steps", action="store_true",
                        help="with --processes: late order-step requests may arrive steps later")
    parser.add_argument("--retry-other-content", action="store_true",
                        help="with --processes: a retry may carry other content than its id's first Reserve")
    parser.add_argument("--lose-tail", action="store_true",
                        help="Redis may restart from older data, losing acknowledged entries (with --processes: "
                             "leases too, one node or all; with --input-streams --processes, all)")
    parser.add_argument("--clock-skew", action="store_true",
                        help="with --processes: each host's clock its own, within a bound, stepping back or forward "
                             "now and then (with --input-streams: the readers' too)")
    parser.add_argument("--redis-full", action="store_true",
                        help="Redis at its maxmemory refuses appends, channel writes and id claims OOM now and then")
    parser.add_argument("--fact-times", action="store_true",
                        help="facts stamped in the future (within the allowed skew and past it) and late past a "
                             "grace window of an hour (not with --lose-tail); with --input-streams, some facts stamped "
                             "about the allowed skew ahead, just inside it or just outside (inputfacts.py)")
    parser.add_argument("--shed", action="store_true",
                        help="shards shed load now and then (mailbox full, queue late; with --processes, a process "
                             "at its door): each refusal must have changed nothing")
    parser.add_argument("--settle-faults", action="store_true",
                        help="a settle's fence lost, in doubt or landing late, and its reads of the log timing out")
    parser.add_argument("--forward-streams", action="store_true",
                        help="with --processes: ReserveStream items of other processes' groups sent to their owners "
                             "in the batch's turn by the edge's own OwnerStreams, over outbound streams that fail "
                             "(parts lost, late, answers lost, owners killed or paused)")
    parser.add_argument("--groups", action="store_true",
                        help="Reserve lines naming location groups (channels of each strategy), and safety-stock "
                             "defaults for new positions, as the estate configures them")
    parser.add_argument("--short-grace", action="store_true",
                        help="a grace window of 30 s and a seal threshold of 8: shards forget remembered facts, "
                             "seal them and free kept deltas (E8, E9) under every fault; old facts resent")
    parser.add_argument("--input-streams", action="store_true",
                        help="facts arrive through the input-stream readers only (two consumers of the group, the "
                             "second sending its facts to their owner, stopped, its entries claimed; two streams, "
                             "dead letters, MAXLEN trimming, groups deleted): Redis reads, "
                             "quarantine scripts and acknowledgements refused or their answers lost, the reader "
                             "restarted, room restored; every entry applied or quarantined once (inputdriver.py); with "
                             "--processes 2 or 3, every process a consumer applying its groups' facts and sending "
                             "the others', killed, paused, stopped, groups taken over (inputcluster.py); with "
                             "--lose-tail, --clock-jumps, --fact-times, and with --processes --clock-skew "
                             "(inputtail.py, inputclocks.py, inputfacts.py)")
    parser.add_argument("--partition", action="store_true",
                        help="with --processes: two processes cut off from each other over gRPC (order steps, "
                             "forwarded calls, streams to owners), one way or both, both still reaching Redis, for "
                             "ticks or several steps (partition.py)")
    parser.add_argument("--clock-jumps", action="store_true",
                        help="a clock jumping by hours at a tick of a step: the world's (a host suspended: every "
                             "hold and lease running out at once), or one host's wall clock ahead and "
                             "back (jumps.py; not with --short-grace, nor with --fact-times but for --input-streams)")
    parser.add_argument("--suspends", action="store_true",
                        help="with --processes: leases counted on each host's lease clock over the world's clocks, "
                             "finite deadlines, some pauses a host's suspend (suspends.py)")
    parser.add_argument("--new-addresses", action="store_true",
                        help="with --input-streams --processes: a process started again at a new address now and "
                             "then, the consumers of addresses gone swept (inputsweep.py); processes stopped past "
                             "their sweep, some holding a quarantine write that lands once they run again "
                             "(inputholds.py)")
    parser.add_argument("--tag-faults", action="store_true",
                        help="with --input-streams: the readers' tags of where a group made again starts refused, in "
                             "doubt or landing late, their tokens lost alone (inputtags.py)")
    parser.add_argument("--late-letters", action="store_true",
                        help="with --input-streams: the readers' dead letters' scripts and fence settings landing "
                             "late, after their callers gave up on them (inputletters.py)")
    parser.add_argument("--one-key", action="store_true",
                        help="snapshots stored in one key whatever the seed (as seeds found before several were)")
    args = parser.parse_args()
    if args.forward_streams and args.processes == 1:
        parser.error("--forward-streams needs --processes 2 or 3 (one process owns every group)")
    if args.partition and args.processes == 1:
        parser.error("--partition needs --processes 2 or 3 (one process calls no other)")
    if args.clock_jumps and (args.fact_times or args.short_grace) and not args.input_streams:
        parser.error("--clock-jumps judges no fact times: not with --fact-times or --short-grace (jumps.py)")
    if args.suspends and args.processes == 1:
        parser.error("--suspends needs --processes 2 or 3 (one process holds no lease)")
    if args.clock_skew and args.processes == 1:
        parser.error("--clock-skew needs --processes 2 or 3 (one process has one clock)")
    if args.new_addresses and not (args.input_streams and args.processes > 1):
        parser.error("--new-addresses needs --input-streams --processes 2 or 3 (the sweep of its readers)")
    if args.tag_faults and not args.input_streams:
        parser.error("--tag-faults needs --input-streams (the readers' tags)")
    if args.late_letters and not args.input_streams:
        parser.error("--late-letters needs --input-streams (the readers' dead letters)")
    alongside = ("trace", "input_streams", "lose_tail", "clock_jumps", "clock_skew", "tag_faults", "fact_times",
                 "late_letters") + (
        ("partition", "suspends", "new_addresses") if args.processes > 1 else ())
    others = [name for name, value in vars(args).items() if value is True and name not in alongside]
    if args.input_streams and others:  # its own drivers (inputdriver.py, inputcluster.py): another fault is ignored
        refused = ", ".join("--" + name.replace("_", "-") for name in others)
        parser.error(f"--input-streams runs alone but for --processes, --lose-tail, --clock-jumps, --tag-faults, "
                     f"--fact-times, --late-letters, and with --processes --clock-skew, --partition, --suspends, "
                     f"--new-addresses (its drivers draw their own faults): not with {refused}")
    # The faults make the service log a warning per failed append: only its errors show (each one also
    # fails the step). A kill -9 cancels tasks before they started (a coroutine never awaited), and
    # futures of callers that gave up carry errors nobody reads: asyncio's complaints about both are noise.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started, recoveries, tally = time.perf_counter(), 0, Tally()
    if args.input_streams:
        return run_inputs(seeds, args.steps, args.trace, args.processes, args.partition, args.suspends,
                          args.new_addresses, args.lose_tail, args.clock_skew, args.clock_jumps, args.tag_faults,
                          args.fact_times, args.late_letters)
    for done, seed in enumerate(seeds):
        driver = Driver(seed, tally, args.processes, args.late_across_steps, args.retry_other_content, args.lose_tail,
                        args.clock_skew, args.redis_full, args.fact_times, args.shed, args.one_key,
                        settle_faults=args.settle_faults, groups=args.groups,
                        forward_streams=args.forward_streams, short_grace=args.short_grace, partition=args.partition,
                        clock_jumps=args.clock_jumps, suspends=args.suspends)
        try:
            asyncio.run(driver.run(args.steps))
        except Violation as exc:
            print(f"VIOLATION {exc}\n{done} seeds held before it; injected so far: {tally.summary()}")
            return 1
        finally:
            if args.trace:
                print("\n".join(driver.trace))
        recoveries += driver.world.recoveries
    print(f"{len(seeds)} seeds x {args.steps} steps, {recoveries} crash recoveries; injected: {tally.summary()}; "
          f"all invariants held ({time.perf_counter() - started:.1f}s)")
    return 0


def run_inputs(seeds: Iterable[int], steps: int, trace: bool, processes: int = 1, partition: bool = False,
               suspends: bool = False, new_addresses: bool = False, lose_tail: bool = False, clock_skew: bool = False,
               clock_jumps: bool = False, tag_faults: bool = False, fact_times: bool = False,
               late_letters: bool = False) -> int:
    """``--input-streams`` (``inputdriver.py``; with ``--processes``, ``inputcluster.py``): its own driver, its own
    summary."""
    started, tally = time.perf_counter(), Tally()
    for done, seed in enumerate(seeds):
        driver = InputsDriver(seed, tally, lose_tail, clock_jumps, tag_faults, fact_times) if processes == 1 else \
            InputsClusterDriver(seed, processes, tally, partition, suspends, new_addresses, lose_tail, clock_skew,
                                clock_jumps, tag_faults, fact_times)
        if late_letters:
            inputletters.enabled(driver.redis, seed)
        try:
            asyncio.run(driver.run(steps))
        except Violation as exc:
            print(f"VIOLATION {exc}\n{done} seeds held before it; injected so far: {tally.summary()}")
            return 1
        finally:
            if trace:
                print("\n".join(driver.trace))
    print(f"{done + 1} seeds x {steps} steps (input streams); injected: {tally.summary()}; all invariants held "
          f"({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
