"""Machine instructions the service runs per unary Reserve, C included: a count that does not drift.

``bytecodes.py`` counts the interpreter's bytecodes, a property of the code, but not what runs in C
(protobuf, msgspec, hiredis, uvloop, the allocator): a change there shows only in CPU time, which
moves by ±15-25 % from run to run on a shared VM. This runs ``bytecodes.py``'s workload (the service
in this process against an embedded Redis, 1,000 positions, ``--calls`` Reserves one after another:
one call per group commit) under valgrind's callgrind with instrumentation on only while those
calls run, and prints one JSON line: the instructions per call (every thread of this process; not
the kernel's, not Redis's). Slow (~50x) but steady: ±1.5 % from run to run at 1,000 calls.

    python benchmarks/instructions.py [--calls 1000]

Needs ``valgrind`` (Debian: ``apt-get install valgrind``); without it the line says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bytecodes import reserve_one_by_one

POSITIONS = 1000
QUIET_ENV = {"ATP_MAX_LOOP_LAG_MS": "0", "ATP_MAX_QUEUE_DELAY_MS": "100000", "PYTHONHASHSEED": "0"}
"""Under valgrind every call is ~50x slower: the loop-lag and queue-delay guards would shed the calls."""


def _instrument(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                   stdout=subprocess.DEVNULL)


@contextmanager
def _instrumented() -> Iterator[None]:
    """Callgrind counts inside only (the process runs under ``--instr-atstart=no``)."""
    _instrument(True)
    yield
    _instrument(False)


def measure(calls: int) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        return {"instructions": "valgrind is not installed"}
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--child", "--calls", str(calls)],
        env=os.environ | QUIET_ENV, capture_output=True, text=True, timeout=3600)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the measured run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    total = int(found.group(1).replace(",", ""))
    return {"calls": calls, "instructions_per_call": round(total / calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="Reserves counted, one after another")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the run under valgrind
    args = parser.parse_args()
    if not args.child:
        print(json.dumps(measure(args.calls)))
        return
    import uvloop  # the service's default event loop

    uvloop.install()
    with tempfile.TemporaryDirectory(prefix="atp-instructions-") as tmp:
        asyncio.run(reserve_one_by_one(Path(tmp), POSITIONS, args.calls, False, _instrumented()))


if __name__ == "__main__":
    main()
