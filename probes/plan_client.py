"""The probe's side of the central test plan: ask the collector for it, check it, hand it over, keep it.

The probe asks `GET /api/v1/plan` at start and then every `plan.poll_interval` (±20 %, so that a fleet
restarted together does not ask together), with `If-None-Match: "<version>"`: an unchanged plan costs a
304. A new plan is checked whole with the rules of the probe's own targets before anything changes; one
that fails is logged and the probe keeps measuring the plan it has, never part of a new one. A plan
that checks out replaces the old one in the scheduler (tests running finish; unchanged jobs keep their
slots) and is written to disk (atomically), so that after a restart, and through a collector outage,
the probe measures its last good plan without asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlencode

import msgspec

from qiancheng.core.configfile import YamlDocument
from qiancheng.core.errors import ConfigError
from qiancheng.core.logs import kv
from qiancheng.core.plan_wire import PLAN_PATH, Plan, decode_plan

from .collector_client import CollectorClient
from .config import Job, ProbeIdentity, spec_jobs

__all__ = ["AppliedPlan", "PlanClient", "plan_jobs", "read_saved_plan", "save_plan", "MAX_PLAN_BYTES"]

log = logging.getLogger("qiancheng.plan")

#: the largest plan body read: a thousand targets with their settings take about 500 kB
MAX_PLAN_BYTES: Final = 4 * 1024 * 1024
#: polls are spread over ±this share of the interval
_JITTER: Final = 0.2
#: without any plan yet, a failed poll is retried sooner: after 5 s, doubling up to the poll interval
_FIRST_RETRY_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class AppliedPlan:
    """A checked plan and the jobs it makes."""

    plan: Plan
    jobs: tuple[Job, ...]

    @property
    def version(self) -> str:
        return self.plan.version


def plan_jobs(plan: Plan, source: str) -> tuple[Job, ...]:
    """The plan's jobs, every target checked as the probe's own are; raises ConfigError naming `source`
    and the field at fault."""
    document = YamlDocument.of_data(source, None)
    names: set[str] = set()
    jobs: list[Job] = []
    for index, spec in enumerate(plan.targets):
        if spec.name in names:
            raise document.error(["targets", index, "name"], f"target name {spec.name!r} is used twice")
        names.add(spec.name)
        if spec.enabled:
            jobs.extend(spec_jobs(spec, {}, document, ["targets", index], plan=plan.version))
    return tuple(jobs)


def _checked(body: bytes, probe_id: str, source: str) -> AppliedPlan:
    """The plan in `body`, for this probe, checked; raises ValueError with the reason."""
    try:
        plan = decode_plan(body)
    except msgspec.DecodeError as error:
        raise ValueError(f"{source}: not a plan: {error}") from None
    if plan.probe_id != probe_id:
        raise ValueError(f"{source}: a plan for probe {plan.probe_id!r}, not this one ({probe_id!r})")
    try:
        return AppliedPlan(plan, plan_jobs(plan, source))
    except ConfigError as error:
        raise ValueError(str(error)) from None


def read_saved_plan(path: Path, probe_id: str) -> AppliedPlan | None:
    """The last good plan saved at `path`, or None (none saved, or unusable: logged)."""
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.error(kv("saved_plan_unreadable", file=str(path), error=error.strerror or str(error)))
        return None
    try:
        return _checked(body, probe_id, str(path))
    except ValueError as error:
        log.error(kv("saved_plan_unusable", file=str(path), error=str(error), effect="waiting for the collector's"))
        return None


def save_plan(path: Path, body: bytes) -> None:
    """Write `body` to `path` so that a crash leaves the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(body)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class PlanClient:
    """Polls the collector for this probe's plan and calls `on_plan` with each new one that checks out."""

    def __init__(
        self,
        client: CollectorClient,
        collector_url: str,
        token: str,
        identity: ProbeIdentity,
        poll_interval: float,
        request_timeout: float,
        saved_path: Path,
        on_plan: Callable[[AppliedPlan], None],
        version: str = "",
        rng: random.Random | None = None,
    ) -> None:
        """`version`: the plan the probe runs now (from disk), sent as If-None-Match."""
        self._client = client
        self._url = collector_url.rstrip("/") + PLAN_PATH
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        query = [("city", identity.city), ("isp", identity.isp)] + [
            ("label", f"{key}:{value}") for key, value in sorted(identity.labels.items())
        ]
        self._request_url = f"{self._url}?{urlencode(query, quote_via=quote)}"
        self._probe_id = identity.id
        self._interval = poll_interval
        self._timeout = request_timeout
        self._saved_path = saved_path
        self._on_plan = on_plan
        self.version = version
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self._failures = 0
        #: what the last poll found: applied, unchanged, invalid, refused, no_plan, unreachable
        self.last_outcome = ""
        self.polls = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Poll until stopped."""
        while not self._stop.is_set():
            outcome = await self.poll()
            self._failures = 0 if outcome in ("applied", "unchanged") else self._failures + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._next_wait())

    def _next_wait(self) -> float:
        if self._failures and not self.version:
            return min(self._interval, _FIRST_RETRY_SECONDS * 2.0 ** min(self._failures - 1, 16))
        return self._interval * self._rng.uniform(1 - _JITTER, 1 + _JITTER)

    async def poll(self) -> str:
        """Ask once; returns the outcome (also in `last_outcome`)."""
        self.polls += 1
        self.last_outcome = outcome = await self._poll()
        return outcome

    async def _poll(self) -> str:
        headers = dict(self._headers)
        if self.version:
            headers["If-None-Match"] = f'"{self.version}"'
        try:
            answer = await self._client.request("GET", self._request_url, headers=headers, timeout=self._timeout,
                                                max_body=MAX_PLAN_BYTES + 1)  # fmt: skip
            body, status = answer.body, answer.status
        except (TimeoutError, OSError) as error:
            log.warning(kv("plan_unreachable", collector=self._url, error=f"{type(error).__name__}: {error}",
                           effect=f"measuring plan {self.version or 'none'}"))  # fmt: skip
            return "unreachable"
        if status == 304:
            return "unchanged"
        reason = _reason(body)
        if status == 404:
            log.info(kv("collector_has_no_plan", collector=self._url, reason=reason))
            return "no_plan"
        if status != 200:
            log.error(kv("plan_refused", status=status, reason=reason, effect=f"measuring plan {self.version or 'none'}"))
            return "refused"
        if len(body) > MAX_PLAN_BYTES:
            log.error(kv("plan_invalid", error=f"larger than {MAX_PLAN_BYTES} bytes", effect=f"measuring plan {self.version or 'none'}"))
            return "invalid"
        try:
            applied = _checked(body, self._probe_id, f"plan from {self._url}")
        except ValueError as error:
            log.error(kv("plan_invalid", error=str(error), effect=f"measuring plan {self.version or 'none'}"))
            return "invalid"
        if applied.version == self.version:
            return "unchanged"
        self._on_plan(applied)
        self.version = applied.version
        try:
            await asyncio.to_thread(save_plan, self._saved_path, body)
        except OSError as error:
            log.error(kv("plan_not_saved", file=str(self._saved_path), error=error.strerror or str(error),
                         effect="measuring it now; after a restart the probe waits for the collector"))  # fmt: skip
        return "applied"


def _reason(body: bytes) -> str:
    """The `error` of a JSON error body, else its first 200 characters."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", errors="replace")
    error, field = (decoded.get("error"), decoded.get("field")) if isinstance(decoded, dict) else (None, None)
    if isinstance(error, str):
        return error + (f" (at {field})" if isinstance(field, str) else "")
    return body[:200].decode("utf-8", errors="replace")
