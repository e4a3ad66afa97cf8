"""Per-probe token buckets: how many requests and results a probe may push, and for how long to wait.

A bucket holds up to `burst` tokens and refills at `rate` per second. A push takes its tokens at once
or not at all; when it cannot, the answer says how long until it could (429 with Retry-After), so a
probe replaying a long outage from its spool goes at the configured pace instead of in a tight loop.
Pure: the caller passes the clock, in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TokenBucket", "ProbeLimiter"]


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


class ProbeLimiter:
    """A request bucket and a result bucket per probe."""

    def __init__(self, requests_per_second: float, request_burst: int, results_per_second: float, result_burst: int) -> None:
        self._requests = (float(requests_per_second), float(request_burst))
        self._results = (float(results_per_second), float(result_burst))
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def _of(self, probe: str, now: float) -> tuple[TokenBucket, TokenBucket]:
        buckets = self._buckets.get(probe)
        if buckets is None:
            # one pair per configured probe (only authenticated probes get here): bounded by the config
            buckets = self._buckets[probe] = (TokenBucket.full(*self._requests, now), TokenBucket.full(*self._results, now))
        return buckets

    def request(self, probe: str, now: float) -> float:
        """Take one request token; returns 0, or the seconds to wait before trying again."""
        bucket = self._of(probe, now)[0]
        wait = bucket.wait(1, now)
        if wait == 0:
            bucket.take(1, now)
        return wait

    def results(self, probe: str, count: int, now: float) -> float:
        """Take `count` result tokens; returns 0, or the seconds to wait before sending them again."""
        bucket = self._of(probe, now)[1]
        wait = bucket.wait(count, now)
        if wait == 0:
            bucket.take(count, now)
        return wait
