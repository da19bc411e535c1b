"""A leased process's renewals of its membership and leases (``ownership = leases``), and its balances, kept going
for as long as it serves: renewals at ``RenewalPace``, each failure said and counted; never ended for good by a bug."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from atp_service.app.balancing import RenewalPace
from atp_service.instruments import Counter
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.log import Fenced

log = logging.getLogger("atp_service.app.membership")  # where its lines were said before they moved here


async def keep_renewing(renew: Callable[[], Awaitable[str]], lease_s: float, failures: Counter,
                        failed_first: bool) -> None:
    """Renews (``renew``: what it left unrenewed, '' when nothing) at ``RenewalPace``: a third of a lease after
    each renewal was sent, and soon after one that left anything unrenewed (``failed_first``: the start's,
    already said). Said once when renewals start failing, once a lease while they go on, and when one succeeds
    again."""
    pace = RenewalPace(lease_s)
    said_at = time.monotonic()
    wait_s = pace.after(not failed_first, said_at)
    while True:
        await asyncio.sleep(wait_s)
        sent = time.monotonic()  # no later than the renewal's own send: its deadlines count from that
        missing = await _renewal(renew)
        now = time.monotonic()
        failing_s = pace.failing_s(now)
        wait_s = pace.after(not missing, now, sent)
        if not missing:
            if failing_s:
                log.info("renewed again after %.1fs of failed renewals", failing_s,
                         extra={"event": "renewals_recovered", "duration_ms": round(failing_s * 1000)})
            continue
        failures.inc()
        if not failing_s or now - said_at >= lease_s:
            said_at = now
            log.warning("not renewed: %s (failing for %.1fs; tried again in %.2fs)", missing, failing_s, wait_s,
                        extra={"event": "renewal_failed"})


async def _renewal(renew: Callable[[], Awaitable[str]]) -> str:
    """``renew``: what it left unrenewed, an error included."""
    try:
        return await renew()
    except (*STORAGE_ERRORS, Fenced) as exc:
        return repr(exc)
    except Exception as exc:  # a bug must not stop renewing for good: said loudly, tried again
        log.exception("renewal failed")
        return repr(exc)


async def keep_balancing(balance: Callable[[], Awaitable[None]], every_s: float) -> None:
    """``balance`` every ``every_s``; Redis's refusals said as warnings, a bug loudly, and tried again."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await balance()
        except STORAGE_ERRORS as exc:
            log.warning("balance: %r (tried again in %.1fs)", exc, every_s)
        except Exception:  # a bug must not stop balancing for good: said loudly, tried again
            log.exception("balance failed (tried again in %.1fs)", every_s)


__all__ = ["keep_balancing", "keep_renewing"]
