"""A fact quarantined from an input-stream entry whose acknowledgement is lost (a kill -9 or a
timeout before its XACK) is read again and decided again: it is quarantined once, not once a read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import redis
from redis.exceptions import ResponseError

from atp_service import AtpService, EmbeddedRedis
from atp_service.intake.quarantine import Acks, QuarantineStream
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.nodes import open_nodes
from reservation import Fact, FactKind, Limits
from reservation import fact as make_fact
from tests.atp_service.fact_helpers import F, held_script, wait_consumed
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import test_config as make_config
from tests.slot_moves import SlotMove
from tests.waiting import until

T = 1_700_000_000_000


def quarantined(service: AtpService) -> float:
    samples = service.metrics.intake.facts.collect()[0].samples
    return sum(s.value for s in samples if s.name.endswith("_total") and s.labels["outcome"] == "quarantined"
               and s.labels["origin"] == "stream")


@contextlib.asynccontextmanager
async def through_proxy(redis_server: EmbeddedRedis, redis_url: str) -> AsyncIterator[tuple[AtpService, HoldingProxy]]:
    """A service reaching Redis through a ``HoldingProxy``, its first fact (e1) applied and acknowledged."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    service = AtpService(make_config(redis_timeout_s=0.5), await proxy.start())
    try:
        await service.start()
        redis.Redis.from_url(redis_url).xadd("atp:in:pos", F("e1", "RECEIPT", "A", "S1", 4, T).fields())
        await wait_consumed(redis_url, ["atp:in:pos"])
        yield service, proxy
    finally:
        await service.stop()
        await proxy.close()


