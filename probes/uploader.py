"""The probe's uploader: batches from the spool, POSTed as gzip JSON, retried until the collector says 200.

At-least-once delivery: a batch leaves the spool only on 200, and a retried batch keeps its batch id (the
spool persists it), so the collector's batch-id dedup turns retries into exactly-once storage. Nothing is
ever dropped here: answers that can never succeed (400, 422) move the batch to the spool's quarantine.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timezone
from typing import Final

import msgspec

from qiancheng.core.clock import wall_ns
from qiancheng.core.deflate import compress_gzip
from qiancheng.core.logs import kv
from qiancheng.core.wire import PLAN_HEADER, RESULTS_PATH, Batch, decode_batch, encode_batch

from .collector_client import CollectorClient
from .spool import PendingBatch, Spool, SpoolCounters

__all__ = ["Uploader", "UploaderCounters", "backoff_delay", "retry_after_seconds", "RETRY_AFTER_CAP"]

log = logging.getLogger("qiancheng.uploader")

#: Longest wait a collector's Retry-After may impose, in seconds: a wrong header must not park a probe for days.
RETRY_AFTER_CAP: Final = 300.0
#: Most of an answer body read, in bytes: enough for a JSON error, bounded against a misbehaving proxy.
MAX_ANSWER_BYTES: Final = 64 * 1024
# Every answer but 200, 413, 400 and 422 retries the same batch later: 5xx, 408 and 429 mean overload or an
# outage; 401/403 and unexpected ones (3xx, 404, 405, …) mean a misconfiguration an operator will fix.
# Only the collector's own "never" (400/422) or "too big" (413) changes what is sent.
_AUTH_STATUSES: Final = frozenset({401, 403})
_REJECT_STATUSES: Final = frozenset({400, 422})


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before retry `attempt` (0 for the first): uniform in [0, min(cap, base·2^attempt)]."""
    # Full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015): probes that lost the
    # collector at the same moment spread their retries over the whole window instead of coming back
    # in synchronized waves. The exponent is clamped so 2**attempt stays a finite float.
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 62))
    return rng.uniform(0.0, ceiling)


def retry_after_seconds(value: str | None, now: float, cap: float = RETRY_AFTER_CAP) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or HTTP-date, RFC 9110 §10.2.3), within [0, cap].

    `now` is the wall clock in seconds since the epoch; None when the header is absent or unreadable.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(cap, max(0.0, seconds))


@dataclass(frozen=True, slots=True)
class UploaderCounters:
    """What the uploader has done since it started, for logs and the agent's status line."""

    batches_sent: int  # batches the collector acknowledged with 200
    results_acked: int
    requests_failed: int  # attempts answered with a retryable status or not answered at all
    batches_split: int  # 413 answers
    batches_quarantined: int  # 400/422 answers (and single results too large for the collector)
    consecutive_failures: int
    last_error: str  # "" after a success


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    retry_after: str | None
    body: str


class _Outcome(enum.Enum):
    DONE = "done"  # the batch left the send path (acked, split or quarantined): go on at once
    RETRY = "retry"  # try the same batch again after a delay
    STOPPED = "stopped"


