"""Python bytecodes the service runs per unary Reserve: a count that does not drift with the host.

CPU time per call moves by ±15-25 % from run to run on a shared 2-core VM, more than most single
changes to the hot path save. The number of bytecodes the interpreter runs for a call does not: it
is a property of the code. So this runs the service in this process against an embedded Redis,
seeds ``--positions`` positions, calls the servicer's ``Reserve`` directly ``--calls`` times one
after another (one call per group commit: the one-entry path; at 1,000 calls/s in open loop a
commit often carries two, its window waiting for a second above ``commit_delay_min_rate``), and
counts every bytecode the event loop's thread runs meanwhile with ``sys.settrace`` opcode events —
per file, or per function with ``--by function``. Work that runs on a timer (housekeeping, the
loop-lag monitor, the intake's reads) would be counted in proportion to how long the traced calls
took, which is the host's speed, not the code: so the service is then traced as long again with no
call, and that count is taken off (``timer_bytecodes_per_call`` says how much it was).

What it does not count: time in C (gRPC, protobuf, uvloop, the kernel). ``unary_cost.py`` measures
the CPU of the whole path; this says where a change moved the interpreter's share.

    python benchmarks/bytecodes.py [--calls 300] [--by file|function] [--top 25] [--appends-in-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_service import ServiceConfig
from benchmarks.service_cost import AppendsInMemory, _Context, reserve_request, seeded_service

ROOT = Path(__file__).resolve().parent.parent

WARM_UP = 50
"""Calls made before counting: connections made, caches filled."""


class OpcodeCount:
    """A ``sys.settrace`` hook counting opcode events by file or by file and function."""

    def __init__(self, by_function: bool) -> None:
        self.counts: Counter[str] = Counter()
        self._by_function = by_function

    def __call__(self, frame: FrameType, event: str, arg: Any) -> OpcodeCount:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            self.counts[f"{_short(code.co_filename)}:{code.co_name}" if self._by_function
                         else _short(code.co_filename)] += 1
        return self


def _short(filename: str) -> str:
    """A file named from the project's root, or from ``site-packages`` / the standard library."""
    for marker in (f"{ROOT}/", "site-packages/", "python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def reserve_one_by_one(tmp: Path, positions: int, calls: int, in_memory: bool,
                             counting: AbstractContextManager[object],
                             idle: AbstractContextManager[object]) -> None:
    """``calls`` one-line Reserves, one after another, by the servicer of a service in this process
    against an embedded Redis (``positions`` seeded, ``WARM_UP`` calls first); the counted calls
    run inside ``counting`` (``instructions.py`` counts the same ones), then the service idles as
    long inside ``idle``: what its timers ran meanwhile, to be taken off."""
    config = ServiceConfig.from_env(port=0, metrics_port=-1, auth="off", demo=False)
    async with seeded_service(tmp, config, positions, "b", AppendsInMemory() if in_memory else None) as service:
        servicer, context = service._servicer, cast(Any, _Context())  # what the servicer needs of a context
        for n in range(WARM_UP):
            await servicer.Reserve(reserve_request(n, positions, "b"), context)
        requests = [reserve_request(n, positions, "b") for n in range(WARM_UP, WARM_UP + calls)]
        with counting:
            started = time.perf_counter()
            for request in requests:
                await servicer.Reserve(request, context)
            took = time.perf_counter() - started
        with idle:
            await asyncio.sleep(took)


@contextmanager
def _traced(hook: OpcodeCount) -> Iterator[None]:
    sys.settrace(hook)
    try:
        yield
    finally:
        sys.settrace(None)


async def count(calls: int, positions: int, by_function: bool, in_memory: bool,
                tmp: Path) -> tuple[Counter[str], Counter[str]]:
    """The bytecodes run during the calls, and during as long again with none (the timers')."""
    hook, idle = OpcodeCount(by_function), OpcodeCount(by_function)
    await reserve_one_by_one(tmp, positions, calls, in_memory, _traced(hook), _traced(idle))
    return hook.counts, idle.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="Reserves counted, one after another")
    parser.add_argument("--positions", type=int, default=1000)
    parser.add_argument("--by", choices=("file", "function"), default="file")
    parser.add_argument("--top", type=int, default=25, help="files or functions listed, most bytecodes first")
    parser.add_argument("--appends-in-memory", action="store_true",
                        help="answer the log's appends without Redis (as service_cost.py does)")
    args = parser.parse_args()
    import uvloop  # the service's default event loop

    uvloop.install()
    with tempfile.TemporaryDirectory(prefix="atp-bytecodes-") as tmp:
        during, idle = asyncio.run(count(args.calls, args.positions, args.by == "function", args.appends_in_memory,
                                         Path(tmp)))
    counts = during.copy()
    counts.subtract(idle)  # the timers' share, which depends on how long the calls took
    print(json.dumps({"calls": args.calls, "bytecodes_per_call": round(counts.total() / args.calls),
                      "timer_bytecodes_per_call": round(idle.total() / args.calls),
                      "top": {name: round(n / args.calls, 1) for name, n in counts.most_common(args.top) if n > 0}}))


if __name__ == "__main__":
    main()
