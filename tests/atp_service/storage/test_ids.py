"""Reservation id claims (``storage/ids.py``) on a real Redis: the first home claimed is every later
claim's answer, a claim lasts at least what was asked (extended, never shortened), claims asked for
together go in one round trip, and a claim whose answers were lost (in doubt) that lands late is
still the answer every later claim gets: never two homes for one id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aredis

from atp_service.engine import ids as ids_engine
from atp_service.retry import BackoffPolicy
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.ids import CLAIM_SCRIPT, IdClaims
from atp_service.storage.keys import Keyspace
from atp_service.storage.nodes import open_nodes
from atp_service.storage.resp import out_of_memory
from reservation import Reason
from tests.atp_service.redis_proxy import HoldingProxy
from tests.waiting import until

KEYS = Keyspace("t:")


async def test_the_first_home_claimed_answers_every_claim_and_lasts_as_asked(redis_url: str) -> None:
    nodes = open_nodes(redis_url, 5.0)
    claims = IdClaims(nodes.run, KEYS)
    r = aredis.Redis.from_url(redis_url)
    try:
        assert claims.key("r-1") == "t:rid:{r-1}"  # the id its own hash tag: claims spread over a cluster's slots
        assert await claims.claim("r-1", 2, 60_000) == 2
        assert await claims.claim("r-1", 3, 60_000) == 2  # another home: refused by the caller, nothing changed
        assert await r.get("t:rid:{r-1}") == b"2"
        assert 0 < await r.pttl("t:rid:{r-1}") <= 60_000
        assert await claims.claim("r-1", 2, 600_000) == 2  # the same home asking longer: extended
        assert 60_000 < await r.pttl("t:rid:{r-1}") <= 600_000
        assert await claims.claim("r-1", 2, 1_000) == 2  # ...and never shortened
        assert await r.pttl("t:rid:{r-1}") > 60_000
        assert await claims.claim("r-1", 3, 600_000_000) == 2 and await r.pttl("t:rid:{r-1}") <= 600_000
        before = claims.round_trips
        homes = await asyncio.gather(*(claims.claim(f"b-{i}", i % 4, 60_000) for i in range(50)))
        assert homes == [i % 4 for i in range(50)] and claims.round_trips == before + 1  # one round trip for all
    finally:
        await r.aclose()
        await nodes.aclose()



async def test_a_look_at_a_claim_answers_the_group_held_and_sets_nothing(redis_url: str) -> None:
    """``look`` (a Reserve at a full shard, refused before its claim): the group held, -1 where none,
    nothing written or extended."""
    nodes = open_nodes(redis_url, 5.0)
    claims = IdClaims(nodes.run, KEYS)
    r = aredis.Redis.from_url(redis_url)
    try:
        assert await claims.look("l-1") == -1 and await r.exists("t:rid:{l-1}") == 0
        assert await claims.claim("l-1", 3, 60_000) == 3
        assert await claims.look("l-1") == 3 and 0 < await r.pttl("t:rid:{l-1}") <= 60_000
    finally:
        await r.aclose()
        await nodes.aclose()

async def test_a_claim_in_doubt_that_lands_late_is_the_answer_of_every_later_claim(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    doubtful = open_nodes(await proxy.start(), 0.3)
    direct = open_nodes(redis_url, 5.0)
    claims, other = IdClaims(doubtful.run, KEYS, tries=2), IdClaims(direct.run, KEYS)
    claims.retry = BackoffPolicy(first_s=0.01, max_s=0.01)
    try:
        assert await claims.claim("loaded", 0, 60_000) == 0  # the script loaded: the next calls are EVALSHA
        proxy.hold(CLAIM_SCRIPT.sha.encode())
        with pytest.raises(STORAGE_ERRORS):  # every try's answer lost: in doubt, each may yet land
            await claims.claim("r-doubt", 1, 60_000)
        await until(lambda: len(proxy.held) == 2, "both tries held")
        proxy.hold()
        for held in list(proxy.held):
            await proxy.land(held)  # late, after the caller gave up
        assert await other.claim("r-doubt", 3, 60_000) == 1  # another home's Reserve is refused
        assert await claims.claim("r-doubt", 1, 60_000) == 1  # the retry of the first goes on
    finally:
        await proxy.close()
        await doubtful.aclose()
        await direct.aclose()


async def test_a_claim_redis_does_not_answer_fails_after_its_tries(redis_server: EmbeddedRedis) -> None:
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    nodes = open_nodes(await proxy.start(), 0.3)
    claims = IdClaims(nodes.run, KEYS, tries=3)
    claims.retry = BackoffPolicy(first_s=0.01, max_s=0.01)
    try:
        proxy.hold(b"EVAL")  # nothing of the claims reaches Redis
        with pytest.raises(STORAGE_ERRORS):
            await claims.claim("r-away", 1, 60_000)
        assert claims.round_trips == 3
        proxy.drop()
    finally:
        await proxy.close()
        await nodes.aclose()


async def test_a_claim_redis_refuses_for_memory_is_answered_so_at_once(tmp_path: Path) -> None:
    """Redis at its ``maxmemory`` (``noeviction``) refuses a new claim's write ``OOM`` before it runs:
    certainly not made, so not sent again (each try waited for nothing), and the Reserve is told
    Redis is out of memory and nothing was decided, as a refused log write is — not that Redis did
    not answer. A claim already made is still answered (its extension needs no memory)."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        nodes = open_nodes(server.url, 5.0)
        admin = aredis.Redis.from_url(server.url)
        claims = IdClaims(nodes.run, KEYS, tries=3)
        claims.retry = BackoffPolicy(first_s=0.01, max_s=0.01)
        try:
            assert await claims.claim("r-made", 1, 60_000) == 1
            await admin.config_set("maxmemory", 1)  # full: every write that may grow it is refused OOM
            before = claims.round_trips
            with pytest.raises(STORAGE_ERRORS) as exc:
                await claims.claim("r-new", 1, 60_000)
            assert out_of_memory(exc.value), exc.value
            assert claims.round_trips == before + 1, "a claim Redis refused for memory is not sent again"
            refusal = ids_engine.claim_refusal(exc.value)
            assert refusal.reason == Reason.STORAGE_UNREACHABLE
            assert "out of memory" in str(refusal) and "nothing was" in str(refusal), refusal
            assert await claims.claim("r-made", 1, 120_000) == 1 and await claims.claim("r-made", 2, 60_000) == 1
            assert not await admin.exists(KEYS.reservation_id("r-new"))
        finally:
            await admin.config_set("maxmemory", 0)
            await admin.aclose()
            await nodes.aclose()


