"""``--input-streams``: a second process reading the same consumer group (``ATP_OWNERSHIP=leases``: every process
a consumer of its own), owning no group, so that every fact it reads goes to the owner (``intake/owners.py``).

The second process (``OtherProcess``, consumer ``atp-2``) runs the real ``StreamIngestor`` with a send
(``OwnerSends`` over ``send``) and a desk of its own (``ForwardingDesk``: every group ``Moved`` to ``atp-1``; its
quarantine writes, owed ones included, its own ``QuarantineStream``). ``send`` is ``RecordEvents`` as the owner
runs it for a forwarded call saying the sender writes what it quarantines (``atp-quarantine-by-sender``:
``FactDesk.record(..., sender_writes=True)``), refused before it ran or its answer lost after, or cut by the
owner's crash (a timeout). The process is stopped (SIGSTOP) and continued: each of its Redis calls and sends
waits at its ``Gate`` before it is sent and again before its answer is seen, for as long as it is stopped, while
the world's reader claims what it left pending (``XAUTOCLAIM``), and it goes on where it was, acknowledging and
writing with what it read before. Its tasks are outside the owner's process (a crash of that one leaves them).

``turn`` is one pass of ``StreamIngestor._run``'s loop (its ``step``), without its wall-clock waits: a consumer
group found gone made again first (``_create_groups(again=True)``), its own pending entries when due (owed
quarantine writes first), a claim of entries idle past ``claim_idle_ms`` when drawn, else a read of new entries,
the batch awaited; a Redis error marks its own pending entries due, as ``_run`` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from atp_service.engine.clock import Clock, Ticks
from atp_service.intake.facts import Result
from atp_service.intake.ingest import StreamIngestor
from atp_service.intake.quarantine import Acks, QuarantineStream
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import Call
from atp_service.storage.resp import group_lost
from reservation import DomainError, Fact, FactOutcome, Moved
from tests.sim.factjudge import judged_sent
from tests.sim.inputpipeline import _fail
from tests.sim.inputstreams import MAKER, RedisFaults, SimStreams
from tests.sim.world import World

OWNER = "atp-1"
"""The world's process: its consumer name, and the address the other process sends its facts to."""
OTHER = "atp-2"
CLAIM_IDLE_MS = 30_000
"""``claim_idle_ms`` of both readers: a stop of the other process longer than this has its entries claimed."""


def world_ticks(world: World) -> Ticks:
    """The clock a reader (and its owners' sends) times its passes, claims and waits on (``StreamIngestor``'s
    ``ticks``): the world's, in seconds. The host's monotonic clock would not replay: how far a pass got before its
    deadline, when a failed owner is tried again, would depend on how fast the machine ran the seed."""
    return lambda: world.clock.now_ms() / 1000


async def started(reader: StreamIngestor) -> StreamIngestor:
    """``StreamIngestor.start`` but for its tasks (the driver runs the reader's turns): its groups made where missing,
    then its fence set, before any entry is read (a dead-letter write in doubt of a run before lands nothing in this
    one: ``fence.py``). Tried again until done, as the service starts its reader (``_while_redis_is_away``)."""
    while True:
        try:
            await reader._create_groups()
            await reader._settler.fence.raised()
            return reader
        except (RedisError, RedisClusterException):
            await asyncio.sleep(0)


class Gate:
    """A process stopped (SIGSTOP) and continued: what it sends waits while stopped, and so do the answers."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.running.set()

    async def passed(self) -> None:
        await self.running.wait()


class GatedClient:
    """The other process's Redis client: ``SimStreams`` behind its ``Gate``."""

    def __init__(self, redis: SimStreams, gate: Gate) -> None:
        self._redis, self._gate = redis, gate

    def set_response_callback(self, *_: Any) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def register_script(self, source: str) -> Callable[..., Any]:
        run = self._redis.register_script(source)

        async def call(keys: list[str], args: list[Any]) -> Any:
            await self._gate.passed()
            try:
                return await run(keys=keys, args=args)
            finally:
                await self._gate.passed()

        return call

    async def xinfo_stream(self, stream: str) -> Any:
        return await self._gated(self._redis.xinfo_stream(stream))

    async def get(self, key: str) -> Any:
        return await self._redis.get(key)  # a run (``keep_run``): no step of its own to gate

    async def set(self, key: str, value: bytes, px: int | None = None) -> Any:
        return await self._redis.set(key, value, px)  # its fence set anew (``fence.Fence.raised``), as ``get``

    async def zscore(self, key: str, member: str) -> Any:
        return await self._redis.zscore(key, member)  # a run swept, in a draws' record (``keep_run``), as ``get``

    async def zrangebyscore(self, key: str, low: int, high: int | str) -> Any:
        return await self._redis.zrangebyscore(key, low, high)  # a draws' record (``keep_run``), as ``get``

    async def xinfo_consumers(self, stream: str, group: str) -> Any:
        return await self._gated(self._redis.xinfo_consumers(stream, group))

    async def smembers(self, key: str) -> Any:
        return await self._gated(self._redis.smembers(key))

    def pipeline(self, transaction: bool = False) -> Any:
        pipe, gate = self._redis.pipeline(transaction), self._gate
        execute = pipe.execute

        async def gated() -> list[Any]:
            await gate.passed()
            try:
                return await execute()
            finally:
                await gate.passed()

        pipe.execute = gated  # type: ignore[method-assign]
        return pipe

    async def run(self, calls: list[Call]) -> list[Any]:
        """``Nodes.run`` of the quarantine script's calls (``ForwardingDesk``'s writes), behind the gate."""
        return await self._gated(self._redis.run(calls))  # type: ignore[no-any-return]

    async def _gated(self, call: Any) -> Any:
        await self._gate.passed()
        try:
            return await call
        finally:
            await self._gate.passed()


