"""Random turns of real ``Membership``s under faults of ownership's Redis calls.

Several leased services run in one process on one real Redis, their own renewal and balance loops
idle (leases and balance periods of minutes): the fuzzer runs their renewals and balances itself,
concurrently and in a random order, while each Redis call of ownership meets a fault drawn from the
seed (``ownership_faults``: slow, lost, landed with its answer lost, or landing late — after calls
sent since; the log's writes now and then in doubt too), processes pause past their leases (the
fuzzer lapses them, as Redis would) and run again, are cut off from Redis for good, stop gracefully
or join, and receipts and orders are sent through any of them. Then the faults stop, every late call
lands, paused processes run again, the leases of the gone lapse, and quiet rounds of renewals and
balances, until one changes nothing, must leave:

- every group served by exactly one live process, which holds its lease (the key names its holder)
  and whose taking the owner key names; no live process holding a group it does not serve;
- what was sent through them meanwhile as it must be (``fuzz_books``): receipts counted once (E8),
  orders across groups held whole or not at all, none acknowledged lost, nothing oversold;
- no error said by the service (a self-heal such as "free to take, yet served here" is a bug found).

Interleavings follow real I/O, so a failing seed may not replay exactly: a finding carries every live
process's view of each group (``describe``) and the seed's last log lines.

    python -m tests.atp_service.app.membership_fuzz [--seeds 20] [--first 0] [--steps 60]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.log import Fenced
from tests.atp_service.app.awaiting import awaiting, every_task_awaiting
from tests.atp_service.app.fuzz_books import Books
from tests.atp_service.app.ownership_faults import FaultyOwnership, LateCalls
from tests.conftest import test_config
from tests.ports import held_port

SHARDS = 6
MAX_LIVE = 4
QUIET_ROUNDS = 12
STOP_BOUND_S = 30.0
QUIET_BOUND_S = 60.0
"""How long the turns under way when the faults stop may take to end (liveness): past it, a wedge."""
ACTIONS = (("renew",) * 6 + ("balance",) * 6 + ("record",) * 3 + ("reserve",) * 3
           + ("pause", "thaw", "lapse", "cut", "stop", "join"))


@dataclass
class Proc:
    name: str
    service: AtpService
    client: AtpClient
    faults: FaultyOwnership
    state: str = "up"  # up | paused | cut | stopped
    balancing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one balance at a time, as its loop runs them
    turns: set[asyncio.Task[Any]] = field(default_factory=set)  # its balances under way or waiting (a stop's cancel)

    @property
    def membership(self) -> Any:
        assert self.service.membership is not None
        return self.service.membership


class Errors(logging.Handler):
    """Every ERROR said by the service while the fuzzer runs: a finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("atp_service"):
            cause = f" ({record.exc_info[1]!r})" if record.exc_info and record.exc_info[1] is not None else ""
            self.lines.append(f"{record.name}: {record.getMessage()}{cause}")


