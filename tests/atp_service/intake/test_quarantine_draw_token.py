"""A quarantine run's draw (``runs.DRAW``, ``QuarantineStream.run_of``) whose answer was lost (a timeout, a cancel)
is retried with the same token: landed before the retry or after it, the retry and the late landing both return the
run it drew, never a second one (no ``INCR``), so a process's own draws never move its run key past the run in use,
and a key past it is always another process's fence (E8). Real redis-server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from atp_service.intake import runs
from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.quarantine import Acks, QuarantineStream, drawn_key, run_key, swept_runs_key
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import open_nodes
from reservation import FactKind, Limits
from reservation import fact as make_fact
from tests.atp_service.fact_helpers import F

STREAM, GROUP, QUARANTINE, NAME = "atp:in:pos", "atp", "atp:quarantine", "atp-1@10.0.0.3:1"


class _FirstAnswerLost:
    """A client whose first script call's answer is lost (a timeout): ``landed``, the script ran before the loss
    (Redis ran it, the reply never came); else it is kept (``sent``: its keys and args) to land when the test says."""

    def __init__(self, client: Any, landed: bool) -> None:
        self._client, self._landed, self._calls = client, landed, 0
        self.sent: dict[str, Any] = {}
        self.script: Any = None

    async def get(self, key: str) -> Any:
        return await self._client.get(key)  # the run key, read before each try of a draw

    def register_script(self, source: str) -> Any:
        self.script = self._client.register_script(source)

        async def call(**kw: Any) -> Any:
            self._calls += 1
            if self._calls == 1:
                if self._landed:
                    await self.script(**kw)
                else:
                    self.sent = kw
                raise TimeoutError("Timeout reading from socket")
            return await self.script(**kw)
        return call


def _fact() -> Any:
    return make_fact("own", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "", 1_700_000_000_000,
                     Limits(), "event_time_ms")


async def _read_one(r: Any) -> Any:
    """An entry added to the stream and read by the consumer: pending to it."""
    entry = await r.xadd(STREAM, F("own", "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
    await r.xreadgroup(GROUP, NAME, {STREAM: ">"})
    return entry


async def _writes(desk: QuarantineStream, writer: Any, entry: Any, run: int) -> bool:
    """Whether ``desk``'s quarantine write of a fact, acknowledging ``entry`` under ``run``, lands."""
    return bool(await desk.write(writer, [(_fact(), "late")], Acks(GROUP, NAME, [(STREAM, entry)], run)) == [True])


def _at_address(r: Any, redrawn: Any = None) -> DepartedConsumers:
    """The departed sweep of a process serving at ``NAME``'s address (10.0.0.3:1, live there), ``claim_idle_ms`` 1 s."""
    return DepartedConsumers(r, [STREAM], GROUP, NAME, lambda: {"10.0.0.3:1"}, 1_000, quarantine=QUARANTINE,
                             redrawn=redrawn)


async def _drawn_after_a_lost_answer(desk: QuarantineStream, lossy: _FirstAnswerLost, mark: str) -> int:
    """A draw whose first answer is lost (the ``TimeoutError`` its caller retries after), then retried with the same
    token: the run the retry returns."""
    with contextlib.suppress(TimeoutError):
        await desk.run_of(lossy, GROUP, NAME, mark)
    return await desk.run_of(lossy, GROUP, NAME, mark)


async def _serving_writes(r: Any, desk: QuarantineStream, serving: DepartedConsumers, writer: Any) -> bool:
    """Whether the quarantine write of the process serving at the address (``serving``, ``desk``), acknowledging an
    entry read now under the run it keeps, lands."""
    entry = await _read_one(r)
    return await _writes(desk, writer, entry, await serving.kept_run(desk))


async def _swept_by_an_older_version(r: Any, run: int) -> None:
    """A sweep of a version that deleted the draws' record with the run (or the record expired; the sweep leaves it
    now): the run key and the record gone, ``run`` the highest run swept."""
    await r.delete(run_key(QUARANTINE, GROUP, NAME), drawn_key(QUARANTINE, GROUP, NAME))
    await r.set(swept_runs_key(QUARANTINE), run)