class ForwardingDesk:
    """The other process's ``FactDesk`` as the reader uses it: it owns no group (every fact ``Moved`` to the
    owner); what the owner quarantines is written here with its entry's XACK (``FactDesk.quarantined_there``)."""

    def __init__(self, world: World, client: GatedClient) -> None:
        self._world, self._client = world, client
        self.metrics = IntakeMetrics()
        self.quarantine = QuarantineStream(world.fact_desk.quarantine.stream, 1000)  # as the world's desk

    def _moved(self, facts: Sequence[Fact]) -> list[Result | DomainError]:
        return [Moved(self._world.eng.place(fact.sku), OWNER) for fact in facts]

    async def record(self, facts: Sequence[Fact], origin: str, acks: Acks | None = None,
                     sender_writes: bool = False) -> list[Result | DomainError]:
        return self._moved(facts)

    async def applied_or_refused(self, facts: Sequence[Fact], refusals: Sequence[DomainError],
                                 origin: str = "stream") -> list[Result | DomainError]:
        return self._moved(facts)

    async def quarantined_there(self, facts: Sequence[Fact], results: list[Result | DomainError], at: Sequence[int],
                                acks: Acks) -> None:
        late = [i for i in at if isinstance(result := results[i], tuple) and result[0] == FactOutcome.QUARANTINED]
        if late:
            await self.quarantine.settle(self._client, facts, results, late, acks, self.metrics)

    async def wrote_owed(self) -> bool:
        return not self.quarantine.owed or await self.quarantine.write_owed(self._client, self.metrics)


