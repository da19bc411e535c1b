"""Reads of the input streams Redis refuses for a reason waiting does not cure (``read_refusals.ReadRefusals``),
against a real redis-server and a real service: said once as an error past ``ingest_read_refusals_max``, the gauge
set while it lasts, reads resumed without a restart once the cause is gone, each fact applied once; and a Redis
user's ACL denial told as one however Redis words it (``resp.lasting_refusal``: 7.0 says ``ERR The user executing
the script can't ...`` inside a script, 7.2 and later ``NOPERM``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service import AtpService
from atp_service.intake.again import read_pending
from atp_service.intake.unread import made_again_key, refused_letters_key, trimmed_unread_key
from atp_service.storage.resp import lasting_refusal
from tests.atp_service.app.test_redis_permissions import PASSWORD, USER, as_user
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import until

POS, WMS, GROUP = "atp:in:pos", "atp:in:wms", "atp"


def _events(caplog: Any, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.__dict__.get("event") == event]


def _gauge(service: AtpService) -> float:
    return float(service.metrics.intake.ingest_read_refused.collect()[0].samples[0].value)


async def test_a_mark_of_another_type_refusing_every_read_is_said_once_and_reads_resume_once_it_is_gone(
        start_service: ServiceFactory, redis_url: str, caplog: Any) -> None:
    """A key of another type where a stream's made-again mark belongs refuses every read (WRONGTYPE): the reader
    logged ``ingest_read_failed`` at growing waits for good and nothing said it would never pass. Now the third
    refusal in a row of the reads of new entries is said once as an error naming its kind (the passes over the pending
    entries, tried between them and refused alike, are counted and said on their own), ``atp_ingest_read_refused`` is
    1 meanwhile; the key deleted, the reads go on unrestarted, each refusal said is said to be over, the gauge is 0
    again, and the fact written meanwhile is applied once."""
    now = int(time.time() * 1000)
    async with aioredis.Redis.from_url(redis_url) as r:
        service, client = await start_service(ingest_read_refusals_max=3, ingest_block_ms=20)
        with caplog.at_level(logging.WARNING):
            await r.hset(made_again_key(POS, GROUP), mapping={"an": "operator's hash"})
            await r.xadd(POS, F("p1", "RECEIPT", "A", "S1", 4, now - 100).fields())
            await until(lambda: "new" in _said(caplog, "ingest_read_refused"), "the new reads' refusal said", 60)
            said = _events(caplog, "ingest_read_refused")
            assert {(one.levelname, one.__dict__["refusal"]) for one in said} == {("ERROR", "wrong_type")}
            assert len(said) == len(set(_said(caplog, "ingest_read_refused"))) <= 2  # each said once
            assert _gauge(service) == 1
            assert (await client.availability([("A", "S1")]))[0].on_hand == 0
            await r.delete(made_again_key(POS, GROUP))
            await wait_consumed(redis_url, [POS], timeout_s=30)
            await until(lambda: _said(caplog, "ingest_read_resumed") == _said(caplog, "ingest_read_refused")
                        and _gauge(service) == 0, "each refusal said to be over", 30)
        assert set(_said(caplog, "ingest_read_refused")) <= {"new", "pending"}
        assert (await client.availability([("A", "S1")]))[0].on_hand == 4


def _said(caplog: Any, event: str) -> list[str]:
    """What each ``event`` said of (``read_refusals.WHAT``), sorted."""
    return sorted(one.__dict__["what"] for one in _events(caplog, event))


async def test_an_acl_denial_inside_a_read_script_is_told_as_a_permission_refusal(redis_url: str, caplog: Any
                                                                                   ) -> None:
    """The Redis user's ACL losing ``XREADGROUP`` while serving: the read scripts' call of it is denied inside the
    script, which Redis 7.0 words ``ERR The user executing the script can't run this command`` (no ``NOPERM`` for an
    operator to find): each ``ingest_read_failed`` and the ``ingest_read_refused`` said name it a permission
    refusal."""
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "~*", "&*", "+@all")
        service = AtpService(make_config(ingest_block_ms=20, ingest_read_refusals_max=2), as_user(redis_url))
        try:
            await service.start()
            with caplog.at_level(logging.WARNING):
                await admin.execute_command("ACL", "SETUSER", USER, "-xreadgroup")
                await until(lambda: _events(caplog, "ingest_read_refused"), "the refusal said", 60)
            failed = _events(caplog, "ingest_read_failed")
            assert failed and {one.__dict__["refusal"] for one in failed} == {"permission"}, failed
            assert [one.__dict__["refusal"] for one in _events(caplog, "ingest_read_refused")] == ["permission"]
        finally:
            await service.stop(grace_s=0)
            await admin.execute_command("ACL", "DELUSER", USER)


async def test_the_redis_user_turned_off_is_told_as_a_permission_refusal(redis_url: str, caplog: Any) -> None:
    """The service's Redis user turned off (or its password changed) while serving, its connections closed: every
    read connects again and Redis refuses the login (``WRONGPASS``), which redis-py raises as an
    ``AuthenticationError``, a ``ConnectionError``. It was told as Redis away: ``refusal`` empty, never said, the gauge
    0 while no fact was read until someone acts. Now a permission refusal, said once past the bound."""
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "~*", "&*", "+@all")
        service = AtpService(make_config(ingest_block_ms=20, ingest_read_refusals_max=2), as_user(redis_url))
        try:
            await service.start()
            with caplog.at_level(logging.WARNING):
                await admin.execute_command("ACL", "SETUSER", USER, "off")
                await admin.execute_command("CLIENT", "KILL", "USER", USER)
                await until(lambda: [one for one in _events(caplog, "ingest_read_failed")
                                     if "WRONGPASS" in one.__dict__["error"] or "disabled" in one.__dict__["error"]],
                            "a read refused its login", 60)
                await until(lambda: _events(caplog, "ingest_read_refused"), "the refusal said", 60)
            assert [one.__dict__["refusal"] for one in _events(caplog, "ingest_read_refused")] == ["permission"]
            assert _gauge(service) == 1
        finally:
            await service.stop(grace_s=0)
            await admin.execute_command("ACL", "DELUSER", USER)


async def test_a_mark_the_acl_denies_inside_the_pending_read_is_a_permission_refusal(redis_url: str) -> None:
    """The pending read's script denied ``GET`` of a mark: whatever words this Redis uses, a permission refusal."""
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.xgroup_create(POS, GROUP, id="0", mkstream=True)
        await admin.set(made_again_key(POS, GROUP), await admin.xadd(POS, {"n": 0}))
        await admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "~*", "+@all", "-get")
        try:
            async with aioredis.Redis.from_url(as_user(redis_url)) as client:
                with pytest.raises(ResponseError) as refused:
                    await read_pending(client, [POS], GROUP, "atp-1", 10, ["0"])
            assert lasting_refusal(refused.value) == "permission", str(refused.value)
        finally:
            await admin.execute_command("ACL", "DELUSER", USER)


