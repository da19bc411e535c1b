"""Named, configurable bounds on everything a request can make the service hold."""

from __future__ import annotations

from dataclasses import dataclass

MAX_ON_HAND_CEILING = 2**53
"""The largest ``max_on_hand`` accepted: exact as a float64, and a thousand locations of it sum inside int64."""
MAX_QUANTITY_CEILING = 2**31 - 1
"""The largest ``max_quantity`` accepted: the store keeps what one fact sets (a count's quantity,
safety stock) in 32 bits a position."""
MAX_TTL_CEILING = 10 * 366 * 24 * 3600
"""The largest ``max_ttl_seconds`` accepted (ten years): an expiry stays a valid Timestamp (before
year 10000) and exact in epoch milliseconds."""
MAX_DURATION_MS_CEILING = MAX_TTL_CEILING * 1000
"""The largest ``retention_ms``, ``fact_grace_ms`` and ``fact_future_skew_ms`` accepted (ten years):
a fact allowed further ahead would move stream time past what a Timestamp can hold (ExplainAvailability
could no longer answer), and past 2**63 ms a fact's times would overflow the ledger's int64 columns
half-way through applying it."""
_DURATIONS_MS = ("retention_ms", "fact_grace_ms", "fact_future_skew_ms")
POSITIONS_LIMIT = "max_positions_per_shard"
"""The name a refusal at the bound on positions gives (CAPACITY_REACHED metadata ``limit``, the
``atp_capacity_refusals_total`` label)."""
DEDUPE_LIMIT = "max_dedupe_entries_per_shard"
"""The name a fact quarantined at the bound on E8's memory gives (its reason, the
``atp_capacity_refusals_total`` label)."""
CAPACITY_QUARANTINE = "capacity"
"""How the quarantine reason of a fact refused for want of room (a new position, E8's memory) begins."""
_POSITIVE = ("max_id_length", "max_lines", "min_ttl_seconds", "max_availability_keys", "max_events_per_call",
             "max_rows_per_load", "max_batch_reservations", "max_live_reservations_per_shard",
             "max_resolved_reservations_per_shard", "max_positions_per_shard",
             "max_dedupe_entries_per_shard")
"""Limits at 0 would refuse every request they bound (or every Reserve: no reservation may be live)."""
_NON_NEGATIVE = ("max_explain_holds", "max_ops_per_reservation", "retention_ms", "fact_grace_ms",
                 "fact_future_skew_ms")
