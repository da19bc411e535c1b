"""A group whose recovery fails for good (``ownership = leases``): its snapshot from a newer format, damaged, its
log cut short. Each process gives it back at every taking and says so once a minute (``handing.NotRecovered``);
the other groups are this process's to serve all the same."""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

import pytest
import redis.asyncio as aredis
from grpc_health.v1 import health_pb2

from atp_client import Retryable
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.app import membership
from atp_service.engine.recovery import recover_shard
from atp_service.storage.records import SNAPSHOT_MAGIC
from tests.atp_service.app.test_health_truth import health
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

SHARDS = 4


def owned(service: AtpService) -> set[int]:
    assert service.membership is not None and service.engine is not None
    return {g for g in service.membership.leases.held if not service.engine.actors[g].vacant}


async def snapshot_unreadable(start: ServiceFactory, redis_url: str, group: int) -> list[str]:
    """Every group stocked (a SKU each, 5 units at DC) by a first process, stopped (every group handed over:
    snapshotted), then ``group``'s snapshot from a newer format (a rollback): this version reads format 1.
    Each group's SKU, in group order."""
    first, client = await start(port=held_port(), host="127.0.0.1")
    skus = [next(s for s in (f"k{i}" for i in range(256)) if zlib.crc32(s.encode()) % SHARDS == g)
            for g in range(SHARDS)]
    facts = [receipt(f"in-{g}", sku, "DC", 5) for g, sku in enumerate(skus)]
    assert {f.outcome for f in await client.record_events(facts)} == {pb.FACT_OUTCOME_APPLIED}
    await first.stop(grace_s=0.1)  # every group handed over: snapshotted, its lease given back
    r = aredis.Redis.from_url(redis_url)
    try:
        assert await r.exists(f"atp:{{g{group}}}:snap")
        await r.set(f"atp:{{g{group}}}:snap", SNAPSHOT_MAGIC + b"\x02" + b"\0" * 8)  # format 2
    finally:
        await r.aclose()
    return skus


async def test_a_group_whose_snapshot_cannot_be_read_leaves_the_start_serving_the_other_groups(
        redis_url: str) -> None:
    """One group's snapshot from a newer format (a rollback): the first balance raised its ``SnapshotUnreadable``
    out of the start — ``atp-service serve`` exited 1 to be restarted, and failed alike at every restart — so no
    group was served by any process that started while it lasted, though every other group's log was sound."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        skus = await snapshot_unreadable(start, redis_url, 0)
        service, client = await start(port=held_port(), host="127.0.0.1")
        assert owned(service) == set(range(1, SHARDS))
        assert [p.on_hand for p in await client.availability([(sku, "DC") for sku in skus[1:]])] == [5, 5, 5]
        assert await health(service.port) == health_pb2.HealthCheckResponse.SERVING


async def test_a_group_no_process_can_recover_is_counted_and_shown_served_by_none(redis_url: str) -> None:
    """The same group refused at every taking: said at ERROR once a minute, but no metric counted it, and a
    process whose only free groups are refused reported SERVING with 0 groups, ``atp_groups_owned`` summing to
    less than the groups with no alert on it: an operator's dashboard showed nothing. Each failed recovery is
    counted by why (``atp_group_recoveries_failed_total{reason="data"}``), and the groups no process holds
    (``atp_groups_free``) stay above 0 while it lasts: alert ATPGroupsUnserved."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        await snapshot_unreadable(start, redis_url, 2)
        service, _client = await start(port=held_port(), host="127.0.0.1")
        assert owned(service) == {0, 1, 3}
        samples = service.metrics.registry

        def failed(reason: str) -> float | None:
            return samples.get_sample_value("atp_group_recoveries_failed_total", {"reason": reason})

        assert (failed("data") or 0) >= 1 and (failed("redis"), failed("bug")) == (0, 0)
        await until(lambda: samples.get_sample_value("atp_groups_free") == 1, "a balance read group 2 free", 30)


async def test_a_bug_in_one_groups_recovery_leaves_the_start_serving_the_other_groups(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A group's recovery failing with anything but Redis's refusal or its data's (a bug, here in the code that
    reads it): raised out of the balance before the free groups after it were tried — out of the start, which
    ended (exit 1, restarted into the same bug), so no group was served. Said at ERROR with its traceback and
    counted (``atp_group_recoveries_failed_total{reason="bug"}``), given back; the others are served."""

    async def recovered(store: Any, group: int, limits: Any) -> Any:
        if group == 1:
            raise ZeroDivisionError("a bug in group 1's recovery")
        return await recover_shard(store, group, limits)

    monkeypatch.setattr(membership, "recover_shard", recovered)
    caplog.set_level(logging.ERROR, logger="atp_service")
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        service, _client = await start(port=held_port(), host="127.0.0.1")
        assert owned(service) == {0, 2, 3}
        assert await health(service.port) == health_pb2.HealthCheckResponse.SERVING
        bugs = service.metrics.registry.get_sample_value("atp_group_recoveries_failed_total", {"reason": "bug"})
        assert (bugs or 0) >= 1
        said = [r for r in caplog.records if getattr(r, "group", None) == 1]
        assert said and said[0].levelno == logging.ERROR and said[0].exc_info is not None


async def test_a_bug_installing_a_group_taken_gives_it_back_never_held_with_nothing_serving_it(
        redis_url: str) -> None:
    """A bug past the group's recovery, as it is installed (here in a hook of the engine's ``on_install``, which
    comes before the actor is started): raised out of the taking with its lease kept — held and renewed, the actor
    in place but never started, so every call for its SKUs waited out its deadline, no other process could take
    it, and ``atp_groups_free`` (ATPGroupsUnserved) did not count it. Given back as a failed recovery is (counted
    ``reason="bug"``), it is taken again at a later balance and served."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        service, client = await start(port=held_port(), host="127.0.0.1")
        assert service.membership is not None and service.engine is not None
        assert owned(service) == set(range(SHARDS))
        bugs: list[int] = []

        def hook(actor: Any) -> None:
            if actor.shard == 1 and not bugs:
                bugs.append(actor.shard)
                raise ZeroDivisionError("a bug installing group 1")

        service.engine.on_install.insert(0, hook)
        service.membership.failed(service.engine.actors[1])  # given up: taken again by the next balance
        await until(lambda: bugs, "group 1 taken again, its install failing", 30)
        sku = next(s for s in (f"k{i}" for i in range(256)) if zlib.crc32(s.encode()) % SHARDS == 1)

        async def served() -> list[Any]:
            while True:  # between owners a moment (given back, taken again): told GROUP_MOVED, retried
                try:
                    return list(await client.record_events([receipt("in-1", sku, "DC", 5)]))
                except Retryable as exc:
                    assert exc.reason == "GROUP_MOVED", exc
                await asyncio.sleep(0.1)

        outcomes = await asyncio.wait_for(served(), 20)  # held and never started: DEADLINE_EXCEEDED
        assert [f.outcome for f in outcomes] == [pb.FACT_OUTCOME_APPLIED]
        bugs_counted = service.metrics.registry.get_sample_value("atp_group_recoveries_failed_total",
                                                                 {"reason": "bug"})
        assert (bugs_counted or 0) >= 1
