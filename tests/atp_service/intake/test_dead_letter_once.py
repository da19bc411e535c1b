"""An entry refused into the dead-letter stream is written there once: its dead letter and its
acknowledgement land together, so a reader cut off between them does not read it again and write a
second dead letter (each counted, each replayed by an operator)."""

from __future__ import annotations

import time

import redis

from atp_service import AtpService, EmbeddedRedis
from tests.atp_service.fact_helpers import F, dead_lettered, wait_consumed
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import until

XACK_COMMAND = b"$4\r\nXACK\r\n"
"""An XACK sent as a command of its own (its name as a RESP argument, not a word in a script)."""


async def test_an_entry_whose_acknowledgement_is_lost_after_its_dead_letter_is_dead_lettered_once(
        redis_server: EmbeddedRedis, redis_url: str) -> None:  # redis_url: a clean keyspace
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    service = AtpService(make_config(), await proxy.start())
    await service.start()
    r = redis.Redis.from_url(redis_url)
    try:
        proxy.hold(XACK_COMMAND, reset=True)  # the reader's connection reset as an XACK goes out
        entry_id = r.xadd("atp:in:pos", {**F("d1", "SALE", "A", "S1", 1, int(time.time() * 1000)).fields(),
                                         "quantity": "two"})

        def dead_lettered_and_acknowledged_or_cut() -> bool:
            return bool(proxy.held) or (r.xlen("atp:dlq") > 0 and r.xpending("atp:in:pos", "atp")["pending"] == 0)

        await until(dead_lettered_and_acknowledged_or_cut, "the entry dead-lettered, or its XACK cut off")
        proxy.hold()
        proxy.drop()
        await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=30)
        dead = r.xrange("atp:dlq")
        assert [(fields[b"_id"], fields[b"_code"]) for _, fields in dead] == [(entry_id, b"INVALID_FIELD")]
        await until(lambda: dead_lettered(service, "atp:in:pos") >= 1, "the dead letter counted")
        assert dead_lettered(service, "atp:in:pos") == 1
    finally:
        r.close()
        await service.stop(grace_s=0.1)
        await proxy.close()


async def test_an_entry_of_thousands_of_small_fields_is_dead_lettered_cut_short(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Under ``ingest_max_entry_bytes`` in bytes and in names and values, but more of them than one XADD
    inside a script takes (Lua's stack): its dead letter is cut short, not refused for good (the entry
    pending, read again and refused again on every pass)."""
    service, _ = await start_service()
    r = redis.Redis.from_url(redis_url)
    try:
        fact = F("d2", "SALE", "A", "S1", 1, int(time.time() * 1000)).fields()
        flat = [part for name, value in fact.items() for part in (name, str(value))] + ["x", "1"] * 5_000
        entry_id = r.execute_command("XADD", "atp:in:pos", "*", *flat)  # 10,000 bytes: under the limit
        await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=30)
        [(_, letter)] = r.xrange("atp:dlq")
        assert letter[b"_id"] == entry_id and int(letter[b"_truncated"]) > 0
        await until(lambda: dead_lettered(service, "atp:in:pos") >= 1, "the dead letter counted")
        assert dead_lettered(service, "atp:in:pos") == 1
    finally:
        r.close()
