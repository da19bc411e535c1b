"""The embedded redis-server watched while the service runs: restarted when it exits on its own.

Without a watch, an embedded Redis killed for memory or crashed left the service running and
answering ``UNAVAILABLE`` for ever, a state no supervisor notices. Restarted in place (same port,
same socket, its AOF loaded again), Redis comes back under the service's connections, which make
fresh ones; appends in doubt meanwhile are settled by what the log holds (R7), and a log found
shorter than what was acknowledged (``everysec`` lost its last second) stops the affected shard as
any such loss does. A Redis that keeps exiting is not restarted for ever: past ``restarts`` exits
within ``RESTART_WINDOW_S`` the service stops with exit status 5, for its supervisor and an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping

from atp_service.config import ServiceConfig
from atp_service.config_settings import as_given
from atp_service.config_values import redacted
from atp_service.instruments import Counter
from atp_service.storage.embedded_redis import EmbeddedRedis, StartAbandoned
from atp_service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RESTART_WINDOW_S = 600.0
"""The span over which the embedded Redis's exits are counted against ``redis_restarts``."""

EXIT_POLL_S = 1.0
"""How often an exit is looked for where the kernel cannot signal it (no ``pidfd_open``)."""


class EmbeddedRedisFailed(RuntimeError):
    """The embedded redis-server kept exiting, or could not be started again (``redis_down``), or
    the watch itself failed (Redis may still run, unwatched)."""

    def __init__(self, message: str, redis_down: bool = True) -> None:
        super().__init__(message)
        self.redis_down = redis_down


class EmbeddedRedisWatch:
    """Restarts ``embedded`` each time it exits on its own, at most ``restarts`` times within
    ``RESTART_WINDOW_S``; ``run`` raises ``EmbeddedRedisFailed`` when it may not or cannot."""

    def __init__(self, embedded: EmbeddedRedis, restarts: int, load_timeout_s: float, counter: Counter,
                 sources: Mapping[str, str] | None = None) -> None:
        self._embedded, self._restarts, self._load_timeout_s = embedded, restarts, load_timeout_s
        self._sources = sources or {}
        """Where each setting came from (``config_settings.resolve``): a restart's refusal names it as given."""
        self._counter = counter
        self._exits: deque[float] = deque()
        self._abandoned = False

    def abandon(self) -> None:
        """The service stops: a restart under way gives up (its Redis stopped) within a poll."""
        self._abandoned = True

    async def run(self) -> None:
        """Watch and restart until abandoned; ``EmbeddedRedisFailed`` (whatever went wrong here,
        said in its message) when Redis may not or cannot be started again."""
        try:
            while not self._abandoned:
                await self._exited()
                self._restart_or_give_up()
                await self._start_again()
        except EmbeddedRedisFailed:
            raise
        except Exception as exc:  # a fault of the watch itself: the service must not run on unwatched
            raise EmbeddedRedisFailed(f"the embedded redis-server can no longer be watched: {exc!r}",
                                      redis_down=False) from exc

    def _restart_or_give_up(self) -> None:
        self._exits.append(time.monotonic())
        while self._exits[0] < self._exits[-1] - RESTART_WINDOW_S:
            self._exits.popleft()
        how = _how_it_ended(self._embedded.process.returncode if self._embedded.process else None)
        if len(self._exits) > self._restarts:
            raise EmbeddedRedisFailed(f"the embedded redis-server {how}: {len(self._exits)} exits within "
                                      f"{RESTART_WINDOW_S:.0f}s, more than redis_restarts={self._restarts}; "
                                      f"see {self._embedded.data_dir / 'redis.log'}")
        log.error("the embedded redis-server %s; restarting it (calls answer UNAVAILABLE meanwhile)", how,
                  extra={"event": "redis_restarting", "exits": len(self._exits)})

    async def _start_again(self) -> None:
        try:
            await asyncio.to_thread(self._embedded.start, load_timeout_s=self._load_timeout_s,
                                    abandon=lambda: self._abandoned)
        except StartAbandoned:
            return  # the service is stopping
        except Exception as exc:
            said = as_given(str(exc), ServiceConfig, self._sources)  # its load's bound: ATP_X or --x, as at start
            raise EmbeddedRedisFailed(f"the embedded redis-server could not be started again: {said}") from exc
        self._counter.inc()
        log.info("embedded redis-server restarted on %s", redacted(self._embedded.local_url),
                 extra={"event": "redis_restarted"})

    async def _exited(self) -> None:
        """Until the embedded redis-server has exited (and is reaped)."""
        process = self._embedded.process
        assert process is not None, "started"
        try:
            pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # no pidfd (an old kernel): look every EXIT_POLL_S
            while process.poll() is None:  # noqa: ASYNC110 - a child's exit sets no event
                await asyncio.sleep(EXIT_POLL_S)
            return
        try:
            loop = asyncio.get_running_loop()
            readable: asyncio.Future[None] = loop.create_future()

            def ended() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(pidfd, ended)
            try:
                await readable  # a pidfd becomes readable when its process ends: no polling while it runs
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)
        process.wait()


class Watching:
    """``watch`` running beside the service: when it gives up, the reason is logged at once and
    ``on_give_up`` called with whether Redis is down (the service then stops, and exits 5)."""

    def __init__(self, watch: EmbeddedRedisWatch, on_give_up: Callable[[bool], None]) -> None:
        self._watch, self._on_give_up = watch, on_give_up
        self._task = asyncio.ensure_future(watch.run())
        self._task.add_done_callback(self._ended)

    @property
    def failure(self) -> BaseException | None:
        """Why the watch gave up (None: it did not)."""
        return self._task.exception() if self._task.done() and not self._task.cancelled() else None

    def _ended(self, _: asyncio.Future[None]) -> None:
        failure = self.failure
        if failure is not None:
            log.error("stopping (exit status 5): %s", failure, extra={"event": "stopping", "why": "redis_failed"})
            self._on_give_up(not isinstance(failure, EmbeddedRedisFailed) or failure.redis_down)

    async def aclose(self) -> None:
        """The service stops: the watch ends, and gives up a restart under way."""
        self._watch.abandon()
        with contextlib.suppress(EmbeddedRedisFailed):  # said already, in ``_ended``
            await cancel_and_wait(self._task)


def _how_it_ended(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:  # a signal Python has no name for (a realtime one)
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


__all__ = ["RESTART_WINDOW_S", "EmbeddedRedisFailed", "EmbeddedRedisWatch", "Watching"]