async def _drawn_again_past(r: Any, desk: QuarantineStream, writer: Any, mark: str, late: int) -> None:
    """The next sweep round draws the run again past ``late`` (the process's own late draw, not another's fence):
    its write lands, and the run is kept since."""
    again = await desk.keep_run(r, GROUP, NAME, mark)
    assert again > late, "drawn again past its own late draw"
    entry = await _read_one(r)
    assert await _writes(desk, writer, entry, again), "its write lands"
    assert await desk.keep_run(r, GROUP, NAME, mark) == again, "kept since"


async def _paused_ones_late_draw_fences_nothing(r: Any, writer: Any, lossy: _FirstAnswerLost, before: int,
                                                serving: DepartedConsumers, serving_desk: QuarantineStream) -> None:
    """Another process starts at the paused one's address (``serving``: a later run, E8, its fence); only then does
    the paused one's first draw (``lossy``'s, retried and answered ``before``) land: it returns that run and moves
    nothing past the run in use, and the process serving there writes."""
    run = await serving.kept_run(serving_desk)  # started at the address while the other was paused
    assert run > before
    assert int(await lossy.script(**lossy.sent)) == before, "landing late, the paused one's draw: its run"
    assert int(await r.get(run_key(QUARANTINE, GROUP, NAME))) == run, "the key not moved past the run in use"
    assert await _serving_writes(r, serving_desk, serving, writer), "the one serving there writes"


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """A client for the test's own calls and the service's writer, the group made."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        yield r, writer
    finally:
        await writer.aclose()
        await r.aclose()


async def test_a_retried_draw_whose_lost_answer_landed_returns_the_same_run(redis_url: str) -> None:
    """The draw landed, its answer lost: the retry returns that run; the key is not moved on. Before: the retry
    drew a second run (``INCR``), the first one's run left unused."""
    r = aioredis.Redis.from_url(redis_url)
    desk, lossy = QuarantineStream(QUARANTINE, 10), _FirstAnswerLost(r, landed=True)
    sweep = _at_address(r)
    try:
        with contextlib.suppress(TimeoutError):
            await desk.run_of(lossy, GROUP, NAME, sweep.mark)
        landed = int(await r.get(run_key(QUARANTINE, GROUP, NAME)))
        assert await desk.run_of(lossy, GROUP, NAME, sweep.mark) == landed, "the retry returns the run drawn"
        assert int(await r.get(run_key(QUARANTINE, GROUP, NAME))) == landed, "no second run drawn"
    finally:
        await r.aclose()


async def test_a_lost_draw_landing_after_its_retry_leaves_the_run_in_use(clients: tuple[Any, Any]) -> None:
    """The draw's answer lost before it reached Redis, retried, answered; the first lands late: it returns the
    run the retry drew and moves nothing, and the process's writes land. Before: the late draw moved the key past
    the run in use and every write was refused (``CONCURRENT_CHANGE``) till a sweep round drew again."""
    r, writer = clients
    desk, lossy = QuarantineStream(QUARANTINE, 10), _FirstAnswerLost(r, landed=False)
    sweep = _at_address(r)
    run = await _drawn_after_a_lost_answer(desk, lossy, sweep.mark)
    assert int(await lossy.script(**lossy.sent)) == run, "landing late, the same draw: the same run"
    assert int(await r.get(run_key(QUARANTINE, GROUP, NAME))) == run, "the key not moved past it"
    entry = await _read_one(r)
    assert await _writes(desk, writer, entry, run), "its write lands"


