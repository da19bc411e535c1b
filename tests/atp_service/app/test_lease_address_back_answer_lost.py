"""A process back at its advertised address after its member entry lapsed, another process registered there
meanwhile (``SharedAddressWatch``): the renewal that adds its entry anew may run in Redis with its answer lost
(a timeout, the connection dropped: likely just as Redis comes back within its reach). The next renewal only
renews the entry it re-added, and that renewal alone was told it was added anew: the process served on
beside the other at one address, calls forwarded there reaching either at random — what the stop is for."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service.app.membership import MEMBERS_SCRIPT
from atp_service.storage.nodes import Call
from tests.atp_service.app.test_processes import start_process
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name


async def test_a_process_back_at_a_taken_address_whose_re_registration_answer_was_lost_stops(
        start_process: ServiceFactory, redis_url: str) -> None:
    service, _ = await start_process(port=held_port(), host="127.0.0.1", lease_ms=1000)
    membership = service.membership
    assert membership is not None
    address, entry = membership.address, membership.leases.holder
    other = f"{address}|bbbbbbbbbbbb"  # the process started at this address while this one's entry had lapsed
    admin = aioredis.Redis.from_url(redis_url)
    nodes = membership._store.nodes
    run_one, lost = nodes.run_one, []

    async def re_registration_answer_lost(call: Call, extra_s: float = 0.0) -> Any:
        if call.script is not MEMBERS_SCRIPT or lost or call.args[1] == 0:
            return await run_one(call, extra_s)
        seconds, _ = await admin.time()
        await admin.zrem("atp:members", entry)  # lapsed (paused past a lease); the other registered meanwhile
        await admin.zadd("atp:members", {other: (seconds + 3600) * 1000})
        lost.append(await run_one(call, extra_s))  # this renewal adds the entry anew ...
        raise RedisConnectionError("answer lost")  # ... and is not told so

    nodes.run_one = re_registration_answer_lost  # type: ignore[method-assign]
    try:
        await until(lambda: bool(lost), "the renewal that added the entry anew ran, its answer lost")
        assert lost[0][0] == 1
        await until(service.failed.is_set, "the process back later at the address stopped", 10)
    finally:
        nodes.run_one = run_one  # type: ignore[method-assign]
        await admin.zrem("atp:members", other)
        await admin.aclose()
