"""``--input-streams --late-letters`` (``inputletters.py``): the readers' dead letters' scripts and fence settings
landing late, after their callers gave up on them (``dead_letters._WRITE``, ``fence.Fence.raised``)."""

from __future__ import annotations

import pytest

from atp_service.intake.fence import FENCE_KEPT_MS, Fence
from tests.sim import inputletters
from tests.sim.checks import Violation
from tests.sim.inputcluster import InputsClusterDriver
from tests.sim.inputdriver import InputsDriver
from tests.sim.tally import Tally

LATE_SEEDS = 3
"""Seeds of 60 steps each, one process and three: about a second each."""
UNFENCED_SEED = 23
"""``--input-streams --fact-times --late-letters``: a refusal (E7) whose dead letters' script's answer was lost lands
after its entry was delivered again to its reader, which judged it by a clock moved on and applied it."""


async def _same_token(self: Fence) -> bytes:
    """``Fence.raised`` setting the token it set before: Redis holds again the one a write in doubt carried."""
    async with self._lock:
        if self._owed or self.token is None:
            await self._client.set(self.key, f"{self._nonce}-1".encode(), px=FENCE_KEPT_MS)
            self.token, self._owed = f"{self._nonce}-1".encode(), False
        return self.token


async def _unfiltered(self: Fence, entries: list[tuple[str, bytes, object]]) -> list[tuple[str, bytes, object]]:
    """``Fence.landed`` raising the fence but judging again the entries whose write in doubt landed before it."""
    await FENCE_LANDED(self, entries)  # type: ignore[arg-type]
    return entries


FENCE_LANDED = Fence.landed
FENCES_OFF = {"no token set anew": ("doubt", lambda self, entries: None, UNFENCED_SEED),
              "the same token set again": ("raised", _same_token, 16),
              "entries landed before the fence judged again": ("landed", _unfiltered, 191)}
"""Ways the reader's fence can be got wrong, each with a seed the simulation finds it at."""

async def test_every_input_entry_is_applied_or_dead_lettered_once_whatever_its_late_letters_do() -> None:
    """Dead letters' scripts landing once their entries were read again (or a few calls later), fence settings
    landing over the tokens set since: every entry whose fact has no other entry applied, quarantined or dead-lettered
    as stamped in the future, exactly one — never both, never none (E6, E7, E8) — and every entry acknowledged at the
    end (a late setting fences its reader's writes until it sets its fence again: liveness)."""
    tally = Tally()
    for seed in range(LATE_SEEDS):
        one = InputsDriver(seed, tally, fact_times=True)
        inputletters.enabled(one.redis, seed)
        await one.run(60)
        three = InputsClusterDriver(seed, 3, tally, partition=True, suspends=True, new_addresses=True, fact_times=True)
        inputletters.enabled(three.redis, seed)
        await three.run(60)
    assert tally.input_letters_late and tally.input_fences_late and tally.input_refused_ahead, tally


@pytest.mark.parametrize("off", list(FENCES_OFF))
async def test_the_simulation_finds_a_late_refusal_over_an_entry_applied_since_without_the_fence(
        off: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader's fence got wrong (``FENCES_OFF``): a late script writes its letter saying refused, acknowledges the
    entry and keeps it refused after the reader applied its fact — the defect of ``test_refused_letter_in_doubt`` —
    and the end checks say so (E7, E8). A script landing at the entry's acknowledgement (``AT_ACK_P``) is past the
    reader's check of what landed before its fence (``Fence.landed``): the same token set again is found so only."""
    name, wrong, seed = FENCES_OFF[off]
    monkeypatch.setattr(Fence, name, wrong)
    driver = InputsDriver(seed, Tally(), fact_times=True)
    inputletters.enabled(driver.redis, seed)
    with pytest.raises(Violation, match="applied, its dead letter saying it was refused as stamped in the future"):
        await driver.run(60)


async def test_a_late_letter_lands_nothing_with_the_fence() -> None:
    """``UNFENCED_SEED`` with the reader's fence: the late script carries a token set over since, and lands nothing."""
    tally = Tally()
    driver = InputsDriver(UNFENCED_SEED, tally, fact_times=True)
    inputletters.enabled(driver.redis, UNFENCED_SEED)
    await driver.run(60)
    assert tally.input_letters_late, tally


@pytest.mark.parametrize("seed", [18, 24])
async def test_every_late_call_lands_before_the_end_checks(seed: int) -> None:
    """A late script or fence setting still held in the network when every entry is done lands all the same (Redis
    answering): the drain goes on until it has, so the end checks see what it did — a letter over an entry applied
    since, a setting fencing its reader's next writes (liveness). Seeds 18 and 24 (one process) end with
    scripts and settings in flight: without the drain waiting for them they never landed, what they did never
    checked."""
    driver = InputsDriver(seed, Tally(), fact_times=True)
    inputletters.enabled(driver.redis, seed)
    await driver.run(60)
    counts = driver.redis.letters.counts
    assert not driver.redis.letters.late, driver.redis.letters.late
    assert counts["fence late"] and counts["fence landed late"] == counts["fence late"], counts
    assert counts["dead letter landed late"] == counts["dead letter late"], counts


async def test_a_reader_started_again_sets_its_fence_before_it_reads() -> None:
    """Seed 10: the reader's dead letters' script was in doubt, the reader stopped and started again, and the script
    landed after the new reader's read delivered its entry again: a reader started without setting its fence (as
    ``StreamIngestor.start`` does, before any read) judged it by a clock moved on and applied it, the script's letter
    saying refused. The drivers start their readers as the service does (``inputreaders.started``)."""
    tally = Tally()
    driver = InputsDriver(10, tally, fact_times=True)
    inputletters.enabled(driver.redis, 10)
    await driver.run(60)
    assert tally.input_letters_late, tally
