"""The input streams' scripts with a command taken out of the Redis user's ACL while the service serves: each asks
the ACL for every command it runs after its first write before that write (``scripts.ACL_LUA``), so it is refused
whole (DENIED) — never a claim without its dead letters, a dead letter without its acknowledgement, nor a read past
a gap without its count."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import ResponseError

from atp_service.intake import dead_letters
from atp_service.intake.claims import Claims
from atp_service.intake.dead_letters import TRIMMED
from atp_service.intake.unread import GroupReader, made_again_key, make_group_marked
from atp_service.storage.log import connect
from tests.atp_service.acl_user import AclUser, acl_user

STREAM, GROUP, DLQ = "t:in:pos", "g", "t:dead"


@pytest.fixture
async def user(redis_url: str) -> AsyncIterator[AclUser]:
    async with acl_user(redis_url) as made:
        yield made


async def test_a_claim_whose_dead_letter_xadd_the_acl_took_away_leaves_the_trimmed_entry_pending(
        user: AclUser) -> None:
    """XAUTOCLAIM takes the pending entries it finds trimmed out of the pending list itself, and the claim's script
    writes their dead letters (``TRIMMED_WHILE_PENDING``) after it: the XADD refused, the entries were gone with no
    dead letter anywhere, the one trace of them the script is there to keep. Refused whole now: still pending."""
    admin, client = user.admin, connect(user.url, 5.0)
    try:
        await admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        await admin.xadd(STREAM, {"n": 0})
        await admin.xreadgroup(GROUP, "dead", {STREAM: ">"})  # pending to a consumer gone since
        await admin.xtrim(STREAM, maxlen=0)
        await user.take_away("xadd")
        with pytest.raises(ResponseError, match=r"^DENIED XADD"):
            await Claims(client, GROUP, "c1", DLQ, 1000).claim(STREAM, 0, "0-0", 10)
        assert (await admin.xpending(STREAM, GROUP))["pending"] == 1  # was: 0, and no dead letter
        await user.give_back("xadd")
        _, _, trimmed, _ = await Claims(client, GROUP, "c1", DLQ, 1000).claim(STREAM, 0, "0-0", 10)
        assert len(trimmed) == 1 and await admin.xlen(DLQ) == 1
    finally:
        await client.aclose()


async def test_a_dead_letter_whose_xack_the_acl_took_away_is_not_written(user: AclUser) -> None:
    """The dead letters' script acknowledges each entry with a pcall (a group gone: pending nowhere), which took an
    XACK the ACL refused for done: the dead letter written, the entry left pending — dead-lettered again at its next
    delivery, a dead letter a delivery. Refused whole now: no dead letter, the entry pending."""
    admin, client = user.admin, connect(user.url, 5.0)
    try:
        await admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        entry = await admin.xadd(STREAM, {"n": 0})
        await admin.xreadgroup(GROUP, "c1", {STREAM: ">"})
        await admin.set("fence", "t")  # the consumer's fence (fence.py), the token the write carries
        await user.take_away("xack")
        with pytest.raises(ResponseError, match=r"^DENIED XACK"):
            await dead_letters.write(client, [(STREAM, entry, [b"n", b"0"], TRIMMED)], DLQ, 1000, GROUP, 1 << 20,
                                     consumer="c1", fence=("fence", b"t"))
        assert not await admin.exists(DLQ)  # was: a dead letter, its entry pending still
        assert (await admin.xpending(STREAM, GROUP))["pending"] == 1
    finally:
        await client.aclose()


async def test_a_group_made_again_whose_mark_the_acl_took_away_is_not_made(user: AclUser) -> None:
    """A group made again is made with its made-again mark in one script (``again.py``: the entries delivered again
    told from later resends, E8); the SET of the mark refused after the XGROUP CREATE, the group stood without it.
    Refused whole now: no group, made with its mark once the ACL allows it."""
    admin, client = user.admin, connect(user.url, 5.0)
    written = "t:quarantine:written"
    try:
        await admin.xadd(STREAM, {"n": 0})
        await admin.zadd(written, {"d": 1})  # a fact quarantined before: the group made again is marked
        await user.take_away("set")
        with pytest.raises(ResponseError, match=r"^DENIED SET"):
            await make_group_marked(client, STREAM, GROUP, b"0", written)
        assert await admin.xinfo_groups(STREAM) == []  # was: the group, with no mark
        await user.give_back("set")
        made, mark, _, _, _ = await make_group_marked(client, STREAM, GROUP, b"0", written)
        assert made and mark == await admin.get(made_again_key(STREAM, GROUP)) is not None
    finally:
        await client.aclose()


async def test_a_subcommand_the_acl_took_away_is_refused_naming_it_and_its_key(user: AclUser) -> None:
    """The refusal names the command and the key it was asked on (``DENIED <command> on <key>``, OPERATIONS.md): for a
    container command (``XGROUP SETID``, ``XINFO STREAM``) it named the subcommand as the key — ``DENIED XGROUP on
    SETID`` —, leaving the operator no stream nor subcommand to look for in the ACL."""
    admin, client = user.admin, connect(user.url, 5.0)
    reader = GroupReader(client, [STREAM], GROUP, "c1", Counter("trimmed_unread", "test", ["stream"],
                                                                 registry=CollectorRegistry()))
    try:
        await admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        await user.take_away("xgroup|setid")
        with pytest.raises(ResponseError, match=rf"^DENIED XGROUP\|SETID on {STREAM}: "):  # was: XGROUP on SETID
            await reader.read(10, None)
    finally:
        await client.aclose()


@pytest.mark.parametrize("command", ["hincrby", "time"])
async def test_a_read_across_a_gap_whose_command_the_acl_took_away_moves_no_group(user: AclUser, command: str) -> None:
    """The read's script moved the group past entries trimmed unread (XREADGROUP), then a command after it was refused:
    HINCRBY of their count owed (the gap crossed, its entries never counted nor said, the next read seeing no gap), or
    TIME, which marks a count owed answered (``unread.answered_key``: the group past the gap, its entries delivered with
    the reply lost, at every read while the count stayed owed). Refused whole now: the group where it was, the gap
    counted once the ACL allows it."""
    admin, client = user.admin, connect(user.url, 5.0)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    reader = GroupReader(client, [STREAM], GROUP, "c1", counter)
    try:
        await admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        await admin.xadd(STREAM, {"n": 0})
        assert await reader.read(10, None)
        for n in range(1, 6):  # 1..3 trimmed unread
            await admin.xadd(STREAM, {"n": n}, maxlen=2, approximate=False)
        await user.take_away(command)
        with pytest.raises(ResponseError, match=rf"^DENIED {command.upper()}"):
            await reader.read(10, None)
        assert (await admin.xpending(STREAM, GROUP))["pending"] == 1  # was: 3, the group past the gap
        await user.give_back(command)
        assert len((await reader.read(10, None))[0][1]) == 2
        assert counter.labels(STREAM)._value.get() == 3
    finally:
        await client.aclose()


async def test_a_dead_letter_whose_fence_get_the_acl_took_away_is_refused_naming_it(user: AclUser) -> None:
    """The dead letters' script reads the consumer's fence (``fence.py``) with a pcall, for a token of another type (a
    stray key) is none held: a GET the ACL refused was taken for another token — every write answered fenced, its
    entries left pending and read again for ever, with no line saying why. Refused whole now, naming GET and the key."""
    admin, client = user.admin, connect(user.url, 5.0)
    try:
        await admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        entry = await admin.xadd(STREAM, {"n": 0})
        await admin.xreadgroup(GROUP, "c1", {STREAM: ">"})
        await admin.set("fence", "t")  # the consumer's fence, the token the write carries
        await user.take_away("get")
        with pytest.raises(ResponseError, match=r"^DENIED GET on fence: "):  # was: answered fenced, nothing said
            await dead_letters.write(client, [(STREAM, entry, [b"n", b"0"], TRIMMED)], DLQ, 1000, GROUP, 1 << 20,
                                     consumer="c1", fence=("fence", b"t"))
        assert not await admin.exists(DLQ)
        await user.give_back("get")
        written = await dead_letters.write(client, [(STREAM, entry, [b"n", b"0"], TRIMMED)], DLQ, 1000, GROUP,
                                           1 << 20, consumer="c1", fence=("fence", b"t"))
        assert not written.fenced  # the token Redis holds: the fence let it through
    finally:
        await client.aclose()


async def test_a_dead_letter_kept_refused_whose_zcard_the_acl_took_away_is_not_written(user: AclUser) -> None:
    """A dead letter of an entry refused in the future (E7) keeps it refused beside its stream (``refused_kept.py``),
    the script bounding that set with a ZCARD after its XADD, ZADD and HSET: the ZCARD refused, the script stopped
    there with Redis's error naming neither — the letter written and kept, the entry not acknowledged. Asked with the
    other commands now: refused whole, naming ZCARD and the key."""
    admin, client = user.admin, connect(user.url, 5.0)
    why = dead_letters.Why("event_time_ms: in the future", "event_time_ms", "INVALID_FIELD")
    try:
        await admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        entry = await admin.xadd(STREAM, {"n": 0})
        await admin.xreadgroup(GROUP, "c1", {STREAM: ">"})
        await admin.set("fence", "t")  # the consumer's fence (fence.py), the token the write carries
        await user.take_away("zcard")
        with pytest.raises(ResponseError, match=r"^DENIED ZCARD on "):  # was: a script error after its writes
            await dead_letters.write(client, [(STREAM, entry, [b"n", b"0"], why)], DLQ, 1000, GROUP, 1 << 20,
                                     refused=dead_letters.Kept({(STREAM, entry)}, 10), consumer="c1",
                                     fence=("fence", b"t"))
        assert not await admin.exists(DLQ)  # was: a dead letter, its entry pending still
        assert (await admin.xpending(STREAM, GROUP))["pending"] == 1
    finally:
        await client.aclose()
