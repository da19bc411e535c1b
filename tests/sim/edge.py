"""What a client reaches when several processes serve a keyspace: any one of them (drawn per call),
which does with a call for another process's group what the service's edge does (``edge/forward.py``,
``edge/record.py``). ``Moved`` naming an owner: the call is forwarded there once (a forwarded call
is never forwarded again: the owner's ``Moved`` is the caller's answer). ``Moved`` for a reservation
not held here (group -1) on Confirm/Release/Fulfil: every other owner is asked; NOT_FOUND only when
none holds it and every group has an owner. Facts: each one whose group is elsewhere is forwarded to
its owner. ReserveStream items are sent to their owners with ``--forward-streams`` (``streams.py``), else
answered ``Moved`` each; LoadCounts is not forwarded (a ``Moved`` for the call). With ``--partition`` a call
forwarded across a cut (``partition.py``) is never sent ("failed to connect") or made with its answer lost (in doubt).

It also stands in for the engine where the commands and checks read one (``actors``: each group's
actor at its current owner).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from atp_service.edge.errors import status_of
from atp_service.edge.forward import _DECISIONS, in_doubt
from atp_service.engine.orders import Orders
from atp_service.engine.router import Engine
from atp_service.engine.shard import ShardActor
from reservation import (
    CountRows,
    DomainError,
    Fact,
    InvalidArgument,
    LineRequest,
    Moved,
    NotFound,
    Reservation,
    ReserveCommand,
)
from tests.sim.factjudge import judged_record
from tests.sim.partition import lost_in_hand, unreached
from tests.sim.process import Process
from tests.sim.shed import door_refusal
from tests.sim.streams import InboundStream

if TYPE_CHECKING:
    from tests.sim.cluster import ClusterWorld

T = TypeVar("T")
OnEngine = Callable[[Engine], Awaitable[T]]
OnProcess = Callable[[Process], Awaitable[T]]


class Edge:
    def __init__(self, world: ClusterWorld, rng: random.Random) -> None:
        self.world, self.rng = world, rng
        self.streams = random.Random(0)
        """``--forward-streams``: what the ReserveStreams draw (their batches, their network's faults), a stream of
        its own so that the other draws stay as they were (the driver seeds it)."""

    # -- what the commands and checks read ---------------------------------------------------
    @property
    def actors(self) -> list[ShardActor]:
        return [self.world.owner_actor(g) for g in range(self.world.config.shards)]

    @property
    def orders(self) -> Orders | None:
        return self.world.processes[0].engine.orders  # sagas: every process has them

    def place(self, sku: str) -> int:
        return self.world.processes[0].engine.place(sku)

    def home_of(self, reservation_id: str) -> int | None:
        for group in range(self.world.config.shards):
            home = self.world.router_of(group).home_of(reservation_id)
            if home is not None:
                return home
        return None

    # -- the calls --------------------------------------------------------------------------------
    def pick(self) -> Process:
        proc = self.rng.choice(self.world.processes)
        self._door(proc)
        return proc

    def _door(self, proc: Process) -> None:
        """``--shed``: a process whose event loop runs late refuses a call at its door, nothing done
        (``edge.servicer._observed``: before the call's handler runs, a forwarded call's too)."""
        shed = self.world.shed
        if shed is not None and shed.door_refuses(self.world.processes.index(proc)):
            shed.count()
            raise door_refusal(proc.address)

    async def reserve(self, cmd: ReserveCommand) -> tuple[Reservation, bool]:
        return await self._unary(lambda e: e.reserve(cmd))

    async def reserve_many(self, cmds: Sequence[ReserveCommand]) -> list[Any]:
        proc = self.pick()
        if self.world.forward_streams:  # items of other processes' groups decided by their owners
            stream = InboundStream(self, proc, cmds, self.streams)
            return await proc.call(stream.run)
        return await proc.call(lambda: proc.engine.reserve_many(cmds))

    async def confirm(self, rid: str) -> Reservation:
        return await self._unary(lambda e: e.confirm(rid), located=True)

    async def release(self, rid: str, lines: tuple[LineRequest, ...], op: str) -> Reservation:
        return await self._unary(lambda e: e.release(rid, lines, op), located=True)

    async def fulfill(self, rid: str, lines: tuple[LineRequest, ...], op: str) -> Reservation:
        return await self._unary(lambda e: e.fulfill(rid, lines, op), located=True)

    async def set_safety_stock(self, sku: str, location: str, quantity: int) -> Any:
        return await self._unary(lambda e: e.set_safety_stock(sku, location, quantity))

    async def run_maintenance(self) -> None:
        proc = self.pick()
        await proc.call(proc.engine.run_maintenance)

    async def load_counts(self, block: CountRows, origin: str) -> Any:
        proc = self.pick()
        return await proc.call(lambda: proc.facts.load_counts(block, origin))

    async def record(self, facts: list[Fact], origin: str, judged: bool = False) -> list[Any]:
        """``edge.record.record_events``: facts of groups owned elsewhere go to their owners. ``judged``: E7
        judged by each process's clock as the edge does (``facttimes.judged_record``): a fact refused so is
        answered INVALID, not a refusal of the call."""
        proc = self.pick()
        out: list[Any] = await proc.call(lambda: _facts_at(facts, origin, judged)(proc))
        moved: dict[str, list[int]] = {}
        for n, result in enumerate(out):
            if isinstance(result, Moved) and result.owner:
                moved.setdefault(result.owner, []).append(n)
            elif isinstance(result, DomainError) and not (judged and isinstance(result, InvalidArgument)):
                raise result
        if moved:
            self.world.log.tally.forwarded += 1
            owners = list(moved)
            answers = await asyncio.gather(*(self._at(owner, _facts_at([facts[n] for n in moved[owner]], origin,
                                                                       judged), proc)
                                             for owner in owners))
            for owner, answer in zip(owners, answers, strict=True):
                for n, result in zip(moved[owner], answer, strict=True):
                    if isinstance(result, DomainError) and not (judged and isinstance(result, InvalidArgument)):
                        raise result  # the owner refused the forwarded call whole
                    out[n] = result
        return out

    # -- forwarding --------------------------------------------------------------------------------
    async def _unary(self, run: OnEngine[T], located: bool = False) -> T:
        proc = self.pick()
        try:
            return await proc.call(lambda: run(proc.engine))
        except Moved as moved:
            if moved.group < 0 and located:
                return await self._locate(proc, run)
            if not moved.owner or moved.owner == proc.address:
                raise
            self.world.log.tally.forwarded += 1
            return await self._at(moved.owner, lambda p: run(p.engine), proc)

    async def _at(self, address: str, run: OnProcess[T], source: Process) -> T:
        target = self.world.at(address)
        if target is None:
            raise Moved(-1, "")  # the sim never names an address no process had
        cut = self.world.cut(source.address, address)  # ``--partition``: ``source`` cannot reach it now
        if cut == "unsent":
            raise unreached(address)
        self._door(target)
        try:
            answer = await target.call(lambda: run(target))
        except DomainError:
            if cut is None:
                raise
            raise lost_in_hand(address) from None
        if cut is not None:  # made there, the connection cut before its answer came back
            raise lost_in_hand(address)
        return answer

    async def _locate(self, proc: Process, run: OnEngine[T]) -> T:
        """``Forwarder._locate``: asked of every other owner at once; the holder's answer wins."""
        self.world.log.tally.located += 1
        table = [proc.engine.where(g)[0] for g in range(self.world.config.shards)]
        owners = sorted({a for a in table if a} - {proc.address})
        answers = await asyncio.gather(*(self._at(a, lambda p: run(p.engine), proc) for a in owners),
                                       return_exceptions=True)
        # As ``Forwarder._locate``: the holder's answer (or its refusal by decision) first, whatever the others
        # said — a peer refusing at its door for load, or not answering, is not the holder.
        for answer in answers:
            if not isinstance(answer, BaseException):
                return answer
        for answer in answers:
            if isinstance(answer, DomainError) and status_of(answer) in _DECISIONS:
                raise answer
        refusals = [answer for answer in answers if not (isinstance(answer, Moved) and answer.group < 0)]
        if refusals:
            raise next((refusal for refusal in refusals if in_doubt(refusal)), refusals[0])
        if all(table) and table == [proc.engine.where(g)[0] for g in range(self.world.config.shards)]:
            raise NotFound("reservation_id: held by no process")
        raise Moved(-1, "")


def _facts_at(facts: list[Fact], origin: str, judged: bool = False) -> OnProcess[list[Any]]:
    """The facts as a (forwarded) RecordEvents at a process; ``judged``: E7 by its clock."""
    async def run(proc: Process) -> list[Any]:
        if judged:
            return await judged_record(proc.facts, proc.engine.clock.now_ms(), proc.engine.limits, facts, origin)
        return await proc.facts.record(facts, origin)

    return run
