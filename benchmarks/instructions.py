"""Machine instructions the service runs per unary Reserve, C included: a count that does not drift.

``bytecodes.py`` counts the interpreter's bytecodes, a property of the code, but not what runs in C
(protobuf, msgspec, hiredis, uvloop, the allocator): a change there shows only in CPU time, which
moves by ±15-25 % from run to run on a shared VM. This runs ``bytecodes.py``'s workload (the service
in this process against an embedded Redis, 1,000 positions, ``--calls`` Reserves one after another:
one call per group commit) under valgrind's callgrind with instrumentation on only while those
calls run, and prints one JSON line: the instructions per call (every thread of this process; not
the kernel's, not Redis's). Slow (~50x) but steady: ±1.5 % from run to run at 1,000 calls. As in
``bytecodes.py``, what the service's timers run in as long again with no call is taken off: under
valgrind they would weigh with the host's speed (``timer_instructions_per_call``).

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


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, stdout=subprocess.DEVNULL)


@contextmanager
def _instrumented(part: str) -> Iterator[None]:
    """Callgrind counts inside only (the process runs under ``--instr-atstart=no``), dumped as ``part``."""
    _control("-z")
    _control("-i", "on")
    yield
    _control("-i", "off")
    _control(f"--dump={part}")


def _totals(out: Path) -> dict[str, int]:
    """Each dump's instructions by its part's name (``calls``, ``idle``)."""
    parts = {}
    for dump in out.parent.glob(f"{out.name}.*"):
        text = dump.read_text()
        part = re.search(r"^desc: Trigger: dump (\S+)", text, re.M)
        total = re.search(r"^totals: (\d+)", text, re.M)
        if part and total:
            parts[part.group(1)] = int(total.group(1))
    return parts


def measure(calls: int) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        return {"instructions": "valgrind is not installed"}
    with tempfile.TemporaryDirectory(prefix="atp-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(
            [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", "--calls", str(calls)],
            env=os.environ | QUIET_ENV, capture_output=True, text=True, timeout=3600)
        parts = _totals(out)
    if done.returncode != 0 or set(parts) != {"calls", "idle"}:
        raise SystemExit(f"the measured run failed (exit {done.returncode}, dumps {sorted(parts)}):\n"
                         f"{done.stderr[-3000:]}")
    return {"calls": calls, "instructions_per_call": round((parts["calls"] - parts["idle"]) / calls),
            "timer_instructions_per_call": round(parts["idle"] / calls)}


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
        asyncio.run(reserve_one_by_one(Path(tmp), POSITIONS, args.calls, False, _instrumented("calls"),
                                       _instrumented("idle")))


if __name__ == "__main__":
    main()
