"""Faults on the Redis calls of ownership, for ``membership_fuzz``: each script call of a lease or of
the members' registry (``GroupLeases``'s ACQUIRE, RENEW, RELEASE and epoch draw; ``MEMBERS_SCRIPT``)
and each read of the routes or of an owner key for a taking's epoch is given a fault drawn from the fuzzer's stream:

- ``slow``: it waits a little before it is sent (other work runs meanwhile);
- ``lost``: it never reaches Redis; its caller is told the connection failed;
- ``answer_lost``: it runs in Redis, and its caller is told the connection failed;
- ``late``: it reaches Redis only when the fuzzer lands it (``land_some``, ``land_all``), after
  whatever was sent since — a RELEASE may overtake the ACQUIRE it gives back; its caller is told it
  timed out at once.

The log's writes (group commits, fences, snapshots, id claims) meet fewer faults: now and then one
ends with its answer lost, or lands late, its caller told it timed out — in doubt (R7) until the shard
has fenced it and read what landed. A paused process (``pause``: its Redis connections stalled) sends
nothing of ownership until it is thawed, and its writes wait up to ``STALL_S`` each, then time out,
landing later; one cut off (``cut``) reaches nothing, for good. Its other reads — a recovery's, an owner
check's — stall as well: each either reaches Redis only once the process runs again, or is read at once
and its answer held until then (``stale``: what it says may have changed meanwhile); either times out
after ``STALL_S``. Otherwise they go through untouched: their faults are other tests' (``tests/sim``,
``test_lease_faults.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.app.membership import MEMBERS_SCRIPT
from atp_service.storage.leases import GroupLeases
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Call

OWNERSHIP_SCRIPTS = {GroupLeases._ACQUIRE: "ACQUIRE", GroupLeases._RENEW: "RENEW", GroupLeases._RELEASE: "RELEASE",
                     GroupLeases._EPOCH: "EPOCH", MEMBERS_SCRIPT: "MEMBERS"}
CALL_FAULTS = ("ok",) * 7 + ("slow", "slow", "lost", "answer_lost", "late")
READ_FAULTS = ("ok",) * 8 + ("slow", "lost")
WRITE_FAULTS = ("ok",) * 10 + ("answer_lost", "late")
WRITE_FAULT_P = 0.1
"""The share of the log's writes sent by a task (``Nodes.run``, where the faults are drawn) rather than
begun on the connection directly (``Nodes.begin``)."""
SLOW_S = 0.02
STALL_S = 0.2


class LateCalls:
    """The calls on their way that the fuzzer lands when it chooses (shared by every process)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[asyncio.Event, asyncio.Task[Any]]] = []

    def add(self, send: Callable[[], Any]) -> None:
        go = asyncio.Event()

        async def later() -> Any:
            await go.wait()
            return await send()

        task = asyncio.ensure_future(later())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its answer goes nowhere
        self._waiting.append((go, task))

    def land_some(self, rng: random.Random) -> int:
        landing = [w for w in self._waiting if rng.random() < 0.3]
        for go, _ in landing:
            go.set()
        self._waiting = [w for w in self._waiting if w not in landing]
        return len(landing)

    async def land_all(self) -> None:
        waiting, self._waiting = self._waiting, []
        for go, _ in waiting:
            go.set()
        await asyncio.gather(*(task for _, task in waiting), return_exceptions=True)