class Fuzz:
    def __init__(self, seed: int, redis_url: str, steps: int) -> None:
        self.rng = random.Random(seed)
        self.redis_url, self.steps = redis_url, steps
        self.late = LateCalls()
        self.procs: list[Proc] = []
        self.log: list[str] = []
        self.findings: list[str] = []
        self.work: set[asyncio.Task[None]] = set()
        self.books = Books(self.rng)
        self.calm = False
        self.joined = 0

    def say(self, line: str) -> None:
        self.log.append(line)

    def said_by(self, name: str, line: str) -> None:
        self.log.append(f"{name}: {line}")

    # -- the processes --------------------------------------------------------------------------
    async def join(self) -> Proc:
        name, self.joined = f"p{self.joined}", self.joined + 1  # before any await: joins run concurrently
        config = test_config(ownership="leases", lease_ms=600_000, balance_ms=200_000, shards=SHARDS,
                             input_streams=(), port=held_port(), host="127.0.0.1")
        service = AtpService(config, self.redis_url)
        await service.start()  # its first balance untouched by faults: a start waits for Redis anyway
        store = service._log
        assert store is not None
        faults = FaultyOwnership(store, self.rng, self.late, partial(self.said_by, name))
        faults.faults = not self.calm  # one that joins once the faults have stopped meets none
        proc = Proc(name, service, AtpClient(f"127.0.0.1:{service.port}"), faults)
        self.procs.append(proc)
        self.say(f"{name}: joined, holding {sorted(proc.membership.leases.held)}")
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.state in ("up", "paused")]

    # -- the chaos ------------------------------------------------------------------------------
    async def chaos(self) -> None:
        for step in range(self.steps):
            action = self.rng.choice(ACTIONS)
            procs = [p for p in self.procs if p.state in ("up", "paused")]
            if action == "join" and len(self.live()) < MAX_LIVE:
                self.spawn(self.join(), "join")
            elif procs:
                self.act(step, action, self.rng.choice(procs))
            if landed := self.late.land_some(self.rng):
                self.say(f"{landed} late call(s) landed")
            await asyncio.sleep(self.rng.random() * 0.01)

    def act(self, step: int, action: str, proc: Proc) -> None:
        self.say(f"step {step}: {action} {proc.name}")
        membership = proc.membership
        if action == "renew":
            self.spawn(membership.renew(), f"{proc.name} renew")
        elif action == "balance":
            self.spawn(self.balance(proc), f"{proc.name} balance")
        elif action == "record":
            self.spawn(self.books.record(proc.client), f"{proc.name} record")
        elif action == "reserve":
            self.spawn(self.books.reserve(proc.client), f"{proc.name} reserve")
        elif action == "pause" and proc.state == "up":
            proc.state = "paused"
            proc.faults.pause(at_taking=self.rng.random() < 0.5)
        elif action == "thaw" and proc.state == "paused":
            proc.state = "up"
            proc.faults.thaw()
        elif action == "lapse" and proc.state == "paused":
            self.spawn(self.lapse(proc), f"{proc.name} leases lapse")
        elif action == "cut" and len(self.live()) > 1:
            proc.state = "cut"
            proc.faults.cut()
            self.spawn(self.lapse(proc), f"{proc.name} leases lapse")
        elif action == "stop" and len(self.live()) > 1 and proc.state == "up":
            proc.state = "stopped"
            self.spawn(self.stop_one(proc), f"{proc.name} stop")

    async def balance(self, proc: Proc) -> None:
        turn = asyncio.current_task()
        assert turn is not None
        proc.turns.add(turn)
        try:
            async with proc.balancing:
                await proc.membership.balance()
        finally:
            proc.turns.discard(turn)

    async def stop_one(self, proc: Proc) -> None:
        """A graceful stop, as ``Membership.stop`` runs one: the balance under way (here the fuzzer's, its
        own loop idle) cancelled first — a taking cut short, its ACQUIRE perhaps granted — then the stop."""
        turns = set(proc.turns)
        for turn in turns:
            turn.cancel()
        if turns:
            self.say(f"{proc.name}: its stop cancelled {len(turns)} balance(s)")
            await asyncio.wait(turns)
        await proc.service.stop(grace_s=0.1)

    async def lapse(self, proc: Proc) -> None:
        """``proc``'s leases and member entry run out, as in Redis when it renews none for a lease."""
        membership = proc.membership
        r = aredis.Redis.from_url(self.redis_url)
        try:
            keys = [membership.leases.key(g) for g in range(SHARDS)]
            holder = membership.leases.holder.encode()
            for key, value in zip(keys, await r.mget(keys), strict=True):
                if value == holder:
                    await r.delete(key)
            await r.zrem(proc.service._log.keys.members, membership._entry)  # type: ignore[union-attr]
        finally:
            await r.aclose()

    def spawn(self, work: Any, what: str) -> None:
        async def run() -> None:
            try:
                await work
            except (*STORAGE_ERRORS, Fenced):
                pass  # tried again at the next turn, as the loops do
            except Exception as exc:  # a finding, named
                self.findings.append(f"{what} raised {exc!r}")

        task = asyncio.get_running_loop().create_task(run(), name=what)  # named: a wedge's finding says which
        self.work.add(task)
        task.add_done_callback(self.work.discard)

    # -- the quiet -------------------------------------------------------------------------------
    async def quiet(self) -> None:
        self.calm = True
        for proc in self.procs:
            proc.faults.faults = False
            if proc.state == "paused":
                proc.state = "up"
                proc.faults.thaw()
        await self.late.land_all()
        _, pending = await asyncio.wait(self.work, timeout=QUIET_BOUND_S) if self.work else (set(), set())
        if pending:
            states = "; ".join(f"{p.name} {p.state}: {p.faults.describe()}" for p in self.procs)
            finding = (f"{len(pending)} turns still running {QUIET_BOUND_S:.0f} s after the faults ended (wedged; "
                       f"{states}); where each waits:\n" + "\n".join(awaiting(turn) for turn in pending))
            print(f"{finding}\nevery task:\n{every_task_awaiting()}", flush=True)
            self.findings.append(finding)
            return
        for proc in self.procs:
            if proc.state in ("cut", "stopped"):
                await self.lapse(proc)
        before: dict[str, list[int]] = {}
        for _ in range(QUIET_ROUNDS):  # until a round changes nothing: every route read is current then
            # A round none of whose renewals and balances failed: one not answered within redis_timeout_s (a loaded
            # host) read no routes, and a process's routes stale past the last taking refused the check's reads
            # GROUP_MOVED "owned by no process" until its own balance (200 s here): "positions unreadable".
            answered = True
            for proc in self.live():
                try:
                    answered = not await proc.membership.renew() and answered
                    await self.balance(proc)
                except (*STORAGE_ERRORS, Fenced):
                    answered = False
            await asyncio.gather(*(t for p in self.live() for t in p.membership._work), return_exceptions=True)
            held = {p.name: sorted(p.membership.leases.held) for p in self.live()}
            if answered and held == before and not await self.ownership_problems():
                return
            before = held
        self.findings += await self.ownership_problems() or [f"still taking and handing over: {before}"]

    def describe(self) -> str:
        """Each live process's view of every group, for a finding: held, served, its lease deadline here,
        being handed over or given up, its route."""
        now, views = time.monotonic(), []
        for proc in self.live():
            m, engine = proc.membership, proc.service.engine
            assert engine is not None
            views.append(f"{proc.name}@{m.address}: " + ", ".join(
                f"g{g}[held={g in m.leases.held} served={not engine.actors[g].vacant} "
                f"lease_in={engine.actors[g].lease_until - now:.0f}s handing={g in m._handing} "
                f"vacating={g in m._vacating} route={m.routes.get(g)} where={m.where(g)}]" for g in range(SHARDS)))
        return "; ".join(views)

    async def ownership_problems(self) -> list[str]:
        problems = []
        r = aredis.Redis.from_url(self.redis_url)
        try:
            for group in range(SHARDS):
                serving = [p for p in self.live() if not p.service.engine.actors[group].vacant]  # type: ignore[union-attr]
                if len(serving) != 1:
                    problems.append(f"group {group} served by {[p.name for p in serving]}")
                    continue
                proc, = serving
                leases = proc.membership.leases
                lease, owner = await r.mget([leases.key(group), proc.service._log.keys.owner(group)])  # type: ignore[union-attr]
                if group not in leases.held or lease != leases.holder.encode() or owner != leases.held[group].encode():
                    problems.append(f"group {group} served by {proc.name}: held {group in leases.held}, lease "
                                    f"{lease!r}, owner key {owner!r}")
            for proc in self.live():
                unserved = [g for g in proc.membership.leases.held if proc.service.engine.actors[g].vacant]  # type: ignore[union-attr]
                if unserved:
                    problems.append(f"{proc.name} holds {unserved} without serving them")
        finally:
            await r.aclose()
        return problems

    async def stop(self) -> None:
        """Every process stopped, once what is checked was: one cut off reaches Redis again first (else its
        stop waits out each shard's drain and hand-over, bounded but long; other tests time that). A stop
        that does not end in ``STOP_BOUND_S`` is a finding (a wedge), with where every task then waited."""
        for proc in self.procs:
            proc.faults.faults, proc.faults.cut_off = False, False
            await proc.client.close()
            if proc.state != "stopped":
                stopping = asyncio.ensure_future(proc.service.stop(grace_s=0.1))
                done, _ = await asyncio.wait((stopping,), timeout=STOP_BOUND_S)
                if not done:
                    finding = (f"{proc.name}'s stop still running after {STOP_BOUND_S:.0f} s "
                               f"({proc.faults.describe()}); tasks:\n{every_task_awaiting()}")
                    print(finding, flush=True)  # before the wait: a wedge for good hangs the run there
                    self.findings.append(finding)
                    await stopping


