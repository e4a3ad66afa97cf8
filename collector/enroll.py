"""`POST /api/v1/enroll`: a new box trades a one-time code for its probe id and a fresh token.

| check                                                  | answer |
|--------------------------------------------------------|--------|
| more than ENROLL_BURST attempts from one address lately | 429    |
| a body that is not `{"code": "..."}` (≤ 4 KiB)          | 400/422|
| a code never made                                       | 403    |
| mutual TLS: a certificate that does not name the probe | 403    |
| a code already used                                    | 409    |
| a code past its time                                   | 410    |
| enrolled now                                           | 200    |

Codes carry about 99 random bits, so guessing one is hopeless; the per-address limit keeps a stranger
from even trying at speed, and every refusal is logged with the address. The registry write is one
short transaction on the event loop (enrollments are rare).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Final

import aiohttp
import msgspec
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from qiancheng.core.enrollment import Enrolled, EnrollRequest
from qiancheng.core.logs import kv
from qiancheng.core.token_bucket import TokenBucket

from .bodies import encode
from .records import RegistryEntry
from .refused import Refused
from .registry import CodeRefused, ProbeRegistry, RegistryError
from .request_body import BadEncoding, BodyTooLarge, read_bounded
from .tls import certificate_names

__all__ = ["Enrollment", "ENROLL_PER_MINUTE", "ENROLL_BURST"]

log = logging.getLogger("qiancheng.collector.enroll")

#: attempts per client address: a burst, then one every 6 s
ENROLL_BURST: Final = 10
ENROLL_PER_MINUTE: Final = 10
_MAX_BODY: Final = 4096
#: addresses remembered for the limit; past this the oldest half is forgotten
_MAX_ADDRESSES: Final = 10_000
_decoder = msgspec.json.Decoder(EnrollRequest)


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Enrollment:
    """The enroll route over the probe registry."""

    def __init__(self, registry: ProbeRegistry, client_certificates: bool, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._client_certificates = client_certificates
        self._monotonic = monotonic
        self._attempts: dict[str, TokenBucket] = {}

    async def handle(self, request: web.Request) -> web.Response:
        remote = request.remote or "-"
        try:
            entry, token = await self._enroll(request, remote)
        except Refused as refused:
            log.warning(kv("enroll_refused", status=refused.status, reason=refused.error, probe=refused.probe or "-", remote=remote))
            return refused.response()
        log.info(kv("probe_enrolled", probe=entry.id, city=entry.city, isp=entry.isp, remote=remote))
        return web.Response(body=encode(Enrolled(entry.id, entry.city, entry.isp, token)), content_type="application/json")

    async def _enroll(self, request: web.Request, remote: str) -> tuple[RegistryEntry, str]:
        self._limit(remote)
        code = (await self._read(request)).code
        probe = self._registry.code_probe(code)
        if probe is None:
            raise Refused(403, "unknown enrollment code: check it, or ask for a new one (qiancheng-collector enroll)")
        if self._client_certificates:
            peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
            names = certificate_names(peercert)
            if probe not in names:
                raise Refused(403, f"the client certificate names {', '.join(sorted(names)) or 'no one'}, not probe {probe!r}",
                              probe=probe)  # fmt: skip
        try:
            return self._registry.enroll(code)
        except CodeRefused as refused:
            if refused.why == "used":
                raise Refused(409, f"this code was used at {_when(refused.when_ns)}: ask for a new one", probe=probe) from None
            if refused.why == "expired":
                raise Refused(410, f"this code expired at {_when(refused.when_ns)}: ask for a new one", probe=probe) from None
            raise Refused(403, "unknown enrollment code", probe=probe) from None
        except RegistryError as error:
            raise Refused(409, str(error), probe=probe) from None

    def _limit(self, remote: str) -> None:
        now = self._monotonic()
        bucket = self._attempts.get(remote)
        if bucket is None:
            if len(self._attempts) >= _MAX_ADDRESSES:
                for address in list(self._attempts)[: _MAX_ADDRESSES // 2]:
                    del self._attempts[address]
            bucket = self._attempts[remote] = TokenBucket.full(ENROLL_PER_MINUTE / 60.0, ENROLL_BURST, now)
        wait = bucket.wait(1, now)
        if wait > 0:
            raise Refused(429, "too many enrollment attempts from this address", headers={hdrs.RETRY_AFTER: str(max(1, round(wait)))})
        bucket.take(1, now)

    @staticmethod
    async def _read(request: web.Request) -> EnrollRequest:
        try:
            body = await read_bounded(request.content.iter_chunked(_MAX_BODY), _MAX_BODY, gzip=False)
        except BodyTooLarge:
            raise Refused(413, f"an enrollment request is at most {_MAX_BODY} bytes") from None
        except (BadEncoding, HttpProcessingError, aiohttp.ClientPayloadError, ConnectionError) as error:
            raise Refused(400, f"incomplete request body: {error}") from None
        try:
            return _decoder.decode(body)
        except msgspec.ValidationError as error:
            raise Refused(422, f"expected {{\"code\": \"...\"}}: {error}", "$.code") from None
        except msgspec.DecodeError as error:
            raise Refused(400, f"not valid JSON: {error}", "$") from None
