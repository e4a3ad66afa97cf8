"""A token bucket: up to `burst` tokens, refilled at `rate` a second; pure, the caller passes the clock.

Used for the collector's per-probe push limits and the responder's per-client byte budgets. Whoever
cannot take its tokens now is told how many seconds until it could (a Retry-After).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """`burst` tokens at most, `rate` more per second."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens are there (0: now); inf if the bucket can never hold them."""
        self._refill(now)
        if amount <= self.tokens:
            return 0.0
        if amount > self.burst or self.rate <= 0:
            return math.inf
        return (amount - self.tokens) / self.rate

    def take(self, amount: float, now: float) -> None:
        """Spend `amount` tokens (after `wait` said 0)."""
        self._refill(now)
        self.tokens -= amount