class Uploader:
    """Drains the spool to the collector: batches by size or age, retries with jittered backoff."""

    def __init__(
        self,
        *,
        spool: Spool,
        client: CollectorClient,
        url: str,
        token: str,
        probe_id: str,
        city: str = "",
        isp: str = "",
        labels: Mapping[str, str] | None = None,
        batch_max_results: int = 500,
        batch_max_age: float = 5.0,
        request_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        retry_after_cap: float = RETRY_AFTER_CAP,
        rng: random.Random | None = None,
        health: Callable[[], Mapping[str, float]] | None = None,
        plan_version: Callable[[], str] | None = None,
    ) -> None:
        """`health`: the box's figures added to every batch's stats; `plan_version`: the plan the probe
        runs, sent as the Qiancheng-Plan header ("" or None: it runs none)."""
        self._spool = spool
        self._client = client
        self._endpoint = url.rstrip("/") + RESULTS_PATH
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        self._health = health
        self._plan_version = plan_version
        self._probe_id = probe_id
        self._city = city
        self._isp = isp
        self._labels = dict(labels or {})
        self._check_identity()
        if batch_max_results < 1:
            raise ValueError(f"batch_max_results must be ≥ 1, got {batch_max_results}")
        self._batch_max_results = batch_max_results
        # Lowered when the collector answers 413, so later batches fit without a split each time.
        self._max_results = batch_max_results
        self._batch_max_age = batch_max_age
        self._timeout = request_timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._retry_after_cap = retry_after_cap
        self._rng = rng or random.Random()

        self._wake = asyncio.Event()  # notify(), flush(), stop(): look at the spool again
        self._urgent = asyncio.Event()  # flush(), stop(): also cut a backoff short
        self._stopped = asyncio.Event()
        self._drained = asyncio.Event()  # set when the loop last saw an empty spool
        self._flushing = 0
        self._running = False

        self._batches_sent = 0
        self._results_acked = 0
        self._requests_failed = 0
        self._batches_split = 0
        self._batches_quarantined = 0
        self._consecutive_failures = 0
        self._last_error = ""

    # ------------------------------------------------------------------ public

    def notify(self) -> None:
        """A result was added: re-check whether a batch is due (does not cut a backoff short)."""
        self._drained.clear()
        self._wake.set()

    def stop(self) -> None:
        """Make run() return soon; a request in flight is abandoned (the batch stays in the spool)."""
        self._stopped.set()
        self._wake.set()
        self._urgent.set()

    def counters(self) -> UploaderCounters:
        """What has been sent, acknowledged and failed since start."""
        return UploaderCounters(
            batches_sent=self._batches_sent,
            results_acked=self._results_acked,
            requests_failed=self._requests_failed,
            batches_split=self._batches_split,
            batches_quarantined=self._batches_quarantined,
            consecutive_failures=self._consecutive_failures,
            last_error=self._last_error,
        )

    async def run(self) -> None:
        """Send batches until stop(): when enough results wait, the oldest is old enough, or a flush asks."""
        if self._running:
            raise RuntimeError("Uploader.run() is already running")
        self._running = True
        try:
            while not self._stopped.is_set():
                try:
                    event, timeout = await self._step()
                except Exception as error:  # noqa: BLE001 - a spool error (disk full, I/O) must not end uploads
                    self._consecutive_failures += 1
                    self._last_error = f"{type(error).__name__}: {error}"
                    delay = self._backoff(None)
                    log.error(kv("upload_loop_error", error=self._last_error, delay_seconds=delay))
                    event, timeout = self._urgent, delay
                await _wait(event, timeout)
        finally:
            self._running = False
            if self._stopped.is_set():
                log.info(kv("uploader_stopped", batches_sent=self._batches_sent, results_acked=self._results_acked,
                            requests_failed=self._requests_failed,
                            consecutive_failures=self._consecutive_failures))

    async def flush(self, timeout: float) -> int:
        """Push everything pending within `timeout` seconds; returns how many results remain in the spool."""
        helper: asyncio.Task[None] | None = None
        if self._stopped.is_set() and not self._running:
            return (await self._spool.counters()).backlog
        self._flushing += 1
        self._drained.clear()
        self._urgent.set()
        self._wake.set()
        if not self._running:  # used without run() (a one-shot tool): drive the loop for the flush
            helper = asyncio.create_task(self.run(), name="uploader-flush")
        try:
            await asyncio.wait_for(self._drained.wait(), max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            self._flushing -= 1
            if helper is not None:
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)
        remaining = (await self._spool.counters()).backlog
        log.info(kv("upload_flushed", remaining=remaining, timeout_seconds=timeout))
        return remaining

    # ------------------------------------------------------------------ the loop

    async def _step(self) -> tuple[asyncio.Event, float | None]:
        """Do one thing; return the event to wait for and the longest wait (None: no limit, 0: none)."""
        self._wake.clear()
        counters = await self._spool.counters()
        if counters.backlog == 0:
            self._drained.set()
            return self._wake, None
        wait = self._seconds_until_due(counters)
        if wait > 0:
            return self._wake, wait
        outcome, delay = await self._send_next(counters)
        if outcome is _Outcome.RETRY:
            return self._urgent, delay
        return self._wake, 0.0

    def _seconds_until_due(self, counters: SpoolCounters) -> float:
        """0 when a batch should go now; else seconds until the oldest pending result is batch_max_age old."""
        if self._flushing or counters.backlog >= self._max_results or counters.oldest_pending_ns is None:
            return 0.0
        age = (wall_ns() - counters.oldest_pending_ns) / 1e9
        if age < 0:  # the wall clock stepped back since the result was spooled: don't wait on a bad clock
            return 0.0
        return max(0.0, self._batch_max_age - age)

    async def _send_next(self, counters: SpoolCounters) -> tuple[_Outcome, float]:
        self._urgent.clear()  # this attempt answers any flush that asked before it
        batch = await self._spool.next_batch(self._max_results)
        if batch is None:
            return _Outcome.DONE, 0.0
        # JSON encoding and gzip of a few hundred results take milliseconds (tens on ARM): off the loop.
        body = await asyncio.to_thread(self._encode, batch, counters)
        request = asyncio.ensure_future(self._post(body))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({request, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not request.done():
                # Abandoned: the collector may or may not store it; the retry at the next start keeps
                # the batch id, so it is stored once either way.
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
        if request.cancelled():
            return _Outcome.STOPPED, 0.0
        try:
            answer = request.result()
        except (TimeoutError, OSError) as error:
            return self._failed(batch, None, f"{type(error).__name__}: {error}".rstrip(": "), None)
        return await self._handle(batch, answer, len(body))

    async def _handle(self, batch: PendingBatch, answer: _Answer, body_bytes: int) -> tuple[_Outcome, float]:
        status = answer.status
        if status == 200:
            acked = await self._spool.ack(batch.batch_id)
            self._batches_sent += 1
            self._results_acked += acked
            if self._consecutive_failures:
                log.info(kv("upload_recovered", after_failures=self._consecutive_failures, batch_id=batch.batch_id))
            self._consecutive_failures = 0
            self._last_error = ""
            log.debug(kv("upload_ok", batch_id=batch.batch_id, results=acked, bytes=body_bytes))
            return _Outcome.DONE, 0.0
        if status == 413:
            self._answered()
            self._batches_split += 1
            if len(batch.results) > 1:
                self._max_results = max(1, min(self._max_results, len(batch.results) // 2))
                await self._spool.split(batch.batch_id)
                log.warning(kv("upload_too_large", batch_id=batch.batch_id, results=len(batch.results),
                               bytes=body_bytes, batch_max_results_now=self._max_results))
            else:
                self._batches_quarantined += 1
                reason = f"http 413: one result of {batch.size_bytes} bytes is too large for the collector"
                await self._spool.quarantine(batch.batch_id, _reason(reason, answer.body))
            return _Outcome.DONE, 0.0
        if status in _REJECT_STATUSES:
            # The collector will never accept this content; keep it aside (counted, logged) and move on.
            self._answered()
            self._batches_quarantined += 1
            await self._spool.quarantine(batch.batch_id, _reason(f"http {status}", answer.body))
            return _Outcome.DONE, 0.0
        return self._failed(batch, status, f"http {status}", answer.retry_after)

    def _failed(
        self, batch: PendingBatch, status: int | None, error: str, retry_after: str | None
    ) -> tuple[_Outcome, float]:
        """A retryable failure: keep the batch, count it, pick the delay, log one line."""
        attempt = self._consecutive_failures
        self._consecutive_failures += 1
        self._requests_failed += 1
        self._last_error = error
        delay = self._backoff(retry_after, attempt)
        fields: dict[str, object] = dict(batch_id=batch.batch_id, results=len(batch.results), error=error,
                                         attempt=attempt + 1, delay_seconds=delay)
        if status in _AUTH_STATUSES:
            # A configuration problem, not an outage: say so plainly; results stay spooled meanwhile.
            log.error(kv("upload_unauthorized", **fields,
                         hint="check this probe's token and probe_id in the collector's config"))
        else:
            log.warning(kv("upload_failed", **fields))
        return _Outcome.RETRY, delay

    def _backoff(self, retry_after: str | None, attempt: int | None = None) -> float:
        asked = retry_after_seconds(retry_after, wall_ns() / 1e9, self._retry_after_cap)
        if asked is not None:
            return asked
        attempt = self._consecutive_failures - 1 if attempt is None else attempt
        return backoff_delay(attempt, self._backoff_base, self._backoff_cap, self._rng)

    def _answered(self) -> None:
        """The collector answered sensibly (413, 400, 422): the link works, so the failure streak ends."""
        self._consecutive_failures = 0
        self._last_error = ""

    # ------------------------------------------------------------------ the request

    def _encode(self, batch: PendingBatch, counters: SpoolCounters) -> bytes:
        stats = {
            "spool_backlog": float(counters.backlog),
            "spool_backlog_bytes": float(counters.backlog_bytes),
            "spool_dropped_total": float(counters.dropped_total),
            "spool_rejected_total": float(counters.rejected_total),
            "measured_total": float(counters.measured_total),
            "acked_total": float(counters.acked_total),
        }
        if self._health is not None:
            stats.update(self._health())
        wire = Batch(probe_id=self._probe_id, batch_id=batch.batch_id, results=list(batch.results),
                     city=self._city, isp=self._isp, labels=self._labels, stats=stats)
        return compress_gzip(encode_batch(wire))

    async def _post(self, body: bytes) -> _Answer:
        headers = self._headers
        # a header, not a field of the batch: a collector older than the probe refuses unknown fields
        if self._plan_version is not None and (plan := self._plan_version()):
            headers = {**headers, PLAN_HEADER: plan}
        # The body is read (bounded) so that the connection can be reused and a rejection has its reason.
        answer = await self._client.request("POST", self._endpoint, headers=headers, body=body,
                                            timeout=self._timeout, max_body=MAX_ANSWER_BYTES)  # fmt: skip
        return _Answer(answer.status, answer.headers.get("retry-after"), answer.body.decode("utf-8", errors="replace"))

    def _check_identity(self) -> None:
        """Fail at start, not by quarantining every batch, if the identity does not fit the wire format."""
        probe = Batch(probe_id=self._probe_id, batch_id="identity-check", results=[], city=self._city,
                      isp=self._isp, labels=self._labels)
        try:
            decode_batch(encode_batch(probe))
        except msgspec.ValidationError as error:
            raise ValueError(f"probe identity does not fit the wire format: {error}") from None


def _reason(prefix: str, body: str) -> str:
    """The collector's JSON error, compacted, after `prefix`; raw text (a proxy's page) if not JSON."""
    try:
        detail = msgspec.json.encode(msgspec.json.decode(body.encode())).decode()
    except msgspec.DecodeError:
        detail = " ".join(body.split())
    return f"{prefix}: {detail}" if detail else prefix


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    """Until `event` is set or `timeout` seconds pass (None: no limit; 0: do not wait)."""
    if event.is_set() or timeout == 0:
        return
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