@pytest.mark.parametrize(("error", "kind"), [
    (ResponseError("The user executing the script can't run this command or subcommand script: 1f, on "
                   "@user_script:1."), "permission"),
    (ResponseError("The user executing the script can't access at least one of the keys mentioned in the command "
                   "arguments"), "permission"),
    (NoPermissionError("this user has no permissions to run the 'xreadgroup' command"), "permission"),
    (AuthenticationError("invalid username-password pair or user is disabled."), "permission"),
    (ResponseError("DENIED XGROUP|SETID on atp:in:pos: the Redis user may not run it"), "permission"),
    (ResponseError("WRONGTYPE atp:in:pos:made-again:atp holds no entry id: nothing read"), "wrong_type"),
    (ResponseError("Command # 1 (HMGET atp:in:pos:refused:atp:letters 1-0) of pipeline caused error: ('WRONGTYPE "
                   "Operation against a key holding the wrong kind of value',)"), "wrong_type"),
    (ResponseError("Command # 2 (XADD atp:dlq * a b) of pipeline caused error: ('NOREPLICAS Not enough good "
                   "replicas to write.',)"), None),
    (ResponseError("NOSCRIPT No matching script"), "refused"),
    (ResponseError("NOGROUP No such key 'atp:in:pos' or consumer group 'atp'"), None),
    (ResponseError("BUSY Redis is busy running a script"), None),
    (RedisConnectionError("Connection refused"), None),
])
def test_lasting_refusals_are_told_by_kind(error: BaseException, kind: str | None) -> None:
    """Permission however Redis words it; a key of another type; any other refusal that no wait cures; and none
    for a group lost (the reader makes it again), a refusal that passes, or Redis away."""
    assert lasting_refusal(error) == kind



