"""``perf record`` driven through its control fifos records exactly while the body runs."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from benchmarks.perf_record import PerfFailed, recording
from benchmarks.unary_cost import dso_shares

PERF = shutil.which("perf")
BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"


def slow_to_start(tmp_path: Path, perf: str, delay_s: float) -> str:
    """A perf that takes ``delay_s`` to start, as on a loaded machine."""
    wrapper = tmp_path / "perf"
    wrapper.write_text(f"#!/bin/sh\nsleep {delay_s}\nexec {perf} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


async def report(perf: str, data: Path) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-g", "none",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    text, _ = await proc.communicate()
    return dso_shares(text.decode(errors="replace"))


@pytest.mark.skipif(PERF is None, reason="perf is not installed (Debian's linux-perf)")
async def test_a_perf_slow_to_start_still_records_the_whole_body(tmp_path: Path) -> None:
    assert PERF is not None
    busy = await asyncio.create_subprocess_exec(sys.executable, "-c", BUSY)
    try:
        data = tmp_path / "busy.data"
        began = time.monotonic()
        try:
            async with recording(slow_to_start(tmp_path, PERF, 1.5), busy.pid, data):
                # The body starts only once perf records: its 1.5 s start is before, not inside it.
                assert time.monotonic() - began >= 1.5
                await asyncio.sleep(0.3)
        except PerfFailed as failed:  # installed but not allowed on this machine: nothing to check
            # perf's own refusal (it exited, with an error): not one of an answer this code misread.
            assert re.fullmatch(r"perf record failed \(exit [1-9][0-9]*\)", str(failed)), failed
            return
        shares = await report(PERF, data)
        assert shares and max(shares.values()) > 0.3, shares  # a busy thread: samples, mostly the interpreter
    finally:
        busy.kill()
        await busy.wait()


async def test_a_perf_that_cannot_record_is_reported_at_once_and_the_body_never_runs(tmp_path: Path) -> None:
    refusing = tmp_path / "perf"
    refusing.write_text("#!/bin/sh\necho 'perf_event_paranoid setting is 4' >&2\nexit 255\n")
    refusing.chmod(0o755)
    ran = False
    with pytest.raises(PerfFailed, match=r"^perf record failed \(exit 255\)$"):
        async with recording(str(refusing), 1, tmp_path / "never.data"):
            ran = True
    assert not ran
