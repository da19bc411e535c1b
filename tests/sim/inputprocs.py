"""``--input-streams --processes 2|3`` (``inputcluster.py``): what a process is to the readers and the sweep — its
gate, its quarantine writes through the one Redis, its address (``--new-addresses``: a new one now and then) and the
live addresses ``AtpService`` reads."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tests.sim.cluster import ClusterWorld
from tests.sim.inputstreams import SimStreams
from tests.sim.process import CURRENT, Process


class Awake:
    """A process's gate (``inputreaders.Gate``): its calls wait while it is paused; a dead one reaches nothing."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc

    async def passed(self) -> None:
        await self.proc.log.awake()


class Writes:
    """The shared log's client as the processes' desks write the quarantine stream through it: each write sent and
    answered only while its process runs (the process of the task that writes)."""

    def __init__(self, redis: SimStreams) -> None:
        self.redis = redis
        self.before: Callable[[Process], None] = lambda proc: None  # told of each write's process before it is sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)

    async def run(self, calls: list[Any]) -> list[Any]:
        proc = CURRENT.get()
        if proc is not None:
            self.before(proc)
            await proc.log.awake()
        try:
            return await self.redis.run(calls)
        finally:
            if proc is not None:
                await proc.log.awake()


MOVE_P = 0.4
"""``--new-addresses``: the chance that a process started again comes back at a new address (else at its first)."""


class Moving(ClusterWorld):
    """``--new-addresses``: a process started again (``converge_membership``, the driver's restarts) at a new address
    now and then (``moves``, its own draws: the others' stay as they were), or at its index's first one again."""

    moves: random.Random | None = None

    def _new(self, index: int, address: str = "") -> Process:
        if not address and self.moves is not None and self.moves.random() < MOVE_P:
            address = f"p{index}.{self.incarnations + 1}"
        return super()._new(index, address)


class Live:
    """What ``AtpService._live_addresses`` reads of a process (its membership as last read, its address)."""

    def __init__(self, proc: Process) -> None:
        self.membership, self.address = self, proc.address
        self._proc = proc

    @property
    def members(self) -> list[str]:
        return self._proc.members.members

    @property
    def routes(self) -> dict[int, tuple[str, int]]:
        return self._proc.members.routes