async def test_a_process_whose_lost_draw_landed_before_its_retry_never_fences_out_another_at_its_address(
        clients: tuple[Any, Any]) -> None:
    """A draw whose answer was lost but which landed before its retry; the process then paused past its lease,
    another started at its address under the same consumer name (a later run, E8), and the paused one back reaches
    its sweep round before its renewal stops it: the key past its run is the other's fence. It keeps its run
    (its writes refused), the process serving there keeps its own (its writes land). Before: the lost draw stayed
    counted as one that might land yet, the other's draw taken for it, the run drawn again above the other's and
    the process serving there fenced out."""
    r, writer = clients
    paused_desk, serving_desk = QuarantineStream(QUARANTINE, 10), QuarantineStream(QUARANTINE, 10)
    paused, serving = _at_address(r), _at_address(r)
    with contextlib.suppress(TimeoutError):
        await paused_desk.run_of(_FirstAnswerLost(r, landed=True), GROUP, NAME, paused.mark)
    before = await paused.kept_run(paused_desk)  # its start retried: answered
    run = await serving.kept_run(serving_desk)  # started at the address while the other was paused
    assert run > before
    entry = await _read_one(r)
    await paused.sweep()  # the paused one back: its sweep round before its renewal stops it
    assert await paused.kept_run(paused_desk) == before, "the other's draw is no draw of its own"
    assert await _writes(serving_desk, writer, entry, run), "the one serving there writes"
    assert await serving.kept_run(serving_desk) == run


async def _swept(r: Any, run: int) -> None:
    """What the departed sweep does to this consumer's run ``run``: its key deleted, the run kept in its draws' record
    (``runs.SWEPT``) and as the highest swept."""
    await r.delete(run_key(QUARANTINE, GROUP, NAME))
    await r.zadd(drawn_key(QUARANTINE, GROUP, NAME), {runs.SWEPT: run})
    await r.set(swept_runs_key(QUARANTINE), run)


