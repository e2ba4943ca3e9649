"""`TokenBucket`: requests per second with a burst, fed a clock (upstream requests, client requests)."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second up to `burst`; starts full."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = float("-inf")

    def refill(self, now: float) -> None:
        if self.at == float("-inf"):
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def ready_at(self, now: float) -> float:
        self.refill(now)
        return now if self.tokens >= 1.0 else now + (1.0 - self.tokens) / self.rate

    def penalize(self, now: float) -> None:
        """Empty the bucket and owe one burst: the next request waits (burst + 1) / rate."""
        self.refill(now)
        self.tokens = min(self.tokens, -self.burst)

    def fill(self) -> None:
        self.tokens = self.burst
        self.at = float("-inf")
