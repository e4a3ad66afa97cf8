"""`GET /api/v1/plan`: the asking probe's targets, expanded from plan.yaml, with a version and an ETag.

The probe is who its token says (and, with mutual TLS, its certificate). Its city and ISP are the
registry's when it was enrolled with them; otherwise what it says in the query (`city`, `isp`, and
`label=key:value`, repeated), as its batches say them. A probe that already holds the current version
(`If-None-Match`) gets 304 and no body.

plan.yaml is re-read when it changes (checked at most once a second, on a request): an operator edits
the file and every probe picks up its new plan at its next poll. A file that no longer loads is logged
and the last good plan stays in force. A plan that cannot be made for one probe (a city the plan does
not know, more targets than limits.max_targets_per_probe) is refused with 422 and the reason, and the
probe keeps the plan it has: never a half-applied plan.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable

from aiohttp import hdrs, web
from multidict import MultiMapping

from qiancheng.core.errors import ConfigError
from qiancheng.core.logs import kv
from qiancheng.core.plan_wire import PLAN_PATH, encode_plan
from qiancheng.core.wire import LABEL_VALUE_PATTERN

from ..auth import authenticate
from ..bodies import ErrorBody, encode
from ..refused import Refused
from ..registry import Identity, ProbeRegistry
from .load import LoadedPlan, load_plan
from .model import Member, PlanError

__all__ = ["PLAN_PATH", "PlanService", "member_of"]

log = logging.getLogger("qiancheng.collector.plan")

_RECHECK_SECONDS = 1.0
_QUERY = ("city", "isp", "label")
_MAX_LABELS = 16
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


class PlanService:
    """The plan in force, re-read when its file changes, and the route that serves it."""

    def __init__(self, path: str, max_targets: int, registry: ProbeRegistry, client_certificates: bool,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.path = path
        self._max_targets = max_targets
        self._registry = registry
        self._client_certificates = client_certificates
        self._monotonic = monotonic
        self._stamp = _stamp(path)
        self.plan: LoadedPlan = load_plan(path, max_targets)
        self._checked = monotonic()
        self.reload_failures = 0

    def refresh(self) -> None:
        """Re-read plan.yaml if it changed (at most once a second); keep the last good plan if it fails."""
        now = self._monotonic()
        if now - self._checked < _RECHECK_SECONDS:
            return
        self._checked = now
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.plan = load_plan(self.path, self._max_targets)
        except ConfigError as error:
            self.reload_failures += 1
            log.error(kv("plan_reload_failed", error=str(error), effect="the last good plan stays in force"))
            return
        log.info(kv("plan_reloaded", file=self.path, targets=len(self.plan.plan.targets), cities=len(self.plan.plan.cities)))

    def version_for(self, member: Member) -> str | None:
        """The version of the plan this probe would get now; None when none can be made for it (a 422)."""
        self.refresh()
        try:
            return self.plan.for_member(member).version
        except PlanError:
            return None

    async def handle(self, request: web.Request) -> web.Response:
        try:
            identity = authenticate(request, self._registry, self._client_certificates)
            member = member_of(identity, request.query)
        except Refused as refused:
            log.warning(kv("plan_refused", status=refused.status, reason=refused.error, probe=refused.probe or "-",
                           remote=request.remote or "-"))  # fmt: skip
            return refused.response()
        self.refresh()
        try:
            plan = self.plan.for_member(member)
        except PlanError as error:
            field = "plan." + ".".join(str(part) for part in error.path)
            log.error(kv("plan_refused", status=422, probe=member.probe, city=member.city or "-", isp=member.isp or "-",
                         field=field, reason=error.reason))  # fmt: skip
            return web.Response(status=422, body=encode(ErrorBody(error=error.reason, field=field)), content_type="application/json")
        etag = f'"{plan.version}"'
        headers = {hdrs.ETAG: etag, hdrs.CACHE_CONTROL: "no-cache"}
        if _matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=encode_plan(plan), content_type="application/json", headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


def member_of(identity: Identity, query: MultiMapping[str]) -> Member:
    """The probe as the plan sees it: the registry's city and ISP when it has them, else the query's;
    raises Refused (400) for a query it cannot read."""
    unknown = sorted(set(query) - set(_QUERY))
    if unknown:
        raise Refused(400, f"unknown query parameter {unknown[0]!r} (the plan takes: {', '.join(_QUERY)})", unknown[0],
                      probe=identity.probe_id)  # fmt: skip
    given: dict[str, str] = {}
    for key in ("city", "isp"):
        values = query.getall(key, [])
        if len(values) > 1 or any(not _label_value(value) for value in values):
            raise Refused(400, f"{key}: one value of up to 128 printable characters", key, probe=identity.probe_id)
        given[key] = values[0] if values else ""
    labels: dict[str, str] = {}
    for text in query.getall("label", []):
        key, colon, value = text.partition(":")
        if not colon or not key.isidentifier() or not key.islower() or len(key) > 32 or not _label_value(value) or key in labels:
            raise Refused(400, f"label {text[:80]!r}: give key:value, once per key", "label", probe=identity.probe_id)
        labels[key] = value
    if len(labels) > _MAX_LABELS:
        raise Refused(400, f"more than {_MAX_LABELS} labels", "label", probe=identity.probe_id)
    return Member(identity.probe_id, identity.city or given["city"], identity.isp or given["isp"], tuple(sorted(labels.items())))


def _label_value(text: str) -> bool:
    return len(text) <= 128 and _LABEL_VALUE.match(text) is not None