async def test_a_run_a_sweep_deleted_is_drawn_again_counted_and_said_once(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The one run drawn again at a sweep round: one a sweep deleted (its key gone, its own run swept at or above
    it). Counted (``atp_ingest_quarantine_runs_redrawn_total``) and said (``quarantine_run_drawn_again``), once."""
    r = aioredis.Redis.from_url(redis_url)
    registry = CollectorRegistry()
    desk, metrics = QuarantineStream(QUARANTINE, 10), IntakeMetrics(registry)
    own = _at_address(r, redrawn=metrics.ingest_quarantine_runs_redrawn)
    try:
        run = await own.kept_run(desk)
        await _swept(r, run)
        again = await own.kept_run(desk)
        assert again == run + 1 and await own.kept_run(desk) == again
        said = [(getattr(rec, "run_before", None), getattr(rec, "run_now", None), getattr(rec, "why", None))
                for rec in caplog.records if getattr(rec, "event", "") == "quarantine_run_drawn_again"]
        assert said == [(run, again, "swept")]
        assert registry.get_sample_value("atp_ingest_quarantine_runs_redrawn_total") == 1
    finally:
        await r.aclose()


async def test_a_lost_draw_landing_after_a_sweep_took_its_run_is_drawn_past_at_the_next_sweep_round(
        clients: tuple[Any, Any]) -> None:
    """A draw's answer lost before it reached Redis, retried and answered; a sweep not seeing the process live
    deletes its run with the draw's record; the lost draw lands after that, finds no record and draws a run past the
    run in use. The key past the run is this process's own draw (the record names its token), not another's fence:
    the next sweep round draws its run again, and its writes land. Else they were refused for as long as it ran."""
    r, writer = clients
    desk, lossy = QuarantineStream(QUARANTINE, 10), _FirstAnswerLost(r, landed=False)
    own = _at_address(r)
    run = await _drawn_after_a_lost_answer(desk, lossy, own.mark)
    await _swept_by_an_older_version(r, run)
    late = int(await lossy.script(**lossy.sent))  # the lost draw lands now
    assert late > run
    await _drawn_again_past(r, desk, writer, own.mark, late)


async def test_a_lost_draw_landing_after_the_run_was_drawn_again_is_drawn_past_at_the_next_sweep_round(
        clients: tuple[Any, Any]) -> None:
    """A draw's answer lost before it reached Redis, retried and answered; a sweep not seeing the process live
    deletes its run, and the next sweep round draws the run again (a new draw, a new token); swept again with the
    draws' record (a sweeper of a version that deleted it), the key gone as when its process read it, the first draw
    lands only now: no record of its token, so it draws a run past the one in use.
    That key is still this process's own draw, not another's fence: the next sweep round draws
    past it, and its writes land. Before, only the last draw's token was kept: the key was taken for another's fence
    and every quarantine write refused (its entries pending) for as long as the process ran."""
    r, writer = clients
    desk, lossy = QuarantineStream(QUARANTINE, 10), _FirstAnswerLost(r, landed=False)
    own = _at_address(r)
    run = await _drawn_after_a_lost_answer(desk, lossy, own.mark)
    await _swept(r, run)
    redrawn = await desk.keep_run(r, GROUP, NAME, own.mark)
    assert redrawn > run
    await _swept_by_an_older_version(r, redrawn)  # swept again, by a version that left no mark
    late = int(await lossy.script(**lossy.sent))  # the first draw lands now, the key gone (as its process read it)
    assert late > redrawn
    await _drawn_again_past(r, desk, writer, own.mark, late)


async def test_a_lost_draw_of_a_process_paused_landing_after_another_started_at_its_address_fences_nothing(
        clients: tuple[Any, Any]) -> None:
    """A process's draw whose answer was lost before it reached Redis, retried and answered; the process paused
    past its lease, another started at its address under the same consumer name and drew its run (a later run, E8:
    its fence); only then does the paused one's first draw land. It is that process's draw, answered already: it
    returns the run it drew and moves nothing, and the process serving there writes. Before: the record named the
    other's draw, so the late one drew a run past the one in use, which the process serving there took for a later
    process's fence: every quarantine write refused (its entries pending) for as long as it ran."""
    r, writer = clients
    paused_desk, serving_desk = QuarantineStream(QUARANTINE, 10), QuarantineStream(QUARANTINE, 10)
    lossy = _FirstAnswerLost(r, landed=False)
    paused, serving = _at_address(r), _at_address(r)
    before = await _drawn_after_a_lost_answer(paused_desk, lossy, paused.mark)  # its start retried: answered
    await _paused_ones_late_draw_fences_nothing(r, writer, lossy, before, serving, serving_desk)


async def test_a_lost_draw_landing_after_a_sweep_and_another_process_at_its_address_fences_nothing(
        clients: tuple[Any, Any]) -> None:
    """As above, but a sweeper took the paused process's consumer for gone (its run key deleted) before the other
    started at its address: the sweep leaves the draws' record, so the paused one's first draw, landing only now,
    still returns the run it drew and moves nothing past the run in use. Deleted with the run key, the late draw
    found no record and drew past it: the process serving there fenced out for as long as it ran."""
    r, writer = clients
    paused_desk, serving_desk = QuarantineStream(QUARANTINE, 10), QuarantineStream(QUARANTINE, 10)
    lossy = _FirstAnswerLost(r, landed=False)
    paused, serving = _at_address(r), _at_address(r)
    sweeper = DepartedConsumers(r, [STREAM], GROUP, "atp-1@10.0.0.4:1", lambda: {"10.0.0.4:1"}, 0,
                                quarantine=QUARANTINE)
    before = await _drawn_after_a_lost_answer(paused_desk, lossy, paused.mark)
    await r.xgroup_createconsumer(STREAM, GROUP, NAME)
    await r.delete(paused.mark)  # its answered mark past claim_idle_ms: the paused one taken for gone
    assert await sweeper.sweep() == [NAME]
    assert not await r.exists(run_key(QUARANTINE, GROUP, NAME)), "its run swept"
    await _paused_ones_late_draw_fences_nothing(r, writer, lossy, before, serving, serving_desk)


async def test_a_lost_draw_of_a_process_gone_landing_after_the_next_one_at_its_address_drew_fences_nothing(
        clients: tuple[Any, Any]) -> None:
    """A process's draw whose answer was lost and which had not reached Redis when the process went (a crash, a
    kill); the next process at its address draws its run; only then does the gone one's draw land. No draw of a
    process serving: it moves nothing past the run in use (the draw names the run key as its process read it, and
    the key has moved since), and the process serving there writes. Before: it drew a run past the run in use, a
    token no process there knows, which the one serving took for a later process's fence: every quarantine write
    refused (its entries pending) for as long as it ran."""
    r, writer = clients
    gone_desk, serving_desk = QuarantineStream(QUARANTINE, 10), QuarantineStream(QUARANTINE, 10)
    lossy = _FirstAnswerLost(r, landed=False)
    gone, serving = _at_address(r), _at_address(r)
    with contextlib.suppress(TimeoutError):
        await gone_desk.run_of(lossy, GROUP, NAME, gone.mark)  # and the process went
    run = await serving.kept_run(serving_desk)
    await lossy.script(**lossy.sent)  # the gone one's draw lands now
    assert int(await r.get(run_key(QUARANTINE, GROUP, NAME))) == run, "the key not moved past the run in use"
    assert await _serving_writes(r, serving_desk, serving, writer), "the one serving there writes"


async def test_a_sweep_asks_no_delete_of_the_draws_record_it_leaves(redis_url: str) -> None:
    """The departed sweep leaves a consumer's draws' record to expire, so its check of the ACL (a user's rights
    changed while serving) asks no ``DEL`` of it: a user allowed to delete the consumer's other keys, not that one,
    still sweeps. Asked, every sweep was refused whole, no gone consumer ever removed."""
    user, password = "atp-sweep", "pw-sweep"
    admin = aioredis.Redis.from_url(redis_url)
    url = redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    gone = "atp-1@10.0.0.9:1"
    await admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", "&*", "~*", "+@all", "-del",
                                "(+del ~atp:in:* ~*:run:*)")
    r = aioredis.Redis.from_url(url)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(STREAM, GROUP, gone)
        await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, gone)
        sweep = DepartedConsumers(r, [STREAM], GROUP, NAME, lambda: {"10.0.0.3:1"}, 0, quarantine=QUARANTINE)
        assert await sweep.sweep() == [gone]
        assert await r.exists(drawn_key(QUARANTINE, GROUP, gone)), "its draws' record left to expire"
    finally:
        await r.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


