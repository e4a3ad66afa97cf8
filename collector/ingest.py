"""POST /api/v1/results: authenticate, bound the body, validate, store durably and only then acknowledge.

Checks run cheapest first, so that a client without a token never gets its body read:

| check                                            | answer |
|--------------------------------------------------|--------|
| no `Authorization: Bearer`, or an unknown token  | 401    |
| a client certificate naming another probe (mTLS) | 403    |
| limits.max_concurrent_requests pushes in progress| 503    |
| the probe's request bucket is empty              | 429    |
| Content-Type not JSON / Content-Encoding not gzip| 415    |
| body (as sent, or inflated) over max_body_bytes  | 413    |
| gzip that does not inflate                       | 400    |
| not JSON                                         | 400    |
| JSON that is not a valid Batch                   | 422    |
| batch of another probe than the token's          | 403    |
| more results than max_results_per_batch          | 413    |
| a result not numbered by the spool (seq 0)       | 422    |
| a start before 2020 or over a day in the future  | 422    |
| more targets than limits.max_targets_per_probe   | 422    |
| the probe's result bucket cannot hold the batch  | 429    |
| the store failed (disk full, I/O error), or is   | 503    |
| down or slower than store.influx.timeout         |        |
| stored now, or stored before (duplicate)         | 200    |

Every refusal is JSON (`ErrorBody`) and never a 5xx: a 5xx is left to genuine bugs (500), to a store
that cannot commit and to too many pushes at once (503). 429 and 503 carry Retry-After: the probe keeps
the batch in its spool and tries again then.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from operator import attrgetter
from typing import Final

import aiohttp
import msgspec
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from qiancheng.core.clock import wall_ns
from qiancheng.core.logs import kv
from qiancheng.core.wire import Batch, Sent, decode_batch_as_sent

from .auth import authenticate
from .bodies import Ack, encode
from .config import LimitsConfig
from .live import LiveState
from .ratelimit import ProbeLimiter
from .refused import Refused
from .registry import Identity, ProbeRegistry
from .request_body import BadEncoding, BodyTooLarge, read_bounded
from .software import probe_software
from .store import BatchOutcome, Store, StoreError

__all__ = ["Refused", "refusal_for_decode_error", "Ingest", "INGEST_KEY", "AfterStore", "RETRY_AFTER_SECONDS"]

log = logging.getLogger("qiancheng.collector.ingest")

#: what a probe is told to wait before retrying when the store cannot commit
RETRY_AFTER_SECONDS = 5
#: a result that says it started before 2020-01-01 comes from a probe whose clock was never set (1970
#: after a cold boot without RTC or NTP): its timestamps would land outside every window and retention
EARLIEST_START_NS: Final = 1_577_836_800 * 10**9
#: how far a result's start may lie ahead of the collector's clock (probe clocks drift, but not by days)
FUTURE_START_SLACK_NS: Final = 24 * 3600 * 10**9
#: bodies larger than this are decoded in a worker thread. Decoding holds the GIL either way, but in a
#: thread the loop still gets its turn every switch interval (5 ms), so /metrics and /healthz stay
#: responsive while a big batch decodes (measured: 4-6 us per ICMP result with 10 samples, 16 figures
#: and 4 info keys, ~830 bytes of JSON, so ~5 ms for 1000 results)
_DECODE_INLINE_BYTES = 256 * 1024
_READ_CHUNK = 1 << 16
_AT_PATH = re.compile(r"^(?P<reason>.*?)(?: - at (?:`(?P<key>key)` in )?`(?P<path>\$[^`]*)`)?$", re.S)
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")
_JSON_TYPES = ("application/json",)
_seq, _start_ns, _target_name = attrgetter("seq"), attrgetter("start_ns"), attrgetter("target.name")

#: called with each batch the store accepted (and its received time) before the 200; it must not raise
#: a store failure, since the batch is already stored (the SLA window cache, `sla.cache.WindowCache.add`)
AfterStore = Callable[[Batch, int], Awaitable[None]]


def refusal_for_decode_error(error: msgspec.DecodeError) -> Refused:
    """400 for bytes that are not JSON; 422 for JSON that is not a valid Batch, with the field's path."""
    if not isinstance(error, msgspec.ValidationError):
        return Refused(400, f"not valid JSON: {error}", "$")
    match = _AT_PATH.match(str(error))
    assert match is not None  # the pattern matches any text
    reason, path = match["reason"], match["path"] or "$"
    if match["key"]:  # msgspec's way of saying a mapping's key (not a value) is bad
        reason = f"bad key: {reason[:1].lower()}{reason[1:]}"
    if unknown := _UNKNOWN_FIELD.search(reason):
        path, reason = f"{path}.{unknown[1]}", f"unknown field {unknown[1]!r}"
    elif missing := _MISSING_FIELD.search(reason):
        path, reason = f"{path}.{missing[1]}", "missing required field"
    return Refused(422, reason[:1].lower() + reason[1:], path)


