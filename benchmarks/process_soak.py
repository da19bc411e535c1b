"""Faults against several service processes sharing one keyspace on a Redis Cluster
(``ownership = leases``), then a check that they kept every promise together.

    python benchmarks/process_soak.py [--seconds 60] [--processes 3] [--shards 12] [--lease-ms 1000] [--seed 1]
        [--scarce-stock 100]
    make soak SECONDS=300

It starts a Redis Cluster (3 primaries with a replica each) and ``--processes`` service processes
on one keyspace, acknowledging after one replica (``ATP_REDIS_WAIT_REPLICAS=1``). For --seconds
callers send single-SKU Reserves and orders over two groups (often of different processes),
Confirms and Releases, with deadlines from 5 ms to 2 s — half through ``RoutedClient`` (each call
to its group's owner), half to a random process (which forwards) — while faults come one after
another (seeded): ``kill`` (kill -9 of a process, restarted), ``pause`` (SIGSTOP for twice the
lease, then SIGCONT: fenced, its groups taken), ``stop`` (SIGTERM: its groups handed over; then
started again) and ``primary`` (kill -9 of a Redis primary). After each kill it measures the time
until every group answers again. Then, every fault off:

  every process lives and every group answers at some process (liveness); every acknowledged
  reservation is there in its acknowledged state or a successor (R3, R7); every order holds all
  its lines or none (R2); reserved and committed per position equal what the reservations hold,
  and no position holds more than it has: the units of the acknowledged reservations that still
  hold them are no more than the stock the soak seeded, and ``on_hand`` is that stock (R2, Q1).
  Half the SKUs have ``--scarce-stock`` units, which the callers sell out within seconds (the
  figures' ``scarce_sold_out``: SKUs a Reserve was refused for want of stock), so a Reserve beyond
  the stock is asked for and an oversell can be found; the other half have a million, so holds,
  Confirms and Releases go on all run long.

Prints one JSON line of figures (``refusals``: of the calls given 2 s; ``refusals_short_deadline``: of those
given 5 or 50 ms, cut short on purpose); each violation is a ``violation: ...`` line on stderr, and the
exit status is 1 if there was any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient, RoutedClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_cluster import EmbeddedCluster
from benchmarks.ports import held_port
from benchmarks.soak_faults import ServiceProcess
from benchmarks.throughput import serve_command

ROOT = Path(__file__).resolve().parent.parent
AMPLE = 1_000_000
SKUS = [f"sku-{i:03d}" for i in range(48)]
SCARCE = frozenset(SKUS[::2])
"""SKUs seeded with ``--scarce-stock`` units, the others with ``AMPLE``."""
LOC = "dc-1"
DEADLINES = (0.005, 0.05, 2.0, 2.0)
"""Each call's deadline, one drawn per Reserve (its Confirm or Release too)."""
SHORT_DEADLINES = frozenset({0.005, 0.05})
"""Deadlines the callers give themselves to be cut short (R8): their refusals, DEADLINE_EXCEEDED most, are tallied
apart (``refusals_short_deadline``), so one of a call given 2 s (``refusals``) is a real wait, not lost among them."""
FAULTS = ("kill", "pause", "stop", "primary")
WEIGHTS = (3, 2, 2, 1)
HELD, CONFIRMED = pb.RESERVATION_STATE_HELD, pb.RESERVATION_STATE_CONFIRMED
SUCCESSORS: dict[int, set[int]] = {HELD: {HELD, CONFIRMED, pb.RESERVATION_STATE_RELEASED, pb.RESERVATION_STATE_EXPIRED,
                     pb.RESERVATION_STATE_FULFILLED},
              CONFIRMED: {CONFIRMED, pb.RESERVATION_STATE_RELEASED, pb.RESERVATION_STATE_FULFILLED}}


