"""C2's rate limit: a token bucket, shared by the channel feeds and the publishers."""

from __future__ import annotations


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; ``force`` may take them into debt (``most_owed``)."""

    __slots__ = ("_at", "burst", "rate", "tokens")

    def __init__(self, rate_per_s: float, burst: int, now_ms: int) -> None:
        self.rate, self.burst = rate_per_s, max(1, burst or int(rate_per_s))
        self.tokens, self._at = float(self.burst), now_ms

    def assume_spent(self) -> None:
        """No token left: what a holder before this one spent is not known (C2: a restart, or a publisher's lease
        taken from another holder). Left full, each such start sent a whole burst past the channel's rate."""
        self.tokens = 0.0

    def refill(self, now_ms: int) -> None:
        if now_ms > self._at:
            self.tokens = min(float(self.burst), self.tokens + (now_ms - self._at) * self.rate / 1000.0)
            self._at = now_ms

    def try_take(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def force(self, most_owed: float) -> None:
        """A token taken without waiting for it (a stock-out, C2): into debt, of at most ``most_owed`` tokens."""
        # Never raised: a debt past a cap lowered since (a reload) stays until time pays it.
        self.tokens = min(self.tokens, max(self.tokens - 1.0, -most_owed))

    def most_owed(self, wait_ms: int) -> float:
        """C2's bound on the debt ``force`` runs up: ``wait_ms`` worth of tokens, at least a burst. Unbounded, 10,000
        stock-outs at once (a store closing) held every other change of a channel at 10/s for 1,000 s."""
        return max(float(self.burst), self.rate * wait_ms / 1000.0)

    def ms_until_token(self) -> int:
        missing = 1.0 - self.tokens
        return 0 if missing <= 0 else int(missing * 1000.0 / self.rate) + 1

    def renewed(self, rate_per_s: float, burst: int, now_ms: int) -> TokenBucket:
        """A bucket of another rate and burst (a reloaded channel) holding no more than this one holds now: what was
        spent, a debt of stock-outs included, stays spent. A full one sent a burst past the rate limit at each reload
        that changed anything of the channel's feed, and forgave the debt (C2: the average rate)."""
        self.refill(now_ms)
        bucket = TokenBucket(rate_per_s, burst, now_ms)
        bucket.tokens = min(bucket.tokens, self.tokens)
        return bucket