def _check_content_type(request: web.Request) -> None:
    # a missing Content-Type is tolerated (the body must still be JSON); a declared other type is refused,
    # so that form posts and uploads aimed at the wrong URL are told why
    declared = request.headers.get(hdrs.CONTENT_TYPE)
    if declared is not None and not (request.content_type in _JSON_TYPES or request.content_type.endswith("+json")):
        raise Refused(415, f"Content-Type must be application/json, got {request.content_type!r}")


def _is_gzip(request: web.Request) -> bool:
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return True
    if encoding == "identity":
        return False
    raise Refused(415, f"Content-Encoding must be gzip or identity, got {encoding!r}")


class Ingest:
    """The ingest endpoint over the probe registry, a store and the live state."""

    def __init__(
        self,
        registry: ProbeRegistry,
        store: Store,
        state: LiveState,
        limits: LimitsConfig,
        clock: Callable[[], int] = wall_ns,
        client_certificates: bool = False,
        known_targets: Mapping[str, Iterable[str]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`client_certificates`: mutual TLS is on, and a probe's verified certificate must name it.
        `known_targets`: the target names each probe has in the store, counted against its limit."""
        self._registry = registry
        self._store = store
        self._state = state
        self._limits = limits
        self._clock = clock
        self._monotonic = monotonic
        self._client_certificates = client_certificates
        self._rates = ProbeLimiter(limits.requests_per_second, limits.request_burst,
                                   limits.results_per_second, limits.result_burst)  # fmt: skip
        self._in_flight = 0
        self._misplaced: set[str] = set()  # enrolled probes whose batches named another place (warned once)
        self._targets: dict[str, set[str]] = {probe: set(names) for probe, names in (known_targets or {}).items()}
        #: called with every batch after its commit (duplicates too), before the probe is answered
        self.after_store: list[AfterStore] = []

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler; refusals become JSON, anything else propagates (a bug: 500)."""
        status = 500
        try:
            response = await self._admit(request)
            status = response.status
            return response
        except Refused as refused:
            status = refused.status
            return refused.response()
        finally:
            self._state.count_request(status)

    async def _admit(self, request: web.Request) -> web.Response:
        """Authenticate, then hold one of the concurrent-push slots while the push is handled."""
        try:
            identity = authenticate(request, self._registry, self._client_certificates)
        except Refused as refused:
            self._refused(request, refused.status, refused.error, refused.probe)
            raise
        if self._in_flight >= self._limits.max_concurrent_requests:
            # refused before the body is read: what waits is bounded by the slots, never a queue in memory
            raise Refused(503, f"{self._in_flight} pushes in progress (limits.max_concurrent_requests); retry later",
                          headers={hdrs.RETRY_AFTER: "1"})  # fmt: skip
        self._in_flight += 1
        try:
            return await self._handle(request, identity)
        finally:
            self._in_flight -= 1

    async def _handle(self, request: web.Request, identity: Identity) -> web.Response:
        probe = identity.probe_id
        if wait := self._rates.request(probe, self._monotonic()):
            raise _too_many(f"probe {probe!r} pushes faster than limits.requests_per_second", wait)
        try:
            batch, sent = await self._read_batch(request)
        except Refused as refused:
            self._state.count_batch("rejected")
            self._refused(request, refused.status, refused.error, probe, refused.field)
            raise
        try:
            self._check_batch(batch, probe)
            software = probe_software(request.headers)
        except Refused as refused:
            self._state.count_batch("rejected", len(batch.results))
            self._refused(request, refused.status, refused.error, probe, refused.field)
            raise
        batch = self._placed(batch, identity)
        if (too_many_targets := self._cardinality(batch)) is not None:
            self._refused(request, 422, too_many_targets.error, probe, too_many_targets.field)
            raise too_many_targets
        if wait := self._rates.results(probe, len(batch.results), self._monotonic()):
            self._state.count_batch("rate_limited", len(batch.results))
            raise _too_many(f"probe {probe!r} sends more results than limits.results_per_second", wait)
        received_ns = self._clock()
        try:
            # shielded: once the commit is under way, a client that hangs up or a server stopping must
            # not cut the bookkeeping after it, or /metrics would disagree with the store
            outcome = await asyncio.shield(self._commit(batch, sent, received_ns, software))
        except StoreError as error:
            log.error(kv("store_failed", probe=probe, batch=batch.batch_id, error=error))
            raise Refused(
                503, "the store could not commit the batch; retry later",
                headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)},
            ) from None  # fmt: skip
        ack = Ack(accepted=len(batch.results), duplicate=outcome.duplicate, stored=outcome.stored)
        return web.Response(body=encode(ack), content_type="application/json")

    async def _read_batch(self, request: web.Request) -> tuple[Batch, Sent]:
        """The batch in the request's body, and each of its results as sent (the SQLite store keeps them)."""
        _check_content_type(request)
        gzip = _is_gzip(request)
        limit = int(self._limits.max_body_bytes)
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, f"body exceeds {limit} bytes (limits.max_body_bytes)")
        try:
            body = await read_bounded(request.content.iter_chunked(_READ_CHUNK), limit, gzip)
        except BodyTooLarge as error:
            raise Refused(413, f"{error} (limits.max_body_bytes)") from None
        except BadEncoding as error:
            raise Refused(400, str(error)) from None
        except (HttpProcessingError, aiohttp.ClientPayloadError, ConnectionError) as error:
            raise Refused(400, f"incomplete request body: {error}") from None
        try:
            if len(body) > _DECODE_INLINE_BYTES:
                return await asyncio.to_thread(decode_batch_as_sent, body)
            return decode_batch_as_sent(body)
        except msgspec.DecodeError as error:
            raise refusal_for_decode_error(error) from None

    def _check_batch(self, batch: Batch, probe: str) -> None:
        if batch.probe_id != probe:
            raise Refused(403, f"this token belongs to probe {probe!r}, not {batch.probe_id!r}", "$.probe_id")
        if len(batch.results) > self._limits.max_results_per_batch:
            raise Refused(
                413, f"more than {self._limits.max_results_per_batch} results (limits.max_results_per_batch)", "$.results"
            )
        results = batch.results
        latest_start = self._clock() + FUTURE_START_SLACK_NS
        # in C over the whole batch first (every push passes); the loop finds the first bad one
        starts = list(map(_start_ns, results))
        if results and min(map(_seq, results)) >= 1 and min(starts) >= EARLIEST_START_NS and max(starts) <= latest_start:
            return
        for index, result in enumerate(results):
            if result.seq < 1:
                raise Refused(422, "must be ≥ 1: results are numbered by the probe's spool", f"$.results[{index}].seq")
            if not EARLIEST_START_NS <= result.start_ns <= latest_start:
                when = "before 2020" if result.start_ns < EARLIEST_START_NS else "over a day ahead of the collector's clock"
                raise Refused(422, f"a start {when}: check the probe's clock (NTP)", f"$.results[{index}].start_ns")

    def _placed(self, batch: Batch, identity: Identity) -> Batch:
        """An enrolled probe is where the registry says: its city and ISP, not what its config claims."""
        if not identity.city or (batch.city, batch.isp) == (identity.city, identity.isp):
            return batch
        if identity.probe_id not in self._misplaced:
            self._misplaced.add(identity.probe_id)
            log.warning(kv("batch_place_corrected", probe=identity.probe_id, said=f"{batch.city}/{batch.isp}",
                           registry=f"{identity.city}/{identity.isp}", effect="stored as the registry says"))  # fmt: skip
        return msgspec.structs.replace(batch, city=identity.city, isp=identity.isp or batch.isp)

    def _cardinality(self, batch: Batch) -> Refused | None:
        """A 422 when the batch would take its probe past limits.max_targets_per_probe, else None.

        New names are admitted in the order they appear, up to the limit; the batch is refused whole,
        its results for names past the limit counted as `cardinality`, the others as `rejected`.
        """
        known = self._targets.get(batch.probe_id, set())
        if known.issuperset(map(_target_name, batch.results)):
            return None  # the usual push: targets it reported before
        limit = self._limits.max_targets_per_probe
        admitted: set[str] = set()
        beyond: list[int] = []
        for index, result in enumerate(batch.results):
            name = result.target.name
            if name in known or name in admitted:
                continue
            if len(known) + len(admitted) < limit:
                admitted.add(name)
            else:
                beyond.append(index)
        if not beyond:
            return None
        self._state.count_batch("rejected")
        self._state.count_results("cardinality", len(beyond))
        self._state.count_results("rejected", len(batch.results) - len(beyond))
        names = len(known | {result.target.name for result in batch.results})
        return Refused(422, f"probe {batch.probe_id!r} would report {names} targets, more than "
                            f"limits.max_targets_per_probe ({limit})", f"$.results[{beyond[0]}].target.name")  # fmt: skip

    async def _commit(self, batch: Batch, sent: Sent, received_ns: int, software: tuple[str, str]) -> BatchOutcome:
        """Store the batch, then account it; `software`: the probe's (version, plan version)."""
        started = time.perf_counter()
        outcome = await self._store.store_batch(batch, received_ns, sent)
        state = self._state
        state.observe_commit(time.perf_counter() - started)
        # every time, duplicates too: a retried batch fills what an earlier failed cache write missed
        for after_store in self.after_store:
            await after_store(batch, received_ns)
        if batch.probe_id not in state.probes:
            log.info(kv("probe_seen", probe=batch.probe_id, city=batch.city, isp=batch.isp))
        state.saw_probe(batch.probe_id, batch.city, batch.isp, batch.labels, batch.stats, received_ns, *software)
        total = len(batch.results)
        if outcome.duplicate:
            state.count_batch("duplicate", total)
        else:
            state.count_batch("stored")
            state.count_results("stored", outcome.stored)
            state.count_results("duplicate", total - outcome.stored - outcome.conflicts)
            state.count_results("conflict", outcome.conflicts)
            state.apply(batch.probe_id, batch.city, batch.isp, outcome.new, received_ns)
            self._targets.setdefault(batch.probe_id, set()).update(map(_target_name, outcome.new))
        if outcome.conflicts:
            # the same seq with another start time: the probe's spool restarted its numbering; its new
            # results are not stored until its seqs pass the old ones, so an operator must act
            log.warning(kv("seq_conflict", probe=batch.probe_id, batch=batch.batch_id, results=outcome.conflicts,
                           action="give the probe a new probe id, or keep its spool file across reinstalls"))  # fmt: skip
        if log.isEnabledFor(logging.DEBUG):  # not even formatted otherwise: this runs for every batch
            log.debug(kv("batch_stored", probe=batch.probe_id, batch=batch.batch_id, results=total,
                         stored=outcome.stored, duplicate=outcome.duplicate))  # fmt: skip
        return outcome

    @staticmethod
    def _refused(request: web.Request, status: int, reason: str, probe: str | None, field: str | None = None) -> None:
        # no headers are logged: the Authorization header is a secret
        log.warning(kv("batch_refused", status=status, reason=reason, field=field or "-", probe=probe or "-",
                       remote=request.remote or "-"))  # fmt: skip


def _too_many(reason: str, wait: float) -> Refused:
    """429 with the whole seconds until the probe's bucket holds enough again (inf: never, the batch is
    larger than the bucket: the probe should split it, so say 413)."""
    if wait == float("inf"):
        return Refused(413, f"{reason}: the batch is larger than the bucket (limits.result_burst)")
    return Refused(429, reason, headers={hdrs.RETRY_AFTER: str(max(1, math.ceil(wait)))})


#: the application's ingest endpoint, made once the store is open
INGEST_KEY = web.AppKey("ingest", Ingest)