async def test_a_claim_key_holding_no_group_fails_the_claim_and_the_batch_goes_on(redis_url: str) -> None:
    """A value no claim writes (set by hand, another program) under an id's key raised inside the
    batch's send: the claims after it in the batch were never answered, their Reserves waiting for
    good. It is an error of that claim alone now."""
    nodes = open_nodes(redis_url, 5.0)
    claims = IdClaims(nodes.run, KEYS)
    r = aredis.Redis.from_url(redis_url)
    try:
        await r.set(KEYS.reservation_id("r-junk"), "junk")
        junk, after = claims.claim("r-junk", 1, 60_000), claims.claim("r-after", 2, 60_000)
        done, _ = await asyncio.wait([junk, after], timeout=30)  # a bound on a hang, not a timing target
        assert len(done) == 2, "a claim of the batch was never answered"
        assert isinstance(junk.exception(), STORAGE_ERRORS) and "not a shard group" in str(junk.exception())
        assert after.result() == 2
    finally:
        await r.aclose()
        await nodes.aclose()


async def test_claims_given_up_at_teardown_fail_instead_of_waiting(redis_server: EmbeddedRedis) -> None:
    """A stop cancels the sends under way (``abandon``): their claims fail as not answered, so a Reserve
    waiting on one is refused UNAVAILABLE (nothing was decided) instead of waiting past the stop."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    nodes = open_nodes(await proxy.start(), 30.0)
    claims = IdClaims(nodes.run, KEYS)
    try:
        proxy.hold(b"EVAL")
        claim = claims.claim("r-stop", 1, 60_000)
        await until(lambda: len(proxy.held) == 1, "the claim held on its way")
        claims.abandon()
        with pytest.raises(STORAGE_ERRORS):
            await asyncio.wait_for(claim, 30)  # a bound on a hang, not a timing target
        assert ids_engine.claim_refusal(claim.exception()).reason == Reason.STORAGE_UNREACHABLE
        proxy.drop()
    finally:
        await proxy.close()
        await nodes.aclose()