class FaultyOwnership:
    """``store``'s calls of ownership given faults while ``faults`` is on; ``pause``/``thaw``/``cut``."""

    def __init__(self, store: LogStore, rng: random.Random, late: LateCalls, log: Callable[[str], None]) -> None:
        self.rng, self.late, self.log = rng, late, log
        self.faults = True
        self.cut_off = False
        self.pause_at_taking = False
        self.running = asyncio.Event()
        self.running.set()
        nodes, client = store.nodes, store.client
        self._run_one, self._run, self._mget, self._get = nodes.run_one, nodes.run, client.mget, client.get
        self._begin, self._xrange = nodes.begin, client.xrange
        nodes.run_one, nodes.run, nodes.begin = self.run_one, self.run, self.begin  # type: ignore[method-assign]
        client.mget, client.get, client.xrange = self.mget, self.get, self.xrange

    def pause(self, at_taking: bool = False) -> None:
        """Stalled now, or (``at_taking``) as the next ACQUIRE granted here is answered: its recovery's reads
        stall then, the group taken but not yet served."""
        if at_taking:
            self.pause_at_taking = True
        else:
            self.running.clear()

    def thaw(self) -> None:
        self.pause_at_taking = False
        self.running.set()

    def cut(self) -> None:
        """Cut off for good, and no longer paused: a pause armed for its next taking (``pause``) is
        disarmed too — else an ACQUIRE already past the gate, granted after the cut, paused a process cut
        off, which nothing thaws (only a paused one is thawed), and its stop waited at the gate for ever
        once it was let reach Redis again (``Fuzz.stop``)."""
        self.cut_off = True
        self.pause_at_taking = False
        self.running.set()

    def describe(self) -> str:
        """Its state, for a finding."""
        cut = ", cut off" if self.cut_off else ""
        armed = ", to pause at its next taking" if self.pause_at_taking else ""
        running = "running" if self.running.is_set() else "paused"
        return f"faults {'on' if self.faults else 'off'}, {running}{cut}{armed}"

    async def _gate(self) -> None:
        if not self.cut_off:
            await self.running.wait()
        if self.cut_off:
            raise RedisConnectionError("fuzz: cut off from Redis")

    def _draw(self, choices: tuple[str, ...]) -> str:
        return self.rng.choice(choices) if self.faults else "ok"

    def begin(self, calls: list[Call], done: Callable[[list[Any]], None]) -> bool:
        if self.cut_off or (self.faults and (not self.running.is_set() or self.rng.random() < WRITE_FAULT_P)):
            return False  # by ``run``, where its fault is drawn
        return bool(self._begin(calls, done))

    async def run_one(self, call: Call, extra_s: float = 0.0) -> Any:
        if call.script not in OWNERSHIP_SCRIPTS:
            (reply,) = await self._write([call], lambda: self._run_one(call, extra_s), single=True)
            if isinstance(reply, BaseException):
                raise reply
            return reply
        what = f"{OWNERSHIP_SCRIPTS[call.script]} {call.keys[0]}"
        return await self._faulted(lambda: self._run_one(call, extra_s), what)

    async def run(self, calls: list[Call], extra_s: float = 0.0) -> list[Any]:
        if not any(call.script in OWNERSHIP_SCRIPTS for call in calls):
            return await self._write(calls, lambda: self._run(calls, extra_s))
        try:
            return list(await self._faulted(lambda: self._run(calls, extra_s), f"{len(calls)} RENEWs"))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return [exc] * len(calls)  # as ``Nodes.run`` answers a node that did not

    async def _write(self, calls: list[Call], send: Callable[[], Any], single: bool = False) -> list[Any]:
        """The log's write: its replies, or the error each call ended in (as ``Nodes.run`` answers)."""
        if self.cut_off:
            return [RedisConnectionError("fuzz: cut off from Redis")] * len(calls)
        if not self.running.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.running.wait(), STALL_S)
        fault = "late" if not self.running.is_set() else self._draw(WRITE_FAULTS)
        if fault != "ok":
            self.log(f"{fault} write of {len(calls)}")
        if fault == "late":
            self.late.add(send)
            return [RedisTimeoutError("fuzz: write timed out (still on its way)")] * len(calls)
        try:
            replies = [await send()] if single else list(await send())
        except Exception as exc:  # as ``Nodes.run``: what ended the exchange ended every call
            replies = [exc] * len(calls)
        if fault == "answer_lost":
            return [RedisConnectionError("fuzz: write ran, its answer lost")] * len(calls)
        return replies

    async def mget(self, names: list[str]) -> Any:
        if not names[0].endswith(":lease"):  # not the routes' read (``Membership._read_routes``)
            return await self._stalled(lambda: self._mget(names), "read of owner keys")
        await self._gate()
        await self._read_fault("routes read")
        return await self._mget(names)

    async def get(self, name: str) -> Any:
        if not name.endswith(":owner"):  # not an epoch's draw (``GroupLeases._draw``): a recovery's read
            return await self._stalled(lambda: self._get(name), "recovery's read")
        await self._gate()
        await self._read_fault("owner key read")
        return await self._get(name)

    async def xrange(self, *args: Any, **kwargs: Any) -> Any:
        return await self._stalled(lambda: self._xrange(*args, **kwargs), "read of a log")

    async def _stalled(self, read: Callable[[], Any], what: str) -> Any:
        """A read outside ownership's calls: stalled while paused (see the module's text), else as it comes."""
        if self.cut_off:
            raise RedisConnectionError(f"fuzz: {what}: cut off from Redis")
        if self.running.is_set():
            return await read()
        stale = self.rng.random() < 0.5
        answer = asyncio.ensure_future(read()) if stale else None
        try:
            await asyncio.wait_for(self.running.wait(), STALL_S)
        except TimeoutError:
            if answer is not None:
                answer.add_done_callback(lambda t: t.cancelled() or t.exception())  # it goes nowhere
            self.log(f"{what} timed out, stalled")
            raise RedisTimeoutError(f"fuzz: {what} timed out (stalled)") from None
        self.log(f"{'stale ' if stale else ''}{what} after a stall")
        return await (answer if answer is not None else read())

    async def _read_fault(self, what: str) -> None:
        fault = self._draw(READ_FAULTS)
        if fault == "slow":
            await asyncio.sleep(self.rng.random() * SLOW_S)
        elif fault == "lost":
            raise RedisConnectionError(f"fuzz: {what} lost")

    async def _faulted(self, send: Callable[[], Any], what: str) -> Any:
        await self._gate()
        fault = self._draw(CALL_FAULTS)
        if fault != "ok":
            self.log(f"{fault} {what}")
        if fault == "slow":
            await asyncio.sleep(self.rng.random() * SLOW_S)
        elif fault == "lost":
            raise RedisConnectionError(f"fuzz: {what} lost before it reached Redis")
        elif fault == "late":
            self.late.add(send)
            raise RedisTimeoutError(f"fuzz: {what} timed out (still on its way)")
        reply = await send()
        if self.pause_at_taking and what.startswith("ACQUIRE") and int(reply) >= 0:
            self.pause_at_taking = False
            self.running.clear()
            self.log(f"paused as {what} was granted")
        if fault == "answer_lost":
            raise RedisConnectionError(f"fuzz: {what} ran, its answer lost")
        return reply