async def run(seed: int, redis_url: str, steps: int = 60) -> tuple[list[str], list[str]]:
    """One seed: (findings, its log)."""
    errors = Errors()
    logging.getLogger().addHandler(errors)
    fuzz = Fuzz(seed, redis_url, steps)
    try:
        for _ in range(3):
            await fuzz.join()
        await fuzz.chaos()
        await fuzz.quiet()
        if not fuzz.findings:
            fuzz.findings += await fuzz.books.check(fuzz.live()[0].client)
            if fuzz.findings:
                fuzz.findings.append(fuzz.describe())
    finally:
        logging.getLogger().removeHandler(errors)
        await fuzz.stop()
    return fuzz.findings + [f"said: {line}" for line in errors.lines], fuzz.log


async def _main(seeds: int, first: int, steps: int) -> int:
    bad = 0
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="membership-fuzz-")), appendfsync="always").start()
    try:
        for seed in range(first, first + seeds):
            client = aredis.Redis.from_url(server.url)
            await client.flushall()
            await client.aclose()
            findings, log = await run(seed, server.url, steps)
            print(f"seed {seed}: {findings or 'ok'}", flush=True)
            if findings:
                bad += 1
                print("\n".join(log[-60:]))
    finally:
        server.stop()
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(_main(args.seeds, args.first, args.steps)))