class OtherProcess:
    """The second process: its gate, its desk, its reader (made again at its restarts), its task of turns."""

    def __init__(self, world: World, redis: SimStreams, faults: RedisFaults, settings: Any) -> None:
        self.world, self.faults = world, faults
        self.gate = Gate()
        self.client = GatedClient(redis, self.gate)
        self.settings = dataclasses.replace(settings, consumer_name=OTHER)
        self.clock_for: Callable[[], Clock] = lambda: world.clock  # its host's (``--clock-jumps``: its own)
        self.reader: StreamIngestor | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped_until = -1  # the step at which a SIGSTOP ends
        self.sends = 0
        self.owner_down = False  # the owner's process killed, until it has started again: refuses connections
        self._at_owner = False
        self._own: set[asyncio.Task[Any]] = set()  # its tasks, running

    def install(self) -> None:
        """The tasks the other process's own tasks start (a claim kept whole, a dead letter's write) are its own
        too: outside the owner's process (its crash leaves them; its quiet does not wait for them). What a send
        starts at the owner is the owner's."""
        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            if not self._at_owner and asyncio.current_task(loop) in self._own:
                self._adopt(task)
            return task

        asyncio.get_running_loop().set_task_factory(factory)  # type: ignore[arg-type]

    def _adopt(self, task: asyncio.Task[Any]) -> None:
        for kept in (self._own, self.world._outside):
            kept.add(task)
            task.add_done_callback(kept.discard)

    async def new_reader(self) -> StreamIngestor:
        """The process restarted (or started): its reader made again, its desk's owed writes forgotten."""
        await self.cancel()
        self.gate.running.set()
        self.desk = ForwardingDesk(self.world, self.client)
        self.reader = StreamIngestor(self.client, self.desk, self.settings, self.clock_for(),  # type: ignore[arg-type]
                                     send=self.send, ticks=world_ticks(self.world))
        loop_of(self.reader)
        return self.reader

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.task = None

    def run(self, turns: Callable[[], Any]) -> None:
        """Its next turns in a task outside the owner's process, unless the last ones are still going."""
        if self.task is not None and self.task.done():
            self.task.result()  # a failure of its own (not Redis's, not an owner's) ends the seed
            self.task = None
        if self.task is None:
            self.task = asyncio.ensure_future(turns())
            self._adopt(self.task)

    async def send(self, owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        """``RecordEvents`` at the owner (``edge.record.fact_sender``), the sender writing what it quarantines; a fact
        the owner's clock finds stamped past the allowed skew refused (E7) unless applied already."""
        await self.gate.passed()
        kind, _ = self.faults.draw("send", 1)
        if kind == "refused" or self.owner_down:
            raise _fail("refused")
        self.sends += 1
        world = self.world
        self._at_owner = True
        try:
            call = asyncio.ensure_future(judged_sent(world.fact_desk, world.service_clock.now_ms(),
                                                    world.config.limits, list(facts)))
        finally:
            self._at_owner = False
        await asyncio.wait({call})
        await self.gate.passed()
        if call.cancelled():  # the owner killed meanwhile: no answer came back in time
            raise TimeoutError("the owner did not answer (simulated)")
        answer = call.result()
        if kind == "lost":
            raise _fail(kind)
        return answer


@dataclasses.dataclass
class Loop:
    """One reader's loop (``_run``), as the calls the driver sends run it: one pass of it at a time (``lock``) but
    for the batches of new entries, applied in the background while it reads on (``in_flight``); a pass over its
    own pending entries put off while any is in flight (``_retry_pending``'s ``_settle_batches``: their entries
    are in its list too); a consumer group found gone at its last pass (``gone``)."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    in_flight: int = 0
    gone: bool = False
    serial: int = dataclasses.field(default_factory=itertools.count().__next__)


def loop_of(reader: StreamIngestor) -> Loop:
    """The reader's loop, kept on the reader (keyed by ``id`` a reader made later could inherit a gone one's)."""
    loop: Loop = reader.__dict__.setdefault("_sim_loop", Loop())
    MAKER.set((reader._config.consumer_name, loop.serial))  # the calling task's, and those it starts
    return loop


async def turn(reader: StreamIngestor, claim: bool, after_pass: bool = False) -> None:
    """One pass of ``StreamIngestor._run``'s loop (``step``): the consumer group made again first where the last
    pass found it gone; a Redis error marks its own pending entries due, as ``_run`` does. ``after_pass``: a claim
    drawn runs after the pass over its own pending entries where one is due, as ``step`` runs it next (a pass sets
    its next after a wait, the claim's interval passed): a reader whose every pass leaves an entry pending still
    claims and sweeps (its run swept, drawn again then: ``kept_run``)."""
    loop = loop_of(reader)
    entries = None
    async with loop.lock:
        try:
            if loop.gone:
                loop.gone = False
                await reader._create_groups(again=True)
            retried = reader._retry_own_pending
            if retried and not loop.in_flight:  # else put off, as ``_settle_batches`` does
                await reader._retry_pending()
                if reader._pending_after is not None:  # its deadline passed (``PENDING_PASS_S``): goes on next turn
                    getattr(reader._client, "_redis", reader._client).passes_cut += 1
            if claim and (not retried or after_pass):
                await _claim_and_sweep(reader)
            elif not retried:
                entries = await reader._read(None, block=None)
        except (RedisError, RedisClusterException, OSError) as exc:
            loop.gone = group_lost(exc)
            reader._retry_own_pending = True
    if entries:  # a batch in flight (``step``: a task of its own, ``_batch_done`` on failure)
        loop.in_flight += 1
        try:
            await reader._handle(entries)
        except (RedisError, RedisClusterException, OSError):
            reader._retry_own_pending = True
        finally:
            loop.in_flight -= 1


async def _claim_and_sweep(reader: StreamIngestor) -> None:
    """``step``'s claim: departed consumers removed after it, then its own run drawn again where a sweep took it all
    the same (E8)."""
    await reader._handle(await reader._claim(), wait=False)
    if reader._departed is not None:
        await reader._departed.sweep()
        before = reader._consumer_run
        reader._consumer_run = await reader._departed.kept_run(reader._desk.quarantine)
        if before is not None and reader._consumer_run != before:
            getattr(reader._client, "_redis", reader._client).redrawn += 1