"""Limits at 0 that still mean something (no holds listed, no partial operation, nothing kept, no
grace, no skew); below 0 they would refuse or quarantine everything (a negative grace: every fact
after the first late, E6)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Input and memory bounds enforced by validation and the ledger."""

    max_id_length: int = 128
    """Longest accepted sku, location, reservation_id, order_ref, channel, event_id, source or service name
    a ``grpc.health.v1.Health/Watch`` names (bytes), at most about a sixth of ``max_message_bytes`` (a
    Reserve of one line of ids that long answered within it; a start past it is refused naming both)."""

    max_quantity: int = 1_000_000
    """Largest quantity one line or one fact may carry (COUNT: absolute on-hand), and the largest
    safety stock (Q4) of a position, by SetSafetyStock or by the estate file. At most
    ``MAX_QUANTITY_CEILING`` (2**31 - 1)."""

    max_on_hand: int = 10**10
    """Farthest from 0 facts may take a position's on_hand (Q1), either way: a fact that would take
    it further is quarantined with its reason. on_hand is a sum over any number of facts, so no
    bound on one fact bounds it. With it every Q5 term stays far inside int64: reserved + committed
    <= max_on_hand (R2 grants only what is available), on_hand - reserved - committed >= -2 x
    max_on_hand (shipments lower on_hand with committed), safety stock <= max_quantity."""

    max_lines: int = 200
    """Most lines one reservation, release or fulfil request may carry."""

    min_ttl_seconds: int = 1
    """Shortest hold a Reserve may ask for."""

    max_ttl_seconds: int = 7 * 24 * 3600
    """Longest hold a Reserve may ask for."""

    default_ttl_seconds: int = 900
    """TTL used when a Reserve sends ``ttl_seconds = 0``."""

    max_availability_keys: int = 1000
    """Most positions one GetAvailability call may ask for."""

    max_events_per_call: int = 10_000
    """Most facts one RecordEvents call may carry."""

    max_rows_per_load: int = 100_000
    """Most rows one LoadCounts call may carry (a block of an ERP extract, ~2.4 MB of columns)."""

    max_batch_reservations: int = 1000
    """Most reservations one ReserveStream message may carry."""

    max_explain_holds: int = 1000
    """Most reservations one ExplainAvailability lists for a position."""

    max_ops_per_reservation: int = 64
    """Most distinct partial release/fulfil operation ids one reservation remembers."""

    max_live_reservations_per_shard: int = 2_000_000
    """Held or confirmed reservations one shard may carry before Reserve answers RESOURCE_EXHAUSTED."""

    max_resolved_reservations_per_shard: int = 8_000_000
    """Resolved reservations one shard may remember for their retention (R5) — refused ones
    included, besides the live ones ``max_live_reservations_per_shard`` bounds — before a Reserve with
    a new id answers RESOURCE_EXHAUSTED (about 870 bytes of memory each, a refused one ~680:
    benchmarks/RESULTS.md)."""

    max_positions_per_shard: int = 4_000_000
    """Positions (SKU x location) one shard may hold. Past it a fact naming a new position is
    quarantined (``capacity: ...``, E6: never dropped silently), and a LoadCounts or SetSafetyStock
    that would make one is refused whole with CAPACITY_REACHED; positions that exist keep working.
    Positions are never forgotten, so without it a source sending made-up SKUs grew the shard until
    the process was killed. 4 M is twice a shard's share of the 30 M-position estate on 16 shards.
    Memory at the bound: ~60-70 bytes a position of a stocked estate, ~540 of made-up SKUs (each its
    own SKU row and name, one position each: measured), so up to ~2.2 GB a shard."""

    max_dedupe_entries_per_shard: int = 16_000_000
    """Fact identities one shard may remember for dedupe (E8) at once. Past it a new fact (one E8 does
    not know) is quarantined (``capacity: ...``, never dropped silently) until forgetting (the grace
    window passing them) frees room; a resend of a fact remembered is still answered a duplicate.
    An identity inside the grace window is never forgotten early: that would apply a resend twice.
    Without it a source sending millions of distinct event ids within the grace window grew the
    shard until the process was killed. 16 M is about four times what a real estate reaches: on 16
    shards a day of 6 M facts (375 k a shard) plus two extracts of 30 M positions (1.9 M superseded
    counts a shard each). Memory at the bound: 32 bytes an identity sealed (~0.5 GB a shard), ~85
    bytes a fact all told (kept deltas: ~1.4 GB)."""

    retention_ms: int = 24 * 3600 * 1000
    """How long a resolved reservation is kept for idempotent replays (R5): at least 10 minutes (``atp-service``
    refuses less), at most ten years, and well above sixteen times the furthest any host's clock strays from the
    true time (UTC), a step forward and back again counted at its size, since the service never counts back (an
    order spanning groups whose id is used again tells a part of the order before it from its own by the part's age
    against it, R3; a SHIPMENT stamped half of it or more before the reservation it names was made is an earlier
    holder's of the id, fulfilling none, R4)."""

    fact_grace_ms: int = 24 * 3600 * 1000
    """E6: facts older than stream time minus this are quarantined, not applied (at most ten years)."""

    fact_future_skew_ms: int = 5 * 60 * 1000
    """E7: facts stamped further than this ahead of the service clock are refused (at most ten years)."""

    def __post_init__(self) -> None:
        # Q5 stays exact in int64 (the store, the channels' numpy sums over locations) and in the
        # float64 of a channel's percent buffer, and a position's first fact always fits.
        if not 0 < self.max_quantity <= self.max_on_hand <= MAX_ON_HAND_CEILING:
            raise ValueError(f"limits: need 0 < max_quantity ({self.max_quantity}) <= max_on_hand "
                             f"({self.max_on_hand}) <= {MAX_ON_HAND_CEILING}")
        if self.max_quantity > MAX_QUANTITY_CEILING:
            raise ValueError(f"limits: max_quantity ({self.max_quantity}) must be at most {MAX_QUANTITY_CEILING}: "
                             "a count's quantity and a safety stock are kept in 32 bits")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """A limit out of range is refused at start, named, rather than refusing (or quarantining)
        every request it bounds once the service runs."""
        for name in _POSITIVE + _NON_NEGATIVE:
            value, least = getattr(self, name), 1 if name in _POSITIVE else 0
            if value < least:
                raise ValueError(f"limits: {name}: must be at least {least}, got {value}")
        for name in _DURATIONS_MS:
            if getattr(self, name) > MAX_DURATION_MS_CEILING:
                raise ValueError(f"limits: {name}: must be at most {MAX_DURATION_MS_CEILING} (ten years), "
                                 f"got {getattr(self, name)}")
        if self.max_ttl_seconds > MAX_TTL_CEILING:
            raise ValueError(f"limits: max_ttl_seconds: must be at most {MAX_TTL_CEILING}, got {self.max_ttl_seconds}")
        if not self.min_ttl_seconds <= self.default_ttl_seconds <= self.max_ttl_seconds:
            raise ValueError(f"limits: default_ttl_seconds: must be within [min_ttl_seconds, max_ttl_seconds] = "
                             f"[{self.min_ttl_seconds}, {self.max_ttl_seconds}], got {self.default_ttl_seconds}")
