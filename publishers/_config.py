"""Configuration of one publisher process: a frozen dataclass, one docstring per field."""

from __future__ import annotations

import math
from dataclasses import dataclass

from atp_service.storage.keys import Keyspace

MIN_RATE_PER_S = 1e-6
"""The smallest ``rate_limit_per_s`` taken (one update in about 11.6 days), as the service's estate: the
token bucket waits ``1000 / rate`` ms for a token, infinite for a rate near 1e-306 (an OverflowError that
ended the publisher at its second update)."""


@dataclass(frozen=True)
class PublisherConfig:
    channel: str
    """The channel whose stream this process delivers."""

    key_prefix: str = "atp:"
    """Prefix of the service's Redis keys (the channel stream is ``<prefix>{avail}:<channel>``)."""

    group: str = "publisher"
    """Consumer group; one group per destination (two adapters of one channel: two groups)."""

    consumer: str = "publisher-1"
    """This process's consumer name; keep it stable so a restart re-reads its own pending entries."""

    read_count: int = 500
    """Most stream entries read at once."""

    block_ms: int = 1000
    """How long one read waits for new entries."""

    delivery_batch: int = 100
    """Most updates per adapter call (one webhook POST, one marketplace request)."""

    rate_limit_per_s: float = 10.0
    """Updates per second delivered to the destination (token bucket)."""

    burst: int = 0
    """Updates that may go back to back (0: one second's worth)."""

    max_attempts: int = 8
    """Attempts per batch before it is dead-lettered (a non-retryable error: at once)."""

    backoff_base_s: float = 0.5
    """First retry waits about this long; each further one twice as long, with jitter."""

    backoff_max_s: float = 60.0
    """Longest wait between attempts."""

    redis_retry_s: float = 1.0
    """Pause before reading again after Redis failed (once running; the wait at start is ``RedisWait``)."""

    dead_letter_maxlen: int = 100_000
    """Approximate length the dead-letter stream is trimmed to."""

    redeliver_max_keys: int = 100_000
    """Most keys remembered (in Redis) for redelivery of their newest value after a dead letter;
    past it the publisher remembers instead to resync the whole state hash (counted, logged)."""

    redeliver_interval_s: float = 30.0
    """While keys are owed a redelivery, a pass is tried at least this often, also when no
    delivery has succeeded since (a quiet channel after the destination came back)."""

    lease_s: float = 30.0
    """Duration of the group's delivery lease (one delivering publisher per channel and group): a
    standby takes over at most this long and one try (``Lease.retry_s``) after a holder died (at once after a holder's
    stop)."""

    standby_look_s: float = 1.0
    """While standing by after delivering in this run (another publisher holds the lease, or this one lost it), how
    often it looks at the channel stream for a start of the service after Redis lost entries, to name the keys it
    delivered at the lost versions (``_standby``; it looks at once on losing the lease), and tries again names a
    refusal left owed."""

    send_timeout_s: float = 10.0
    """Longest one request to the destination may take (the adapter's request timeout): a holder
    sends only while its lease covers that long. ``lease_s`` must be at least 3 times it."""

    wait_replicas: int = 0
    """Replicas of the stream's node that must hold what was read before it is delivered: the service's
    ``redis_wait_replicas`` (set both alike). A write its replicas did not confirm is not published yet,
    and a failover may lose it (C4); 0: what the primary holds is delivered (as the service counts it)."""

    wait_timeout_ms: int = 500
    """How long one confirmation waits for ``wait_replicas`` replicas before the read is held back
    (read and confirmed again after ``redis_retry_s``)."""

    def __post_init__(self) -> None:
        if not self.channel:
            raise ValueError("channel: required")
        Keyspace(self.key_prefix)  # the service's own check of a prefix (no braces: they would be the hash tag)
        for name in ("read_count", "delivery_batch", "max_attempts", "redeliver_max_keys"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.wait_replicas < 0 or self.wait_timeout_ms < 1:
            raise ValueError(f"wait_replicas/wait_timeout_ms: at least 0 and 1, got {self.wait_replicas}, "
                             f"{self.wait_timeout_ms}")
        if self.redis_retry_s <= 0:
            raise ValueError("redis_retry_s: must be positive")
        for name in ("redeliver_interval_s", "standby_look_s"):
            if not 0 < getattr(self, name) < math.inf:  # NaN or inf: the timer never comes (C4)
                raise ValueError(f"{name}: must be positive and finite, got {getattr(self, name)}")
        self._check_lease()
        if not MIN_RATE_PER_S <= self.rate_limit_per_s < math.inf:  # NaN too: no pace would be kept at all
            raise ValueError(f"rate_limit_per_s: must be finite and at least {MIN_RATE_PER_S:g} (one update in "
                             f"~11.6 days), got {self.rate_limit_per_s}")
        if self.burst < 0:
            raise ValueError(f"burst: must be at least 0, got {self.burst}")
        if not 0 <= self.backoff_base_s <= self.backoff_max_s < math.inf:  # inf: a failed delivery waits for ever
            raise ValueError("backoff_base_s/backoff_max_s: need 0 <= base <= max, both finite, got "
                             f"{self.backoff_base_s}, {self.backoff_max_s}")

    def _check_lease(self) -> None:
        if not 0 < self.send_timeout_s < math.inf:
            raise ValueError("send_timeout_s (--request-timeout): must be positive and finite, "
                             f"got {self.send_timeout_s}")
        # Counted on for 80 % of the lease and renewed every fifth of it, a holder then has at least 0.6 of it left
        # (0.4 after one renewal failed): room for a whole request.
        if not 3 * self.send_timeout_s <= self.lease_s < math.inf:
            raise ValueError(f"lease_s (--lease): must be finite and at least 3 x send_timeout_s (--request-timeout) "
                             f"= {3 * self.send_timeout_s:g} s, got {self.lease_s:g} s")

    @property
    def stream(self) -> str:
        return Keyspace(self.key_prefix).channel_stream(self.channel)

    @property
    def dead_letter_stream(self) -> str:
        return Keyspace(self.key_prefix).publisher_key(self.channel, "dlq", self.group)

    @property
    def state_key(self) -> str:
        """The service's hash of the last published value per key (what trimming cannot remove)."""
        return Keyspace(self.key_prefix).channel_state(self.channel)

    @property
    def restamp_key(self) -> str:
        """The service's hash of keys to publish again at new versions: delivered at versions Redis lost (C3, C4)."""
        return Keyspace(self.key_prefix).channel_restamp(self.channel)

    @property
    def redeliver_key(self) -> str:
        """Hash of the keys owed their newest value: ``sku<TAB>location`` -> ``<version> retry|refused``
        of the dead-lettered version (what the destination never took)."""
        return Keyspace(self.key_prefix).publisher_key(self.channel, "redeliver", self.group)

    @property
    def redeliver_all_key(self) -> str:
        """Set (a counter) when more keys were owed than ``redeliver_max_keys``: resync every key."""
        return Keyspace(self.key_prefix).publisher_key(self.channel, "redeliver-all", self.group)

    @property
    def lease_key(self) -> str:
        """The group's delivery lease: a token naming its holder (host/pid/random), with a TTL."""
        return Keyspace(self.key_prefix).publisher_key(self.channel, "lease", self.group)

    @property
    def delivered_key(self) -> str:
        """Hash of the newest delivered version per key (idempotence by version)."""
        return Keyspace(self.key_prefix).publisher_key(self.channel, "delivered", self.group)