async def test_a_pass_over_pending_entries_failing_for_good_does_not_hold_back_the_new_entries(
        start_service: ServiceFactory, redis_url: str, caplog: Any) -> None:
    """An entry refused as stamped in the future (E7) is kept refused in Redis; the group deleted while the service
    was down, it is made again from the stream's start with its mark, and the entry comes again, to be asked for
    among the refused — where a key of another type now stands (``…:refused:atp:letters``): its batch fails, it
    stays pending, and every pass over the reader's own pending entries fails on it. A failed pass was due again at
    once, so the reader passed over its pending entries for ever and never read a new entry: a receipt on another
    stream was not applied while the key stayed wrong. Now a failed pass is put off as one leaving entries pending
    is, new entries read meanwhile; the key gone, the pending entry is settled as refused once (E7, E8)."""
    now = int(time.time() * 1000)
    async with aioredis.Redis.from_url(redis_url) as r:
        service, _ = await start_service(ingest_block_ms=20)
        await r.xadd(POS, F("future", "RECEIPT", "A", "S1", 2, now + 3_600_000).fields())
        await until(lambda: r.xlen("atp:dlq"), "the entry stamped in the future dead-lettered (E7)")
        await service.stop()
        await r.xgroup_destroy(POS, GROUP)
        letters = refused_letters_key(POS, GROUP)
        kept = await r.hgetall(letters)
        await r.delete(letters)
        await r.set(letters, "an operator's string")
        with caplog.at_level(logging.WARNING):
            service, client = await start_service(ingest_block_ms=20, ingest_read_refusals_max=3)
            await until(lambda: _events(caplog, "ingest_read_failed"), "a pass over the pending entries failed")
            await r.xadd(WMS, F("w1", "RECEIPT", "A", "DC", 6, now - 100).fields())
            for _ in range(600):  # a bound, not a timing: the receipt read and applied, the pass still refused
                if (await client.availability([("A", "DC")]))[0].on_hand == 6:
                    break
                await asyncio.sleep(0.05)
            assert (await client.availability([("A", "DC")]))[0].on_hand == 6
            await until(lambda: _events(caplog, "ingest_read_refused"), "the passes' refusal said", 60)
            said = _events(caplog, "ingest_read_refused")
            assert [(one.__dict__["refusal"], one.__dict__["what"]) for one in said] == [("wrong_type", "pending")]
            assert _gauge(service) == 1
            await r.delete(letters)
            await r.hset(letters, mapping=kept)
            await wait_consumed(redis_url, [POS, WMS], timeout_s=30)
            await until(lambda: _events(caplog, "ingest_read_resumed"), "the passes said to succeed again", 30)
        assert _gauge(service) == 0
        assert await r.xlen("atp:dlq") == 1
        assert [(a.on_hand, b.on_hand) for a, b in [await client.availability([("A", "S1"), ("A", "DC")])]] == [
            (0, 6)]


def _failed_on(caplog: Any, *keys: str) -> list[str]:
    """The key each ``ingest_read_failed`` names, of ``keys``, in the order they were logged."""
    said = [one.__dict__["error"] for one in _events(caplog, "ingest_read_failed")]
    return [key for error in said for key in keys if key in error]