class Fleet:
    """The service processes of the keyspace, each a supervised child with a fixed port."""

    def __init__(self, cluster_url: str, args: argparse.Namespace, work: Path) -> None:
        env = {**os.environ, "ATP_REDIS_CLUSTER": "true", "ATP_INPUT_STREAMS": "", "ATP_REDIS_WAIT_REPLICAS": "1"}
        self.processes = []
        for n in range(args.processes):
            port = held_port()
            cmd = serve_command(cluster_url, port, -1, "--host", "127.0.0.1", "--shards", str(args.shards),
                                "--ownership", "leases", "--lease-ms", str(args.lease_ms),
                                "--log-level", args.log_level)
            self.processes.append(ServiceProcess(cmd, env, work / f"service-{n}.log", port, ROOT))

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p.port}" for p in self.processes]

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.processes))

    async def stop(self) -> None:
        for p in self.processes:
            if p.proc is not None and p.proc.returncode is None:
                p.proc.send_signal(signal.SIGCONT)
            await p.stop(30)


class Faults:
    def __init__(self, rng: random.Random, fleet: Fleet, cluster: EmbeddedCluster, lease_s: float) -> None:
        self.rng, self.fleet, self.cluster, self.lease_s = rng, fleet, cluster, lease_s
        self.counts: Counter[str] = Counter()
        self.takeover_s: list[float] = []

    async def run(self, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            kind = self.rng.choices(FAULTS, WEIGHTS)[0]
            await getattr(self, kind)(self.rng.choice(self.fleet.processes))
            self.counts[kind] += 1

    async def kill(self, victim: ServiceProcess) -> None:
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        await victim.proc.wait()
        killed_at = time.monotonic()
        others = [a for p, a in zip(self.fleet.processes, self.fleet.addresses, strict=True) if p is not victim]
        await every_group_answers(others)
        self.takeover_s.append(time.monotonic() - killed_at)
        await victim.start()

    async def pause(self, victim: ServiceProcess) -> None:
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(self.lease_s * 2)
        victim.proc.send_signal(signal.SIGCONT)

    async def stop(self, victim: ServiceProcess) -> None:
        await victim.stop(30)
        await victim.start()

    async def primary(self, _victim: ServiceProcess) -> None:
        node = self.rng.choice(await asyncio.to_thread(self.cluster.serving_primaries))
        await asyncio.to_thread(self.cluster.fail_over, node)


class Anywhere:
    """Reads of a position at whichever process answers for its group now."""

    def __init__(self, addresses: list[str]) -> None:
        self.clients = [AtpClient(a, timeout_s=2) for a in addresses]
        self.refusals: dict[str, list[str]] = {}
        """Per SKU, what each process answered at the last try that found it nowhere."""

    async def position(self, sku: str) -> pb.Availability | None:
        refused = []
        for client in self.clients:
            try:
                (p,) = await client.availability([(sku, LOC)])
            except grpc.aio.AioRpcError as exc:
                refused.append(f"{client.target}: {exc.code().name} {getattr(exc, 'reason', '')}".strip())
                continue
            return p
        self.refusals[sku] = refused
        return None

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


async def every_group_answers(addresses: list[str], within_s: float = 120.0) -> dict[str, pb.Availability]:
    """Every SKU's position, once its group answers a read at one of ``addresses`` (liveness)."""
    deadline = time.monotonic() + within_s
    reader = Anywhere(addresses)
    found: dict[str, pb.Availability] = {}
    try:
        while len(found) < len(SKUS):
            for sku in SKUS:
                if sku not in found and (p := await reader.position(sku)) is not None:
                    found[sku] = p
            if len(found) < len(SKUS):
                if time.monotonic() > deadline:
                    missing = sorted(set(SKUS) - set(found))
                    raise AssertionError(f"groups of {missing[:3]}... answered nowhere in {within_s}s; the last "
                                         f"answers for {missing[0]}: {reader.refusals.get(missing[0])}")
                await asyncio.sleep(0.05)
    finally:
        await reader.close()
    return found


class Load:
    """Callers keeping a book of what they tried and what was acknowledged."""

    def __init__(self, rng: random.Random, addresses: list[str]) -> None:
        self.rng, self.addresses = rng, addresses
        self.tried: dict[str, list[tuple[str, str, int]]] = {}
        self.acked: dict[str, int] = {}
        self.errors: Counter[str] = Counter()
        """Refusals of the calls with a normal deadline: a DEADLINE_EXCEEDED here waited it whole."""
        self.errors_short: Counter[str] = Counter()
        """Refusals of the calls given one of ``SHORT_DEADLINES``."""
        self.refused_for_stock: set[str] = set()
        """SKUs of a line a Reserve was refused for (INSUFFICIENT): sold out when it was decided."""

    async def caller(self, n: int, stop_at: float) -> None:
        routed = n % 2 == 0
        client: Any = RoutedClient(self.addresses, timeout_s=2) if routed else \
            AtpClient(self.rng.choice(self.addresses), timeout_s=2)
        try:
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                await self._one(client, f"c{n}-{i}")
        finally:
            await client.close()

    async def _one(self, client: Any, rid: str) -> None:
        client.timeout_s = self.rng.choice(DEADLINES)
        skus = self.rng.sample(SKUS, self.rng.choice((1, 1, 2)))
        lines = [(sku, LOC, self.rng.randint(1, 3)) for sku in skus]
        self.tried[rid] = lines
        try:
            answer = await client.reserve(rid, lines, ttl_seconds=3600)
            self.acked[rid] = answer.state
            self.refused_for_stock.update(line.sku for line in answer.lines
                                          if line.outcome == pb.LINE_OUTCOME_INSUFFICIENT)
            if self.acked[rid] == HELD and self.rng.random() < 0.5:
                change = client.confirm if self.rng.random() < 0.6 else client.release
                self.acked[rid] = (await change(rid)).state
        except grpc.aio.AioRpcError as exc:
            tally = self.errors_short if client.timeout_s in SHORT_DEADLINES else self.errors
            tally[f"{exc.code().name} {getattr(exc, 'reason', '')}".strip()] += 1
            await asyncio.sleep(0.05)  # a refused caller backs off a little, as a client's retry policy would


async def check(load: Load, addresses: list[str], stock: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """Violations of the promises, and what was found."""
    violations: list[str] = []
    held: Counter[str] = Counter()
    committed: Counter[str] = Counter()
    promised: Counter[str] = Counter()  # units of the reservations acknowledged to the callers that hold them now
    found = 0
    async with RoutedClient(addresses, timeout_s=10) as client:
        for rid in load.tried:
            rec = await _settled(client, rid)
            if rec is None:
                if rid in load.acked:
                    violations.append(f"acknowledged {rid} lost")
                continue
            found += 1
            if rid in load.acked and rec.state not in SUCCESSORS.get(load.acked[rid], {load.acked[rid]}):
                violations.append(f"{rid}: acknowledged {load.acked[rid]}, now {rec.state}")
            if rid in load.acked and rec.state in (HELD, CONFIRMED):  # the lines asked for, not the service's word
                for sku, _loc, quantity in load.tried[rid]:
                    promised[sku] += quantity
            holding = [line.held + line.committed > 0 for line in rec.lines]
            if any(holding) and not all(holding):
                violations.append(f"{rid} holds in part (R2): {list(rec.lines)}")
            for line in rec.lines:
                held[line.sku] += line.held
                committed[line.sku] += line.committed
    positions = await every_group_answers(addresses)
    for sku, p in positions.items():
        if (p.reserved, p.committed) != (held[sku], committed[sku]) or p.available < 0:
            violations.append(f"{sku}: reserved/committed {p.reserved}/{p.committed}, the reservations hold "
                              f"{held[sku]}/{committed[sku]}; available {p.available}")
        if promised[sku] > stock[sku] or p.on_hand != stock[sku]:  # R2: nothing ships here, on_hand stays the seed
            violations.append(f"{sku} oversold: acknowledged reservations hold {promised[sku]} units of the "
                              f"{stock[sku]} seeded; on_hand {p.on_hand}")
    return violations, {"reservations_found": found}


async def _settled(client: RoutedClient, rid: str) -> pb.Reservation | None:
    last: grpc.aio.AioRpcError | None = None
    for _ in range(200):
        try:
            return await client.get_reservation(rid)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            last = exc
            await asyncio.sleep(0.1)
    raise AssertionError(f"{rid}: no process answered for it ({last!r})")


async def seed(address: str, stock: dict[str, int]) -> None:
    """Each SKU's stock, as a RECEIPT stamped a second ago (one without a time is refused, E7), every fact applied:
    a soak on stock that never arrived refuses every Reserve and checks nothing."""
    at = timestamp(int(time.time() * 1000) - 1000)
    facts = [pb.Fact(event_id=f"in-{s}", source="wms", kind=pb.FACT_KIND_RECEIPT, sku=s, location=LOC,
                     quantity=stock[s], event_time=at) for s in SKUS]
    async with AtpClient(address, timeout_s=30) as seeder:  # split by owner
        for attempt in range(100):  # a group still being balanced between the processes: sent again (E8)
            try:
                results = await seeder.record_events(facts)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 99:
                    raise
                await asyncio.sleep(0.1)
    # DUPLICATE: applied by a try before, answered UNAVAILABLE as a whole (one owner of the split not answering) (E8)
    refused = [r for r in results if r.outcome not in (pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_DUPLICATE)]
    if refused:
        raise RuntimeError(f"the stock was not seeded: {refused[0]}")


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    stock = {sku: args.scarce_stock if sku in SCARCE else AMPLE for sku in SKUS}
    with EmbeddedCluster(work / "cluster", primaries=3, replicas=1) as cluster:
        fleet = Fleet(cluster.url, args, work)
        await fleet.start()
        try:
            await every_group_answers(fleet.addresses)
            await seed(fleet.addresses[0], stock)
            load, faults = Load(rng, fleet.addresses), Faults(rng, fleet, cluster, args.lease_ms / 1000)
            stop_at = time.monotonic() + args.seconds
            await asyncio.gather(faults.run(stop_at), *(load.caller(n, stop_at) for n in range(args.callers)))
            await every_group_answers(fleet.addresses)
            dead = [p.port for p in fleet.processes if p.proc is None or p.proc.returncode is not None]
            violations, found = await check(load, fleet.addresses, stock)
            violations += [f"process on port {port} exited" for port in dead]
        finally:
            await fleet.stop()
    takeovers = faults.takeover_s
    return {"processes": args.processes, "shards": args.shards, "lease_ms": args.lease_ms, "seconds": args.seconds,
            "faults": dict(faults.counts), "tried": len(load.tried), "acknowledged": len(load.acked), **found,
            "refusals": dict(load.errors), "refusals_short_deadline": dict(load.errors_short),
            "scarce_sold_out": len(SCARCE & load.refused_for_stock),
            "takeover_s_median": round(statistics.median(takeovers), 2) if takeovers else None,
            "takeover_s_max": round(max(takeovers), 2) if takeovers else None,
            "violations": len(violations), "_violations": violations}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--shards", type=int, default=12)
    p.add_argument("--lease-ms", type=int, default=1000)
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scarce-stock", type=int, default=100, help="units of each of half the SKUs (sold out within "
                   "seconds: the oversell check is tested only where a Reserve was refused for want of stock)")
    p.add_argument("--log-level", default="WARNING", help="the processes' (INFO: every group taken, handed over)")
    p.add_argument("--work", type=Path, help="keep the processes' logs here (default: a temporary directory, kept "
                   "only when the run fails)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="atp-process-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        figures = asyncio.run(run(args, work))
    except BaseException:  # a liveness check that gave up, a process that would not start: the logs say why
        print(f"the processes' logs are kept in {work}", file=sys.stderr)
        raise
    if figures["violations"]:
        print(f"the processes' logs are kept in {work}", file=sys.stderr)
    elif args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    for violation in figures.pop("_violations"):
        print(f"violation: {violation}", file=sys.stderr)
    print(json.dumps(figures))
    sys.exit(1 if figures["violations"] else 0)


if __name__ == "__main__":
    main()
