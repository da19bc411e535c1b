"""``scale.py --stall``: a starved service process, on purpose. Over each step's window, one service process
at a time (each in turn) is stopped (``SIGSTOP``) for the seconds given — longer than its lease, it loses
its groups to the others, who take them over while it cannot renew, write or answer — then let go on
(``SIGCONT``), a gap, and the next. What a host too loaded to run the processes in time does to them by
chance, every step: the check after it says whether a hold acknowledged was lost (R1, R7), and the
errors how many calls were answered ``GROUP_MOVED`` or in doubt meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Sequence

GAP_S = 1.0
"""Between one stall's end and the next's start: the stopped process renews, finds its groups lost, and
takes its share back, so that the next stall catches groups at new owners too."""


class Stalls:
    """Stalls ``procs`` by turns for ``seconds`` each until cancelled; ``count`` of them begun so far."""

    def __init__(self, procs: Sequence[subprocess.Popen[bytes]], seconds: float) -> None:
        self.procs, self.seconds, self.count = procs, seconds, 0

    async def run(self) -> None:
        while True:
            proc = self.procs[self.count % len(self.procs)]
            self.count += 1
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(self.seconds)
                finally:  # cancelled at the step's end too: never left stopped, the check reads every process
                    os.kill(proc.pid, signal.SIGCONT)
            await asyncio.sleep(GAP_S)


__all__ = ["GAP_S", "Stalls"]
