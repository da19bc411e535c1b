"""SIGHUP: the estate file read again (``AtpService.reload_estate``), said in the log, as there is no
caller to answer. One that arrives while the service is still starting (waiting for Redis,
recovering: a reload is refused ``RECOVERING`` then) is kept and applied once the service serves,
before its ready line, and said to be late: refused and only logged, it was lost for good, and the
operator who changed the file and sent it (``systemctl reload``) took the new estate for loaded."""

from __future__ import annotations

import asyncio
import logging

from atp_service.app.keyspace import StartupError
from atp_service.app.service import AtpService
from atp_service.tasks import cancel_and_wait, keep
from reservation import Unavailable

log = logging.getLogger("atp_service")


class SignalledReloads:
    """The SIGHUPs of one ``atp-service serve``: ``signalled`` is the signal's handler, ``serving`` is
    called once the service serves."""

    def __init__(self, service: AtpService) -> None:
        self._service = service
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving = False
        self.deferred = False
        """A SIGHUP came while the service was starting: applied at ``serving``."""

    def signalled(self) -> None:
        if self._serving:
            keep(self._tasks, self._reload(late=False))
        elif not self.deferred:
            self.deferred = True
            log.info("SIGHUP while starting: the estate is reloaded once the service serves",
                     extra={"event": "estate_reload_deferred"})

    async def serving(self, stop: asyncio.Event) -> None:
        """From now on a SIGHUP reloads at once; one that came while starting is applied now, unless ``stop`` (a stop
        signal) is set first: then the reload is ended (its Redis reads come before any change, its passes finish
        whole) and the next start reads the estate file. Awaited whole, it held the stop for as long as Redis was slow
        to answer, and the service then said it was ready."""
        self._serving = True
        if not self.deferred:
            return
        self.deferred = False
        reloading = asyncio.ensure_future(self._reload(late=True))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((reloading, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not reloading.done():  # a stop signal, or this wait cancelled: the reload ends too
                await cancel_and_wait(reloading)
                log.info("stop signal while the estate was reloaded for a SIGHUP sent while starting: the reload "
                         "is abandoned (the next start reads the estate file)", extra={"event": "start_abandoned"})
        if not reloading.cancelled():
            reloading.result()  # its failures are said in its log

    async def _reload(self, late: bool) -> None:
        when = " (sent while starting, applied now it serves)" if late else ""
        try:
            summary = await self._service.reload_estate()
        except (StartupError, Unavailable) as exc:  # a bad file, Redis not answering
            log.error("SIGHUP%s: estate not reloaded, nothing changed: %s", when, exc)
        except Exception:  # a bug: said, and the service serves on (one applied late must not end its start)
            log.exception("SIGHUP%s: the estate's reload failed", when)
        else:
            log.info("SIGHUP%s: estate reloaded; published keys per channel: %s", when, summary)


__all__ = ["SignalledReloads"]
