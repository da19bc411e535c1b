"""A stop of the input-stream reader ends even when a batch's Redis call loses its cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from atp_service.config import IngestSettings, ServiceConfig
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics


class _LosesOneCancellation:
    """A client whose pipeline's ``execute`` loses the first cancellation and then waits for an
    answer, as redis-py's send does under Python 3.11: its ``asyncio.wait_for`` returns the send's
    result when that finishes in the same turn as the cancellation, and the read of the reply goes on."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()

    def set_response_callback(self, *_: Any) -> None:
        pass

    def pipeline(self, transaction: bool) -> _LosesOneCancellation:
        return self

    async def __aenter__(self) -> _LosesOneCancellation:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def xack(self, *_: Any) -> None:
        pass

    async def execute(self) -> list[Any]:
        self.sent.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as the library loses it
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


async def test_a_stop_ends_a_batch_whose_acknowledgement_loses_the_cancellation() -> None:
    settings: IngestSettings = ServiceConfig(input_streams=("atp:in:pos",)).ingest_settings
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=IntakeMetrics())  # type: ignore[arg-type]
    client = _LosesOneCancellation()
    ingestor = StreamIngestor(client, desk, settings, None)  # type: ignore[arg-type]
    batch = asyncio.ensure_future(ingestor._settler.ack([("atp:in:pos", b"1-0")]))
    ingestor._batches.add(batch)  # a batch in flight, acknowledging what it applied
    await client.sent.wait()
    stopping = asyncio.ensure_future(ingestor.stop())
    finished, _ = await asyncio.wait([stopping], timeout=30)  # the test's own bound: without the fix, an hour
    assert finished, "the stop waited on a batch that went on after its cancellation was lost"
    stopping.result()
    assert batch.cancelled()
