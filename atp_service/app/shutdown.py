"""The stop of a serving process (``atp-service serve``): what ends serving (``StopRequest``), the graceful
stop and its bound, a second stop signal exiting at once, and the exit status an orchestrator reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

from atp_service.app.service import AtpService
from atp_service.app.stop_steps import StopFailed
from atp_service.config import ServiceConfig
from atp_service.logs import say_left_out
from atp_service.tasks import task_stacks

log = logging.getLogger("atp_service")
SHUTDOWN_SNAPSHOT_S = 60.0  # beyond the gRPC grace: time for every shard's final snapshot
SECOND_SIGNAL_AFTER_S = 2.0  # a stop signal this soon after the first is the same request again
EXIT_REPLACED = 3
"""Exit status when a newer instance claimed the keyspace (a supervisor should not just restart
this one: the two would take the keyspace from each other in turn)."""
EXIT_SHARD_FAILED = 4
"""Exit status when a shard actor stopped working (a bug, logged at ERROR): restart the service,
which rebuilds every shard from its log."""
EXIT_REDIS_FAILED = 5
"""Exit status when the embedded redis-server kept exiting (more than ``redis_restarts`` times in
10 minutes) or could not be started again: see its log (``<data_dir>/redis/redis.log``)."""
EXIT_STOP_OVERRAN = 6
"""Exit status when a stop signal's graceful stop did not finish within its bound (the grace, then
``SHUTDOWN_SNAPSHOT_S`` for the final snapshots) and was cut off: calls may have been cancelled and
shards left without their final snapshot. Nothing acknowledged is lost (it is in the log, R7): the
next start replays more of it. An orchestrator tells it from a clean stop (0)."""


class StopRequest:
    """What ends serving, and how the stop goes: a signal, or the embedded Redis lost for good —
    then nothing in doubt can be settled nor any snapshot written, and the stop is not waited for
    past the grace period."""

    def __init__(self, on_hard_exit: Callable[[], None] | None) -> None:
        self.event, self.on_hard_exit = asyncio.Event(), on_hard_exit
        self.lost = asyncio.Event()
        """Set when the embedded Redis is gone for good (it kept exiting, or would not start again)."""

    @property
    def redis_gone(self) -> bool:
        return self.lost.is_set()

    def watch_gave_up(self, redis_down: bool) -> None:
        if redis_down:
            self.lost.set()
        self.event.set()


def exit_on_a_second_signal(request: StopRequest) -> None:
    """From now on a stop signal exits at once (``kill_softly`` for the embedded Redis, then exit
    130) — one sent after a pause: a supervisor and the process group often deliver the same stop twice."""
    first_signal = time.monotonic()

    def exit_now() -> None:
        if time.monotonic() - first_signal < SECOND_SIGNAL_AFTER_S:
            return
        log.warning("second signal: exiting without the final snapshot", extra={"event": "hard_exit"})
        try:
            if request.on_hard_exit is not None:
                request.on_hard_exit()
        finally:  # whatever it raised (a disk refusing an unlink): a signal handler's error would not exit
            os._exit(130)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, exit_now)


async def shut_down(config: ServiceConfig, service: AtpService, request: StopRequest) -> int:
    """The graceful stop (a second signal, sent after a pause, exits at once); the exit status."""
    log.info("shutting down (grace %.1fs); another signal after %.0fs exits at once", config.shutdown_grace_s,
             SECOND_SIGNAL_AFTER_S, extra={"event": "shutdown", "grace_s": config.shutdown_grace_s})
    exit_on_a_second_signal(request)
    # At least a second: a bound of 0 would cancel the stop before its first step (gRPC left serving).
    bound_s = max(1.0, config.shutdown_grace_s + (0.0 if request.redis_gone else SHUTDOWN_SNAPSHOT_S))
    overran, failed_steps = False, 0
    began = time.monotonic()
    try:
        # Everything acknowledged is already durable: the final snapshot only shortens the next start.
        await asyncio.wait_for(service.stop(), timeout=bound_s)
    except StopFailed as failed:  # each step's failure said (``stop_step_failed``); every other step ran
        failed_steps = len(failed.exceptions)
    except TimeoutError:
        if request.redis_gone:  # expected: the exit status is the lost Redis's (5)
            log.warning("stop cut short after %.1fs: Redis is gone, so nothing in doubt can be settled and no "
                        "snapshot written (what was acknowledged is in its log)", bound_s,
                        extra={"event": "shutdown_overran"})
        else:
            overran = True
            log.error("shutdown did not finish in %.1fs; exiting anyway (state is in the log), exit status %d",
                      bound_s, EXIT_STOP_OVERRAN, extra={"event": "shutdown_overran", "bound_s": bound_s})
            dump_tasks()
    say_left_out()  # the rate-limited lines left out since their last: no next line says them now
    if not overran:  # else ``shutdown_overran`` said how it ended, and is the last line
        say_stopped(time.monotonic() - began, failed_steps, request.redis_gone)
    # Why the service stopped (a newer claim, a failed shard) says more than how its stop went.
    if service.replaced.is_set() or service.failed.is_set():
        return EXIT_REPLACED if service.replaced.is_set() else EXIT_SHARD_FAILED
    return EXIT_STOP_OVERRAN if overran else 1 if failed_steps else 0


def say_stopped(took_s: float, failed_steps: int, redis_gone: bool) -> None:
    """The stop's last line: ``stopped`` only where every step of it finished (else the log ended at
    ``shutdown``, and only the exit status told a clean stop from one that hung or was killed)."""
    if not (failed_steps or redis_gone):
        log.info("stopped in %.1fs: every step of the stop finished", took_s,
                 extra={"event": "stopped", "took_s": round(took_s, 3)})
        return
    why, said = (("redis_lost", "the embedded Redis was lost: nothing in doubt settled, no snapshot written")
                 if redis_gone else ("steps_failed", f"{failed_steps} step(s) of the stop failed (stop_step_failed)"))
    log.warning("stopped in %.1fs, not cleanly: %s", took_s, said,
                extra={"event": "stopped_unclean", "took_s": round(took_s, 3), "why": why})


def dump_tasks() -> None:
    log.warning("asyncio tasks:\n%s", task_stacks())

