"""Breach state with hysteresis: a breach opens after N consecutive bad windows, closes after M good ones.

A pure state machine over verdicts: True (the window met the objective), False (it did not), None
(no data). "No data" is neither: it ends any breach and streak, and is reported as such, so that a
silent probe or an unmeasured indicator never reads as a pass or as a breach.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["Status", "BreachState", "step"]

Status = Literal["ok", "breach", "no_data"]


@dataclass(frozen=True, slots=True)
class BreachState:
    """Where one objective stands: its status since `since_ns` (UTC ns), and the current streaks."""

    status: Status
    since_ns: int
    bad_streak: int = 0
    good_streak: int = 0


def step(state: BreachState | None, verdict: bool | None, now_ns: int, open_after: int, close_after: int) -> BreachState:
    """The state after one more judged window; `since_ns` moves only when the status changes."""
    if verdict is None:
        if state is not None and state.status == "no_data":
            return state
        return BreachState("no_data", now_ns)
    if state is None or state.status == "no_data":
        state = BreachState("ok", now_ns)
    if verdict:
        good, bad = state.good_streak + 1, 0
    else:
        good, bad = 0, state.bad_streak + 1
    status: Status = state.status
    if status == "ok" and bad >= open_after:
        status = "breach"
    elif status == "breach" and good >= close_after:
        status = "ok"
    since = now_ns if status != state.status else state.since_ns
    return replace(state, status=status, since_ns=since, bad_streak=bad, good_streak=good)