class _KeyMovedAfterEachRead:
    """A client at whose every read of the run key another draw at that name lands just after (the key moved on):
    each try of the draw sees a key it no longer holds. Gives up (``RuntimeError``) past 200 reads."""

    def __init__(self, client: Any) -> None:
        self._client, self.reads = client, 0

    async def get(self, key: str) -> Any:
        self.reads += 1
        if self.reads > 200:
            raise RuntimeError(f"still drawing after {self.reads - 1} tries: runs.draw has no bound")
        seen = await self._client.get(key)
        await self._client.incr(key)  # another's draw, landing between the read and the try
        return seen

    def register_script(self, source: str) -> Any:
        return self._client.register_script(source)


async def test_a_draw_the_key_moves_under_at_every_try_gives_up_after_its_bound_and_is_retried(
        redis_url: str) -> None:
    """A draw whose key moves between each read and its try draws nothing (-1) and reads again — up to
    ``runs.DRAW_TRIES`` tries, then an error the reader retries after its backoff (``RedisError``), the token kept:
    its retry draws once. Before: ``runs.draw`` tried for ever, no wait, the reader's start (or its sweep round)
    wedged there."""
    r = aioredis.Redis.from_url(redis_url)
    desk, moving = QuarantineStream(QUARANTINE, 10), _KeyMovedAfterEachRead(r)
    try:
        with pytest.raises(RedisError) as raised:
            await desk.run_of(moving, GROUP, NAME)
        assert moving.reads == runs.DRAW_TRIES, f"{raised.value}"
        held = int(await r.get(run_key(QUARANTINE, GROUP, NAME)))
        assert await desk.run_of(r, GROUP, NAME) == held + 1, "retried, one run drawn"
        assert await r.zcard(drawn_key(QUARANTINE, GROUP, NAME)) == 1, "under the one token"
    finally:
        await r.aclose()
