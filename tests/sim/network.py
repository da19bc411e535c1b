"""How simulated processes reach each other for an order's steps (``Engine.remote``, bytes in and out,
served by ``engine.parts.serve_part`` at the owner), with the faults of a real network between them.

A step request may be lost on its way (never served), its reply lost (served, the sender told it
failed), or be late (the sender told it failed now; it is served at a later turn — in this step or
a later one — possibly after the saga took the step again, decided, or gave up). A request to a dead
process fails; to a paused one it waits there, and the sender's call times out (late); across a
partition (``--partition``, ``partition.py``) it is never sent, served with its reply lost, or late. Every failure
reaches the saga as the real sender raises it: ``Unavailable`` (OUTCOME_UNKNOWN).

Late requests arrive within the step they were sent in unless ``across_steps`` (``--late-across-steps``):
a ReservePart arriving after the clock passed its order's TTL and the saga abandoned the order replays the
part's tombstone (``_orders.give_up_part``; ``--seed 592 --processes 2 --late-across-steps`` found it holding
units for good before). One still on its way when Redis comes back from older data lands on what is left:
it tears its order (``orders_in_flight``, ``ClusterWorld.lose_tail``).
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import msgspec

from atp_service.engine.parts import (
    ApplyShare,
    CommitPart,
    GiveUpPart,
    PartStep,
    Remote,
    ReservePart,
    StepReply,
    StepRequest,
    serve_part,
)
from reservation import Reason, Unavailable
from reservation import _orders as orders
from tests.sim.process import Process

if TYPE_CHECKING:
    from tests.sim.cluster import ClusterWorld

FATES = ("ok",) * 10 + ("lost_request", "lost_reply", "late")
CUT_FATES = {"unsent": "lost_request", "in_hand": "lost_reply", "late": "late"}
"""A step across a partition (``partition.py``): never sent, served with its reply lost, or served later (late)."""
_reply = msgspec.msgpack.Decoder(StepReply).decode
_request = msgspec.msgpack.Decoder(StepRequest).decode


class Network:
    def __init__(self, world: ClusterWorld, rng: random.Random) -> None:
        self.world, self.rng = world, rng
        self.faulty = True
        self.across_steps = False
        self.late: list[tuple[Process, bytes]] = []  # served at a later turn (``arrive``)

    def sender(self, proc: Process) -> Remote:
        async def send(address: str, request: bytes) -> bytes:
            return await self._send(proc, address, request)

        return send

    async def _send(self, source: Process, address: str, request: bytes) -> bytes:
        fate = self.rng.choice(FATES) if self.faulty else "ok"
        tally = self.world.log.tally
        await self._wire(source)
        if self.faulty and (cut := self.world.cut(source.address, address)) is not None:
            fate = CUT_FATES[cut]  # ``--partition``: the two cannot reach each other now
        target = self.world.at(address)
        if target is None or target.dead or fate == "lost_request":
            tally.remote_lost += fate == "lost_request"
            raise _unknown(address)
        if fate == "late" or target.frozen:
            self.late.append((target, request))
            tally.remote_late += 1
            raise _unknown(address)
        reply = await target.call(lambda: serve_part(target.engine, request))
        await self._wire(source)
        if fate == "lost_reply":
            tally.remote_lost += 1
            raise _unknown(address)
        tally.remote_steps += 1
        tally.remote_moved += _reply(reply).reason == Reason.GROUP_MOVED
        return reply

    async def _wire(self, source: Process) -> None:
        """A few event-loop turns on the wire; a paused sender sends nothing until it runs again."""
        for _ in range(1 + self.rng.randrange(3)):
            await asyncio.sleep(0)
        await source.awake()

    def orders_in_flight(self) -> set[str]:
        """The orders a part of which a late request still on its way changes when it arrives."""
        changed = (_changed(_request(request).step) for _, request in self.late)
        return {orders.order_of(part) or part for part in changed if part is not None}

    def arrive(self, count: int | None = None) -> None:
        """The oldest ``count`` (default: all) late requests reach their process now (a dead one's are
        gone; a paused one serves them once it runs again); nobody reads the replies."""
        count = len(self.late) if count is None else count
        arriving, self.late = self.late[:count], self.late[count:]
        for target, request in arriving:
            if not target.dead:
                target.background(_serve_late(target, request))


async def _serve_late(target: Process, request: bytes) -> None:
    await target.log.awake()
    await serve_part(target.engine, request)


def _changed(step: PartStep) -> str | None:
    """The part a step changes (None: a read)."""
    if isinstance(step, ApplyShare):
        return step.part
    if isinstance(step, ReservePart | GiveUpPart):
        return step.cmd.reservation_id
    return step.part.reservation_id if isinstance(step, CommitPart) else None


def _unknown(address: str) -> Unavailable:
    return Unavailable(f"sim: peer {address} did not answer an order step; the order goes on later",
                       Reason.OUTCOME_UNKNOWN)
