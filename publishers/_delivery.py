"""What every adapter shares: the ``Adapter`` protocol, ``DeliveryError``, ``Refused`` and the JSON form of
an update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reservation import ChannelUpdate


class DeliveryError(Exception):
    """A batch was not delivered. ``retryable`` False: retrying cannot help (dead-letter at once)."""

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


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


def update_json(u: ChannelUpdate) -> dict[str, Any]:
    """The JSON form of an update (webhook and jsonl)."""
    return {
        "channel": u.channel, "sku": u.sku, "location": u.location or None, "quantity": u.quantity,
        "previous": u.previous, "status": u.status.value, "version": u.version,
        "event_time_ms": u.event_time, "published_at_ms": u.published_at,
    }
