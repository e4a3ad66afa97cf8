"""Per-probe token buckets: how many requests and results a probe may push, and for how long to wait.

A push takes its tokens at once or not at all; when it cannot, the answer says how long until it could
(429 with Retry-After), so a probe replaying a long outage from its spool goes at the configured pace
instead of in a tight loop. Pure: the caller passes the clock, in seconds.
"""

from __future__ import annotations

from qiancheng.core.token_bucket import TokenBucket

__all__ = ["ProbeLimiter"]


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
