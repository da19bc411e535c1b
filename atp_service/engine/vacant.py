"""The place of a shard whose group this process does not own (leased groups, ``app.membership``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn

from atp_service.config import ShardSettings
from atp_service.engine.clock import Clock
from atp_service.engine.messages import Work
from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics
from atp_service.storage.log import LogStore
from reservation import Ledger, Limits, Moved, Unavailable

Where = Callable[[int], tuple[str, int]]
"""A group's owner as this process last read it: (advertised address, epoch); ("", 0): none."""


class Vacant(ShardActor):
    """Refuses every call with ``Moved``, naming the group's owner as last read (``where``); holds
    an empty ledger, so whatever walks every shard (housekeeping, gauges) finds nothing here."""

    vacant = True

    def __init__(self, shard: int, limits: Limits, log_store: LogStore, clock: Clock, settings: ShardSettings,
                 where: Where, metrics: EngineMetrics | None = None) -> None:
        super().__init__(shard, Ledger(shard, limits), log_store, clock, settings, 0, metrics)
        self._where = where

    def moved(self) -> Moved:
        return Moved(self.shard, *self._where(self.shard))

    def submit(self, work: Work) -> asyncio.Future[Any]:
        raise self.moved()

    async def pause(self) -> NoReturn:
        raise self.moved()

    def request_maintenance(self) -> None:
        pass

    def start(self) -> None:
        pass

    async def stop(self, refusal: Unavailable | None = None) -> None:
        pass

    async def checkpoint(self, force: bool = False) -> None:
        pass
