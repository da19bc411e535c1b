"""``perf record`` on one thread, recording exactly while a load runs.

A ``perf record ... -- sleep N`` started beside the load records whatever window perf's own start
leaves it: on a busy machine perf can start after a short load has ended and record an idle thread
(no samples at all). Here perf starts with its events disabled (``-D -1``) and is driven through
its control fifos (``--control fifo:ctl,ack``): the load starts only once perf has acknowledged
``enable``, and ``stop`` ends the recording once the load is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

ACK_LIMIT_S = 30.0  # perf answers a control command in milliseconds; this bounds a wedged one


class PerfFailed(Exception):
    """perf could not record here (not allowed, not for this kernel, or it stopped answering)."""


def _ack(fd: int) -> asyncio.Future[object]:
    """The next bytes perf writes on its ack fifo, read when the loop sees them."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()

    def readable() -> None:
        if not future.done():
            future.set_result(os.read(fd, 64))

    loop.add_reader(fd, readable)
    future.add_done_callback(lambda _: loop.remove_reader(fd))
    return future


async def _command(perf: asyncio.subprocess.Process, ctl: int, ack: int, command: str) -> None:
    """Send one control command and wait for its ``ack``, or for perf to exit (whichever is first)."""
    acked = _ack(ack)
    os.write(ctl, command.encode() + b"\n")
    exited: asyncio.Future[object] = asyncio.ensure_future(perf.wait())
    waiting: set[asyncio.Future[object]] = {acked, exited}
    done, _ = await asyncio.wait(waiting, timeout=ACK_LIMIT_S, return_when=asyncio.FIRST_COMPLETED)
    for future in waiting:
        future.cancel()
    # perf writes its answer from a fixed-size buffer: "ack\n" and a NUL after it (perf 6.1).
    answer = acked.result() if acked in done else None
    if isinstance(answer, bytes) and answer.rstrip(b"\0") == b"ack\n":
        return
    if perf.returncode is None:  # running, and no answer, or another: a protocol this code does not know
        perf.kill()
        await perf.wait()
        raise PerfFailed(f"perf record did not acknowledge {command!r} within {ACK_LIMIT_S}s (answered {answer!r})")
    raise PerfFailed(f"perf record failed (exit {await perf.wait()})")


@contextlib.asynccontextmanager
async def recording(perf_path: str, tid: int, data: Path, frequency: int = 999) -> AsyncIterator[None]:
    """Record thread ``tid`` into ``data`` for exactly the body of the ``async with``."""
    ctl_path, ack_path = data.with_suffix(".ctl"), data.with_suffix(".ack")
    for fifo in (ctl_path, ack_path):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    # Both ends read-write: opening a fifo so never blocks, whether or not perf has opened it yet.
    ctl, ack = os.open(ctl_path, os.O_RDWR), os.open(ack_path, os.O_RDWR)
    perf = await asyncio.create_subprocess_exec(
        perf_path, "record", "-F", str(frequency), "-D", "-1", "--control", f"fifo:{ctl_path},{ack_path}",
        "-t", str(tid), "-o", str(data), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await _command(perf, ctl, ack, "enable")
        yield
        await _command(perf, ctl, ack, "stop")
        if await asyncio.wait_for(perf.wait(), 60) != 0:
            raise PerfFailed(f"perf record failed (exit {perf.returncode})")
    finally:
        if perf.returncode is None:
            perf.kill()
            await perf.wait()
        os.close(ctl)
        os.close(ack)
