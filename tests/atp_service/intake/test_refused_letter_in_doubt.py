"""A dead-letter script (``dead_letters._WRITE``) whose answer was lost (a timeout: redis-py drops that connection, and
the script, sent, may still reach Redis) is in doubt. The reader reads its own pending entries again on another
connection, which Redis does not order with the dropped one: the script landing after that read delivered the entry
again and before the reader acknowledged it found it pending to this consumer still. Real redis-server, a real
service; the script's call held (its answer lost) and run when the pass over the pending entries acknowledges. The
reader fences its dead-letter writes (``fence.py``): landing late, the script writes nothing."""

from __future__ import annotations

from typing import Any

import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service import ManualClock
from atp_service.intake import dead_letters
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.intake.test_group_lost_pending import STREAM, _on_hand_is
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default


async def test_a_refusal_in_doubt_landing_after_the_entry_was_read_again_and_applied_lands_nothing(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``future`` judged in the future (E7); its dead-letter script's answer lost. The pass over the pending
    entries read it again, judged it within the skew (the clock moved on) and applied it; before its acknowledgement
    the script landed, found it pending to this consumer, wrote its letter, acknowledged it and kept it refused:
    applied, its letter saying refused."""
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock)
    ingestor = service.ingestor
    assert ingestor is not None
    register, real_ack = ingestor._client.register_script, ingestor._settler.ack
    late: list[Any] = []
    landed: list[Any] = []

    def registered(source: str) -> Any:
        script = register(source)
        if source != dead_letters._WRITE:
            return script

        async def call(keys: list[Any], args: list[Any]) -> Any:
            if not late:  # sent, its answer lost: it lands later
                late.append((script, keys, args))
                clock.advance(2000)  # within the skew now, before its entry can be read again
                raise RedisTimeoutError("Timeout reading from socket")
            return await script(keys=keys, args=args)

        return call

    async def acked(done: list[tuple[str, bytes]]) -> None:
        if late and not landed and any(stream == STREAM for stream, _ in done):
            script, keys, args = late[0]
            landed.append(await script(keys=keys, args=args))  # the script in doubt lands now
        await real_ack(done)

    ingestor._client.register_script = registered  # type: ignore[method-assign]
    ingestor._settler.ack = acked  # type: ignore[method-assign]
    r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(lambda: bool(late), "future judged in the future, its dead letter's answer lost")
    await until(lambda: bool(landed), "future read again, the script in doubt landed")
    await wait_consumed(redis_url, [STREAM])
    letters = [fields[b"_id"] for _, fields in r.xrange("atp:dlq")]
    applied = await _on_hand_is(client, 2)
    assert not (applied and letters), "applied by the pass, yet dead-lettered as refused by the write in doubt"
    assert applied, f"the pass judged it within the skew, yet it was not applied: {letters}"
    assert landed[0][-1] == 1, "the write in doubt landed past the fence"