async def test_a_conflict_read_again_after_its_ack_was_lost_is_quarantined_once(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    async with through_proxy(redis_server, redis_url) as (service, proxy):
        proxy.hold(b"XACK", held_script(r))  # every acknowledgement lost (the script acknowledges its entry too)
        r.xadd("atp:in:pos", F("e1", "RECEIPT", "A", "S1", 5, T).fields())  # e1 again, another payload (E8)
        await until(lambda: len(proxy.held) >= 3, "the conflicting entry decided three times")
        proxy.hold()
        proxy.drop()
        await wait_consumed(redis_url, ["atp:in:pos"])
        reasons = [fields[b"reason"] for _, fields in r.xrange("atp:quarantine")]
        assert len(reasons) == 1 and reasons[0].startswith(b"conflict"), reasons
        # Counted once the script that wrote it and acknowledged its entry answered: after Redis shows the
        # entry consumed, by a turn of the service's loop or more.
        await until(lambda: quarantined(service) >= 1, "the conflict counted")
        assert quarantined(service) == 1


async def test_a_quarantine_write_whose_answer_was_lost_counts_the_fact_quarantined_once(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    """The quarantine script ran but its answer was lost (a reset connection, a timeout): the entry was
    acknowledged by it, and the write is made again before the reader reads its pending entries again; the
    script now finds the fact written. It was written by this decision, never counted: it counts quarantined
    once (E6: a metric counts it), not duplicate."""
    r = redis.Redis.from_url(redis_url)
    async with through_proxy(redis_server, redis_url) as (service, proxy):
        proxy.hold(held_script(r), reset=True)  # the quarantine script: sent, its answer lost
        r.xadd("atp:in:pos", F("e1", "RECEIPT", "A", "S1", 5, T).fields())  # a conflict (E8)
        await until(lambda: proxy.held, "the quarantine write sent, its answer lost")
        await proxy.land(proxy.held[0])  # it ran: the fact is in the quarantine stream
        proxy.hold()
        proxy.drop()  # the retries meanwhile never arrive
        await wait_consumed(redis_url, ["atp:in:pos"])
        assert service.desk is not None
        # The landed script acknowledged the entry: Redis shows it consumed whether or not the service has yet
        # seen its answer lost and owed the write (nothing owed yet reads as settled); the count says it was made.
        await until(lambda: quarantined(service) >= 1, "the write whose answer was lost made again, counted")
        await until(lambda: not service.desk.quarantine.owed, "the write whose answer was lost made again")
        assert r.xlen("atp:quarantine") == 1
        assert quarantined(service) == 1


async def test_on_a_cluster_each_fact_is_written_once_beside_its_stream(cluster_url: str) -> None:
    """The script's keys (the stream, the set of what it holds) share the stream's slot: a Redis Cluster
    runs it, and a fact written before is not written again, another payload of its identity is."""
    writer = open_nodes(cluster_url, 5.0, cluster=True)
    stream = QuarantineStream("atp:{in}:quarantine", 1000)
    one, other = fact_of(F("e1", "RECEIPT", "A", "S1", 5, T)), fact_of(F("e1", "RECEIPT", "A", "S1", 6, T))
    try:
        twice = [(one, "conflict"), (one, "conflict"), (other, "conflict")]
        assert await stream.write(writer, twice) == [True, False, True]
        assert await stream.write(writer, [(one, "conflict"), (other, "conflict")]) == [False, False]
        assert await writer.reader.xlen("atp:{in}:quarantine") == 2
    finally:
        await writer.aclose()


async def test_on_a_cluster_a_fact_written_before_keeps_its_digest_while_its_slot_migrates_E8(
        redis_cluster: EmbeddedCluster, cluster_url: str, moves: list[SlotMove]) -> None:
    """A slot migrating, its source node runs a script only where every key it names is there, and each command of
    the script on a key that is not (gone since the script began) fails it with "a non local key", half-way. A fact
    written before had its digest taken out of the set and put back: the set's one digest taken out, the set was
    gone, and the ZADD putting it back failed — the digest lost, the fact written again at its retry (E8)."""
    writer = open_nodes(cluster_url, 5.0, cluster=True)
    stream = QuarantineStream("atp:{in}:quarantine", 1000)
    fact = fact_of(F("e1", "SALE", "A", "S1", 1, T))
    acks = Acks("atp", "c1", [("atp:{in}:pos", b"4102444800000-0")], run=1)  # 2100: named in the hash beside the set
    try:
        await writer.reader.xadd("atp:{in}:pos", {"f": "v"})  # the input stream, as a producer left it
        assert await stream.run_of(writer.reader, "atp", "c1") == 1  # drawn before any write names it
        assert await stream.write(writer, [(fact, "late")], acks) == [True]
        with redis.RedisCluster.from_url(redis_cluster.url) as admin:
            slot, source = admin.keyslot(stream.stream), int(admin.get_node_from_key(stream.stream).port)
        moves.append(move := SlotMove(redis_cluster, slot, source,
                                      next(n.port for n in redis_cluster.primaries if n.port != source)))
        move.begin()  # every key still at the source: the script runs there
        assert await stream.write(writer, [(fact, "late")], acks) == [False]  # was: ResponseError (a non local key)
        assert await writer.reader.zscore(stream.written_key, QuarantineStream.digest(fact)) is not None
        assert await writer.reader.xlen(stream.stream) == 1
    finally:
        await writer.aclose()


async def test_on_a_cluster_a_trim_that_empties_the_hash_of_entries_ahead_finishes_while_its_slot_migrates_E8(
        redis_cluster: EmbeddedCluster, cluster_url: str, moves: list[SlotMove]) -> None:
    """The set trimmed, each digest taken out is taken out of the hash of entries ahead too, one HDEL each: where the
    hash held only the first of them, its first HDEL emptied it (the key gone) and the next, on a key not there, failed
    the script half-way on a migrating slot's source (a non local key) — the facts written and their entries
    acknowledged, the write raised (in doubt), the set left untrimmed."""
    writer = open_nodes(cluster_url, 5.0, cluster=True)
    stream = QuarantineStream("atp:{in}:quarantine", 2)
    ahead = Acks("atp", "c1", [("atp:{in}:pos", b"4102444800000-0")], run=1)  # 2100: named in the hash
    first, *later = [fact_of(F(f"e{i}", "SALE", "A", "S1", 1, T)) for i in range(4)]
    try:
        await writer.reader.xadd("atp:{in}:pos", {"f": "v"})  # the input stream, as a producer left it
        assert await stream.run_of(writer.reader, "atp", "c1") == 1  # drawn before any write names it
        assert await stream.write(writer, [(first, "late")], ahead) == [True]
        written_at = await writer.reader.zscore(stream.written_key, QuarantineStream.digest(first))

        async def later_than_first() -> bool:  # the next write's score above the first's: the first trimmed first
            seconds, micros = await writer.reader.time()
            return bool(seconds * 1000 + micros // 1000 > written_at)

        await until(later_than_first, "Redis's clock past the first write's millisecond")
        behind = Acks("atp", "c1", [("atp:{in}:pos", b"1-0")], run=1)
        assert await stream.write(writer, [(later[0], "late")], behind) == [True]
        assert await writer.reader.hkeys(stream.ahead_key) == [QuarantineStream.digest(first).encode()]
        with redis.RedisCluster.from_url(redis_cluster.url) as admin:
            slot, source = admin.keyslot(stream.stream), int(admin.get_node_from_key(stream.stream).port)
        moves.append(move := SlotMove(redis_cluster, slot, source,
                                      next(n.port for n in redis_cluster.primaries if n.port != source)))
        move.begin()  # every key still at the source: the script runs there
        both = Acks("atp", "c1", [("atp:{in}:pos", b"1-0")] * 2, run=1)
        assert await stream.write(writer, [(fact, "late") for fact in later[1:]], both) == [True, True]  # was: a non
        assert await writer.reader.zcard(stream.written_key) == 2  # local key, the set left at 4
        assert not await writer.reader.exists(stream.ahead_key)
    finally:
        await writer.aclose()


async def test_on_a_cluster_the_default_stream_without_a_hash_tag_is_written(cluster_url: str) -> None:
    """Without input streams nothing asks ``quarantine_stream`` for a hash tag: the default
    ``atp:quarantine`` on a Redis Cluster. The set beside it hashes to the stream's slot all the same,
    or every quarantine is refused CROSSSLOT (a late fact's RecordEvents UNAVAILABLE for ever)."""
    writer = open_nodes(cluster_url, 5.0, cluster=True)
    stream = QuarantineStream("atp:quarantine", 1000)
    one = fact_of(F("e1", "RECEIPT", "A", "S1", 5, T))
    try:
        assert await stream.write(writer, [(one, "late")]) == [True]
        assert await stream.write(writer, [(one, "late")]) == [False]
        assert await writer.reader.xlen("atp:quarantine") == 1
    finally:
        await writer.aclose()


async def test_the_facts_written_are_remembered_no_longer_than_the_stream_is_long(redis_url: str) -> None:
    """Bounded (a flood of late facts costs Redis no more than the stream): the set beside the stream
    keeps the newest ``maxlen`` digests; a fact past them is written again, as the stream no longer
    holds it (trimmed, about ``maxlen``)."""
    writer = open_nodes(redis_url, 5.0)
    stream = QuarantineStream("atp:quarantine", 10)
    facts = [(fact_of(F(f"e{i}", "SALE", "A", "S1", 1, T + i)), "late") for i in range(15)]
    try:
        assert await stream.write(writer, facts) == [True] * 15
        assert await writer.reader.zcard(stream.written_key) == 10
        assert await stream.write(writer, [facts[0], facts[14]]) == [True, False]  # the oldest was let go
    finally:
        await writer.aclose()


async def test_the_entries_named_ahead_of_their_writes_are_remembered_no_longer_than_their_facts(
        redis_url: str) -> None:
    """Bounded: an entry whose id runs ahead of its fact's write (a producer's own ids, far ahead) is named beside
    the set by the fact's digest (E8: ``again.quarantined_before``) only while the set holds the fact; the set,
    scored by the writes' times, keeps the newest ``maxlen`` as ever."""
    writer = open_nodes(redis_url, 5.0)
    stream = QuarantineStream("atp:quarantine", 10)
    facts = [(fact_of(F(f"e{i}", "SALE", "A", "S1", 1, T + i)), "late") for i in range(15)]
    entries = [("atp:in:pos", b"4102444800000-%d" % i) for i in range(15)]  # 2100-01-01
    try:
        assert await stream.write(writer, facts, Acks("atp", "c1", entries)) == [True] * 15
        held = await writer.reader.zrange(stream.written_key, 0, -1)
        assert len(held) == 10
        named = await writer.reader.hgetall(stream.ahead_key)
        assert sorted(named) == sorted(held)
        by_digest = {QuarantineStream.digest(fact).encode(): entry_id
                     for (fact, _), (_, entry_id) in zip(facts, entries, strict=True)}
        assert all(named[d] == by_digest[d] + b" atp:in:pos" for d in held)
    finally:
        await writer.aclose()


async def test_a_key_of_another_type_beside_the_stream_refuses_the_write_before_anything_is_written_E8(
        redis_url: str) -> None:
    """The hash of entries ahead of their writes held another type (an operator's key): the script failed at its
    HSET, after its XADD — the fact on the stream, its digest not in the set, its entry not acknowledged — and each
    delivery of the entry wrote the fact again. Refused before its first write: nothing written until the key is
    removed, then the fact once."""
    writer = open_nodes(redis_url, 5.0)
    stream = QuarantineStream("atp:quarantine", 10)
    late = [(fact_of(F("e1", "SALE", "A", "S1", 1, T)), "late")]
    acks = Acks("atp", "c1", [("atp:in:pos", b"4102444800000-0")])  # 2100-01-01: named in the hash beside the set
    try:
        await writer.reader.set(stream.ahead_key, "an operator's")
        for _ in range(2):  # its entry not acknowledged: delivered, decided and written again
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await stream.write(writer, late, acks)
        assert await writer.reader.xlen("atp:quarantine") == 0
        assert await writer.reader.zcard(stream.written_key) == 0
        await writer.reader.delete(stream.ahead_key)
        assert await stream.write(writer, late, acks) == [True]
        assert await writer.reader.xlen("atp:quarantine") == 1
    finally:
        await writer.aclose()


def fact_of(f: F) -> Fact:
    return make_fact(f.event_id, f.source, FactKind[f.kind].value, f.sku, f.location, f.quantity, f.t, "",
                     f.t, Limits(), "event_time_ms")
