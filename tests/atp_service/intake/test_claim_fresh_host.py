"""A reader on a host booted moments ago: Python's monotonic clock counts from the boot, so it reads the host's uptime.
The claim of dead consumers' entries was due once ``claim_idle_ms / 2`` had passed since a last claim at 0: on a host
up for less than that (15 minutes at the default ``claim_idle_ms``) no claim ran, and a consumer gone for good kept
its pending entries, unapplied, until the host had been up that long. Real redis-server."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from atp_service.engine.clock import Ticks
from tests.atp_service.intake.claim_helpers import POS, claiming_ingestor

UPTIME_S = 5.0


def booted_moments_ago() -> Ticks:
    """The reader's monotonic clock as a host up for ``UPTIME_S`` reads it (it still moves on)."""
    shift = time.monotonic() - UPTIME_S
    return lambda: time.monotonic() - shift


async def test_a_reader_on_a_host_just_booted_claims_at_its_first_step(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ingestor = claiming_ingestor(redis_url, POS, ticks=booted_moments_ago())
    ingestor._config = dataclasses.replace(ingestor._config, claim_idle_ms=1_800_000)  # the default's order
    claims: list[Any] = []
    claim = ingestor._claim

    async def counted() -> Any:
        claims.append(1)
        return await claim()

    monkeypatch.setattr(ingestor, "_claim", counted)
    try:
        await ingestor._create_groups()
        ingestor._retry_own_pending = False  # straight to the claim's turn
        await ingestor.step()
        assert claims == [1], "no claim at the first step of a reader on a host up for seconds"
    finally:
        await ingestor._client.aclose()
