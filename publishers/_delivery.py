"""What every adapter shares: the ``Adapter`` protocol, ``DeliveryError``, ``Refused``, the JSON form of
an update, the backoff between attempts, and ``in_halves``: a batch refused as a whole for what may be
one of its updates, sent again in halves."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from atp_service.logs import EveryInterval
from reservation import ChannelUpdate, TokenBucket

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeliveryError(Exception):
    """A batch was not delivered. ``retryable`` False: retrying cannot help (dead-letter at once).
    ``splittable``: a refusal of the request that may be for one of its updates (a value the
    destination cannot take) or its size, so a part of the batch may be taken (see ``in_halves``);
    False for a refusal any part would get (credentials, permissions, the endpoint)."""

    def __init__(self, reason: str, retryable: bool = True, splittable: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retryable, self.splittable = reason, retryable, splittable
        self.taken: list[ChannelUpdate] = []
        self.refused: list[Refused] = []
        """Of a batch sent in parts (``in_halves``), a retryable failure: the parts answered before it, taken
        (delivered) and refused alone; the rest failed."""


@dataclass(frozen=True, slots=True)
class Refused:
    """One update of a batch the destination refused for good: dead-lettered alone with ``reason``, the
    rest of the batch delivered."""

    update: ChannelUpdate
    reason: str


class Adapter(Protocol):
    name: str

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> Sequence[Refused] | None:
        """Deliver ``updates``. Raises ``DeliveryError`` when the batch as a whole was not delivered;
        returns the updates refused one by one (the rest were delivered), or None / nothing refused."""
        ...

    async def close(self) -> None: ...


def backoff_s(base_s: float, max_s: float, attempt: int) -> float:
    """Before attempt ``attempt + 1``: exponential backoff with full jitter, uniform in
    [base*2^(n-1)/2, base*2^(n-1)], capped at ``max_s``."""
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)


async def take_tokens(bucket: TokenBucket, n: int, now_ms: Callable[[], int], sleep: Callable[[float], Awaitable[None]],
                      waited: Callable[[], None]) -> None:
    """``n`` tokens of the rate limit (``--rate``, ``--burst``), each waited for; ``waited`` told each wait."""
    for _ in range(n):
        bucket.refill(now_ms())
        while not bucket.try_take():
            waited()
            await sleep(bucket.ms_until_token() / 1000)
            bucket.refill(now_ms())


async def in_requests(items: list[T], size: int, send: Callable[[list[T]], Awaitable[bool]]) -> list[T]:
    """``items`` sent again in requests of ``size`` (the size they went in: at most ``--batch`` and ``--burst``; one
    request of them all went past both, and past Shopify's 250, its first waiting for the tokens of its last, C2),
    until one fails (``send``: False): those not sent yet, for after the next request answered."""
    for at in range(0, len(items), size):
        if not await send(items[at:at + size]):
            return items[at + size:]
    return []


def update_json(u: ChannelUpdate) -> dict[str, Any]:
    """The JSON form of an update (webhook and jsonl)."""
    return {
        "channel": u.channel, "sku": u.sku, "location": u.location or None, "quantity": u.quantity,
        "previous": u.previous, "status": u.status.value, "version": u.version,
        "event_time_ms": u.event_time, "published_at_ms": u.published_at,
    }


Send = Callable[[list[ChannelUpdate]], Awaitable[Sequence[Refused] | None]]
Keyed = list[tuple[str, ChannelUpdate]]
"""Updates with their keys (``sku<TAB>location``)."""


def split_answered(chunk: Keyed, taken: list[ChannelUpdate], refused: Sequence[Refused]) -> tuple[Keyed, Keyed]:
    """Of ``chunk``, those ``taken`` but not ``refused``, and those neither (left to retry)."""
    gone = {r.update.version for r in refused}  # versions are unique within a channel
    took = {u.version for u in taken} - gone
    return [(k, u) for k, u in chunk if u.version in took], [(k, u) for k, u in chunk if u.version not in took | gone]


SPLIT_LOG_EVERY_S = 1.0
"""An adapter writes at most one ``publisher_batch_split`` line this often, the next saying in ``left_out`` how
many batches split were left out: a line for every part refused (n - 1 for a batch of n a destination refuses
whole, a schema changed under the publisher) wrote a line per update delivered. The dead letters have every one."""


async def in_halves(channel: str, updates: list[ChannelUpdate], send: Send,
                    refuse: Callable[[ChannelUpdate, str], Refused] = Refused,
                    lines: EveryInterval | None = None) -> list[Refused]:
    """``send(updates)``; a batch refused as a whole for good with a ``splittable`` refusal is sent again
    in halves, in order (the stock-outs lead the batch: C2), down to single updates: at most 2n - 1
    sends. One poison update refused the whole batch, its stock-outs with it, and those were
    redelivered only at the next start (C2, C4). A part refused for good after a split is returned
    refused (``refuse(update, reason)``: dead-lettered alone, the rest delivered); a retryable
    failure of a part is raised naming the parts answered before it (``taken``, ``refused``): its retry
    sends only the rest (the whole batch was retried, then dead-lettered, the parts the destination took
    with it: dead letters and metrics said they failed); a batch of one refused is raised as it is.
    The split is said once per batch, not per part, and at most once per ``lines``' interval (the
    adapter's: ``SPLIT_LOG_EVERY_S``)."""
    try:
        return list(await send(updates) or ())
    except DeliveryError as exc:
        if not _split(exc, updates):
            raise
        fields = (lines or EveryInterval(SPLIT_LOG_EVERY_S)).fields(  # None: a line for each batch split
            event="publisher_batch_split", channel=channel, updates=len(updates), reason=exc.reason[:300])
        if fields is not None:
            log.warning("%s: %d updates refused in one request (%s): sending halves, so that only the updates "
                        "refused alone are dead-lettered", channel, len(updates), exc.reason[:300], extra=fields)
    return await _halves(updates, send, refuse)


def _split(exc: DeliveryError, updates: list[ChannelUpdate]) -> bool:
    """Whether ``updates``, refused with ``exc``, are sent again in halves."""
    return not exc.retryable and exc.splittable and len(updates) > 1


async def _sent_or_halved(updates: list[ChannelUpdate], send: Send,
                          refuse: Callable[[ChannelUpdate, str], Refused]) -> list[Refused]:
    """A part of a split batch: ``in_halves`` without a line (the batch's is said)."""
    try:
        return list(await send(updates) or ())
    except DeliveryError as exc:
        if not _split(exc, updates):
            raise
    return await _halves(updates, send, refuse)


async def _halves(updates: list[ChannelUpdate], send: Send,
                  refuse: Callable[[ChannelUpdate, str], Refused]) -> list[Refused]:
    half, refused, taken = len(updates) // 2, list[Refused](), list[ChannelUpdate]()
    for part in (updates[:half], updates[half:]):
        try:
            part_refused = await _sent_or_halved(part, send, refuse)
        except DeliveryError as exc:
            if exc.retryable:
                exc.taken, exc.refused = taken + exc.taken, refused + exc.refused
                raise
            part_refused = [refuse(u, exc.reason) for u in part]
        refused += part_refused
        gone = {r.update.version for r in part_refused}  # versions are unique within a channel
        taken += [u for u in part if u.version not in gone]
    return refused
