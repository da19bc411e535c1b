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
from atp_service.tasks import keep
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

    async def serving(self) -> None:
        """From now on a SIGHUP reloads at once; one that came while starting is applied now."""
        self._serving = True
        if self.deferred:
            self.deferred = False
            await self._reload(late=True)

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
