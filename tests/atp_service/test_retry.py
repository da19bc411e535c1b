"""The one backoff every retry loop uses (atp_service/retry.py): pure logic, no sleeping but zero."""

from __future__ import annotations

import asyncio

import pytest

from atp_service.retry import Backoff, BackoffPolicy, retry_until_done


def test_waits_grow_to_the_bound_and_reset() -> None:
    backoff = Backoff(BackoffPolicy(first_s=0.1, max_s=0.5, jitter=0), rng=lambda: 0.0)
    assert [round(backoff.next_delay(), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.next_delay() == 0.1 and backoff.failures == 1


def test_jitter_takes_off_at_most_its_fraction() -> None:
    low = Backoff(BackoffPolicy(first_s=1.0, max_s=1.0, jitter=0.25), rng=lambda: 0.999999)
    high = Backoff(BackoffPolicy(first_s=1.0, max_s=1.0, jitter=0.25), rng=lambda: 0.0)
    assert 0.75 <= low.next_delay() < high.next_delay() == 1.0


@pytest.mark.parametrize("kw", [dict(first_s=0, max_s=1), dict(first_s=2, max_s=1),
                                dict(first_s=1, max_s=1, multiplier=0.5), dict(first_s=1, max_s=1, jitter=2)])
def test_a_policy_out_of_range_is_refused_naming_the_field(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(k for k in ("jitter", "multiplier", "first_s") if k in kw))):
        BackoffPolicy(**kw)


async def test_retries_only_the_named_errors_and_reports_each() -> None:
    tries: list[int] = []
    seen: list[str] = []

    async def attempt() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError(f"down {len(tries)}")
        return "up"

    policy = BackoffPolicy(first_s=0.001, max_s=0.001)
    assert await retry_until_done(attempt, (ConnectionError,), policy, lambda e, _w: seen.append(str(e))) == "up"
    assert seen == ["down 1", "down 2"]

    async def broken() -> None:
        raise KeyError("a bug is not retried")

    with pytest.raises(KeyError):
        await retry_until_done(broken, (ConnectionError,), policy)


async def test_cancelled_while_waiting_it_stops_at_once() -> None:
    async def never() -> None:
        raise ConnectionError("down")

    task = asyncio.ensure_future(retry_until_done(never, (ConnectionError,), BackoffPolicy(first_s=60, max_s=60)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

