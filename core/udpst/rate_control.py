"""The server's search for the maximum IP-layer capacity: after every trial interval (50 ms), move the
index into the sending-rate table up, down or not at all, from what the load's receiver reported.

A trial is *good* when its sequence errors (losses; reordering and duplicates too, unless ignored) are
at most the threshold, its delay variation is below the low threshold, and no more datagrams than the
ECN threshold allows came marked CE; it is *bad* when errors pass the threshold, delay variation
passes the upper threshold, or CE marks pass theirs; between the thresholds it is neither. Delay
variation is the trial's RTT above the smallest RTT seen (its one-way delay variation, averaged, when
asked); a trial without a sample counts as sitting at the low threshold, so only errors move it.

Algorithm B (ITU-T Y.1540 Annex B, Broadband Forum TR-471): below 1 Gbit/s a good trial climbs
`high_speed_delta` rows (10 Mbit/s) at a time until `slow_adjust_threshold` bad trials have been seen
since the last such climb; the bad trial that reaches that count drops 3 × delta rows, once; every other
move is one row. Above row 1000 every move is one row. Algorithm C doubles the index every second
good trial below 1 Gbit/s instead, and after five one-row moves (ten, fifteen, ... later) allows fast
steps again ("multiply and retry").

A fixed rate (a row given and not marked a start) is never adjusted; with the adjustment suppressed
for the first sub-intervals, the load runs at row 0 meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pdu import ACTIVATION_INDEX_IS_START, ALGORITHM_C, NO_VALUE, SEARCH_INDEX, Activation, Status
from .rates import HIGH_SPEED_INDEX, MAX_INDEX

__all__ = ["RateSearch"]


@dataclass(slots=True)
class RateSearch:
    """One connection's index into the sending-rate table, moved after every trial."""

    algorithm: int
    seq_error_threshold: int = 10
    low_threshold_ms: int = 30
    upper_threshold_ms: int = 90
    slow_adjust_threshold: int = 3
    high_speed_delta: int = 10
    ignore_reorder_duplicates: bool = True
    one_way_delay: bool = False
    ce_threshold: int = 0
    #: a fixed row (the Test Activation's index, not marked as a start), or None for a search
    fixed_index: int | None = None
    suppress_sub_intervals: int = 0
    index: int = 0
    max_index: int = MAX_INDEX
    _slow_count: int = 0
    _retry_count: int = 0
    _retry_threshold: int = 5
    _double_next: bool = False

    @classmethod
    def for_activation(cls, activation: Activation) -> RateSearch:
        """The search a Test Activation (as the server answered it) asks for: from row 0, from its index
        when that is marked a start, or at its index fixed."""
        search = cls(
            activation.algorithm, activation.seq_error_threshold, activation.low_threshold_ms,
            activation.upper_threshold_ms, activation.slow_adjust_threshold, activation.high_speed_delta,
            activation.ignore_reorder_duplicates, activation.one_way_delay, activation.ce_threshold,
            suppress_sub_intervals=activation.suppress_sub_intervals,
        )  # fmt: skip
        if activation.rate_index != SEARCH_INDEX:
            search.index = activation.rate_index
            if not activation.modifiers & ACTIVATION_INDEX_IS_START:
                search.fixed_index = activation.rate_index
        return search

    def current(self, sub_interval_seq: int) -> int:
        """The row to send at now (row 0 while a fixed rate waits out the suppression)."""
        if self.fixed_index is not None:
            return 0 if sub_interval_seq < self.suppress_sub_intervals else self.fixed_index
        return self.index

    def after_trial(self, status: Status) -> int:
        """Move after the trial `status` reports; returns the row to send at next."""
        if status.sub_interval_seq < self.suppress_sub_intervals or self.fixed_index is not None:
            return self.current(status.sub_interval_seq)
        errors = status.loss if self.ignore_reorder_duplicates else status.loss + status.reordered + status.duplicates
        delay = self._delay_ms(status)
        congested = self._ce_marked(status)
        if errors <= self.seq_error_threshold and delay < self.low_threshold_ms and not congested:
            self._up()
        elif errors > self.seq_error_threshold or delay > self.upper_threshold_ms or congested:
            self._down()
        return self.index

    def _delay_ms(self, status: Status) -> int:
        if self.one_way_delay:
            if status.delay_var_count:  # the trial's mean, rounded to the nearest ms
                return (status.delay_var_sum_ms * 10 // status.delay_var_count + 5) // 10
        elif status.rtt_var_sample_ms != NO_VALUE:
            return status.rtt_var_sample_ms
        return self.low_threshold_ms  # no sample: neither up nor down on delay

    def _ce_marked(self, status: Status) -> bool:
        if not self.ce_threshold:
            return False
        # the threshold is out of 255: (threshold − 1)/255 of the trial's datagrams may be marked, rounded
        allowed = ((self.ce_threshold - 1) * status.trial_datagrams * 10 // 255 + 5) // 10
        return status.ce_trial > allowed

    def _up(self) -> None:
        fast = self.index < HIGH_SPEED_INDEX and self._slow_count < self.slow_adjust_threshold
        if self.algorithm == ALGORITHM_C:
            self._up_multiplying(fast)
        elif fast:
            self.index = min(self.index + self.high_speed_delta, HIGH_SPEED_INDEX)
            self._slow_count = 0
        elif self.index < self.max_index:
            self.index += 1

    def _up_multiplying(self, fast: bool) -> None:
        if fast:
            if 2 * self.index > HIGH_SPEED_INDEX:
                self.index = HIGH_SPEED_INDEX
            else:
                self.index = max(self.index, 1)
                if self._double_next:
                    self.index *= 2
                self._double_next = not self._double_next
            self._slow_count = 0
            return
        if self.index < self.max_index:
            self.index += 1
            self._retry_count += 1
        if self._retry_count >= self._retry_threshold:  # allow fast steps again, later each time
            self._slow_count = self._retry_count = 0
            self._retry_threshold += 5

    def _down(self) -> None:
        self._slow_count += 1
        if self.index < HIGH_SPEED_INDEX and self._slow_count == self.slow_adjust_threshold:
            step = 3 * self.high_speed_delta
            self.index = self.index - step if self.index > step else 0
        elif self.index > 0:
            self.index -= 1
            if self.algorithm == ALGORITHM_C:
                self._retry_count += 1
                if self._retry_count >= self._retry_threshold:
                    self._slow_count = self._retry_count = 0
