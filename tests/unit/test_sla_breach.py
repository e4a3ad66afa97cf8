"""Hysteresis: a breach opens after N consecutive bad windows and closes after M good ones; no data is neither."""

from __future__ import annotations

from qiancheng.collector.sla.breach import BreachState, step


def run(verdicts: list[bool | None], open_after: int = 3, close_after: int = 2) -> list[BreachState]:
    states: list[BreachState] = []
    state: BreachState | None = None
    for second, verdict in enumerate(verdicts):
        state = step(state, verdict, second, open_after, close_after)
        states.append(state)
    return states


def test_opens_only_after_n_consecutive_bad_windows() -> None:
    statuses = [s.status for s in run([False, False, True, False, False, False])]
    assert statuses == ["ok", "ok", "ok", "ok", "ok", "breach"]


def test_closes_only_after_m_consecutive_good_windows_and_since_marks_each_change() -> None:
    states = run([False, False, False, True, False, True, True, True])
    assert [s.status for s in states] == ["ok", "ok", "breach", "breach", "breach", "breach", "ok", "ok"]
    assert states[2].since_ns == 2 and states[5].since_ns == 2  # the breach began at the third window
    assert states[6].since_ns == 6


def test_no_data_ends_a_breach_and_restarts_the_streaks() -> None:
    states = run([False, False, False, None, None, False, False, False])
    assert [s.status for s in states] == ["ok", "ok", "breach", "no_data", "no_data", "ok", "ok", "breach"]
    assert states[4].since_ns == 3  # no data since the first window without any
    assert states[5].bad_streak == 1


def test_one_window_hysteresis_follows_every_verdict() -> None:
    assert [s.status for s in run([False, True, False], open_after=1, close_after=1)] == ["breach", "ok", "breach"]
