"""What a push says of the probe's software: its version (User-Agent) and the central plan it runs
(Qiancheng-Plan). Headers rather than batch fields, so that older collectors accept newer probes
(core/wire.py)."""

from __future__ import annotations

import re
from typing import Final

from multidict import CIMultiDictProxy

from qiancheng.core.plan_wire import PLAN_VERSION_PATTERN
from qiancheng.core.wire import PLAN_HEADER, USER_AGENT_PREFIX

from .refused import Refused

__all__ = ["probe_software"]

_VERSION: Final = re.compile(r"[0-9A-Za-z.+_~-]{1,32}")
_PLAN: Final = re.compile(PLAN_VERSION_PATTERN)


def probe_software(headers: CIMultiDictProxy[str]) -> tuple[str, str]:
    """(version, plan): "" where not said. Another client's User-Agent (curl, a script) is no version; a
    Qiancheng-Plan that is no plan version is a 400, as any malformed part of a push."""
    agent = headers.get("User-Agent", "")
    version = ""
    if agent.startswith(USER_AGENT_PREFIX):
        word = agent[len(USER_AGENT_PREFIX) :].split(" ", 1)[0]
        version = word if _VERSION.fullmatch(word) else ""
    plans = headers.getall(PLAN_HEADER, [])
    if len(plans) > 1 or (plans and not _PLAN.match(plans[0])):
        shown = ", ".join(repr(plan[:40]) for plan in plans)
        raise Refused(400, f"{PLAN_HEADER}: one plan version, 16 lowercase hex digits as GET /api/v1/plan gives it; "
                           f"got {shown}", PLAN_HEADER)  # fmt: skip
    return version, plans[0] if plans else ""