async def test_a_pass_put_off_is_still_tried_while_every_new_read_is_refused(
        start_service: ServiceFactory, redis_url: str, caplog: Any) -> None:
    """A pass over the pending entries that failed was put off until a read of new entries *succeeded*: new reads
    refused for good meanwhile (a key of another type only they look at, the reader's owed hash), the pass was never
    tried again, and the pending entry it would settle once its own cause was gone waited on whatever refused the new
    reads. Now a read of new entries tried, whatever its answer, lets the next pass in: the entry is settled as refused
    once (E7, E8) while the new reads are still refused."""
    now = int(time.time() * 1000)
    async with aioredis.Redis.from_url(redis_url) as r:
        service, _ = await start_service(ingest_block_ms=20)
        entry = await r.xadd(POS, F("future", "RECEIPT", "A", "S1", 2, now + 3_600_000).fields())
        await until(lambda: r.xlen("atp:dlq"), "the entry stamped in the future dead-lettered (E7)")
        await service.stop()
        await r.xgroup_destroy(POS, GROUP)  # made again at its start with its mark, the entry pending to the reader
        await r.xgroup_create(POS, GROUP, id="0")
        await r.set(made_again_key(POS, GROUP), entry)
        await r.xreadgroup(GROUP, "atp-1", {POS: ">"})
        letters, owed = refused_letters_key(POS, GROUP), trimmed_unread_key(POS, GROUP, "atp-1")
        kept = await r.hgetall(letters)
        await r.delete(letters)
        await r.set(letters, "an operator's string")  # the pass refused
        await r.set(owed, "an operator's string")  # every read of new entries refused: none succeeds from the start
        with caplog.at_level(logging.WARNING):
            await start_service(ingest_block_ms=20)
            await until(lambda: _failed_on(caplog, letters, owed)[:2] == [letters, owed],
                        "the first pass refused, then a read of new entries")
            await r.delete(letters)
            await r.hset(letters, mapping=kept)
            await until(lambda: _pending(r, POS), "the pending entry settled, the new reads still refused", 30)
            assert _failed_on(caplog, letters, owed)[-1] == owed
            await r.delete(owed)
            await wait_consumed(redis_url, [POS, WMS], timeout_s=30)
        assert await r.xlen("atp:dlq") == 1


async def _pending(r: aioredis.Redis, stream: str) -> bool:
    """Whether no entry of ``stream`` is pending in the group."""
    return (await r.xpending(stream, GROUP))["pending"] == 0


async def test_claims_refused_for_good_are_said_though_new_entries_are_read(
        start_service: ServiceFactory, redis_url: str, caplog: Any) -> None:
    """The claim of entries other consumers left pending refused at each try (the dead-letter stream's key of another
    type: the claim refuses before it takes anything): counted with the reads of new entries, each such read between
    two claims started the count again, so however long it lasted nothing was said and the gauge stayed 0 — entries a
    dead process left pending never taken over. Now claims are counted on their own (``what`` ``claim``), said once
    past the bound while the new entries are read and applied, and said to succeed again once the key is given back."""
    now = int(time.time() * 1000)
    async with aioredis.Redis.from_url(redis_url) as r:
        service, client = await start_service(ingest_block_ms=20, claim_idle_ms=2_000, ingest_read_refusals_max=2)
        with caplog.at_level(logging.WARNING):
            await r.set("atp:dlq", "an operator's string")
            await until(lambda: _events(caplog, "ingest_read_refused"), "the claims' refusal said", 60)
            said = _events(caplog, "ingest_read_refused")
            assert [(one.__dict__["refusal"], one.__dict__["what"]) for one in said] == [("wrong_type", "claim")]
            assert _gauge(service) == 1
            # Each failure says what failed: the claims' warnings are not taken for reads of new entries refused.
            assert {one.__dict__.get("what") for one in _events(caplog, "ingest_read_failed")} == {"claim"}
            await r.xadd(WMS, F("w1", "RECEIPT", "A", "DC", 6, now - 100).fields())
            await wait_consumed(redis_url, [WMS], timeout_s=30)  # read and applied meanwhile
            assert (await client.availability([("A", "DC")]))[0].on_hand == 6
            await r.delete("atp:dlq")
            await until(lambda: _events(caplog, "ingest_read_resumed"), "the claims said to succeed again", 30)
        assert _gauge(service) == 0
        assert [one.__dict__["what"] for one in _events(caplog, "ingest_read_resumed")] == ["claim"]
