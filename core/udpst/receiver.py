"""The load's receiver (the client downstream, the server upstream): what it counts of the Load PDUs,
per trial interval and per sub-interval, and the Status Feedback PDUs it sends from those counts.

Per datagram (`on_load`, the hot path):
- counted: one datagram and the UDP payload bytes its header declares, duplicates and late ones too;
- sequence: a number past the highest seen counts the gap as loss; one at or below it is a duplicate
  when among the last 32 accepted, else out of order, and then takes back one loss of the current
  trial and sub-interval (a loss reported in an earlier one stays reported);
- one-way delay, of in-order datagrams only: arrival minus send time in ms (the clocks' offset
  included, so only its variation means anything): its minimum so far, and the variation above it;
- round-trip time, when a datagram carries the send time of a status not seen before: arrival minus
  that time, less the sender's declared response delay; its minimum so far, and the variation above it.

Per status (`status`, every trial interval, once a datagram has arrived): the trial's counts, then
reset. Sub-intervals close at the first status past `sub-interval − trial/2` (their length has the
trial's granularity) and ride, as the last closed one, in every status after.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .pdu import NO_VALUE, TEST, SendingRate, Status, SubIntervalStats

__all__ = ["LoadReceiver", "RECENT_SEQUENCE_NUMBERS", "round_ms"]

#: how many accepted sequence numbers are remembered to tell a duplicate from a late datagram
RECENT_SEQUENCE_NUMBERS = 32
_ZERO_RATE = SendingRate()


def round_ms(nanoseconds: int) -> int:
    """A duration in ns as whole ms, rounded half up (negative ones too: floor of ns/1e6 + 0.5)."""
    return (nanoseconds + 500_000) // 1_000_000


@dataclass(slots=True)
class _Counts:
    """What one trial interval or one sub-interval counted."""

    datagrams: int = 0
    payload_bytes: int = 0
    loss: int = 0
    reordered: int = 0
    duplicates: int = 0
    delay_var_min: int = NO_VALUE
    delay_var_max: int = 0
    delay_var_sum: int = 0
    delay_var_count: int = 0
    rtt_var_min: int = NO_VALUE
    rtt_var_max: int = 0

    def delay_variation(self, value: int) -> None:
        self.delay_var_min = min(self.delay_var_min, value)
        self.delay_var_max = max(self.delay_var_max, value)
        self.delay_var_sum += value
        self.delay_var_count += 1


@dataclass(slots=True)
class LoadReceiver:
    """One connection's receiving end of the load."""

    trial_ms: int = 50
    sub_interval_ms: int = 1000
    auth_mode: int = 0
    #: closed sub-intervals, oldest first (the client's result is computed from them)
    closed: list[SubIntervalStats] = field(default_factory=list)
    _highest_seq: int = 0
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_SEQUENCE_NUMBERS))
    _trial: _Counts = field(default_factory=_Counts)
    _sub: _Counts = field(default_factory=_Counts)
    _clock_delta_min: int | None = None
    _rtt_min: int = NO_VALUE
    _rtt_var_sample: int = NO_VALUE
    _min_updated: bool = False
    _last_status_time: tuple[int, int] = (0, 0)
    _status_seq: int = 0
    _trial_started_ns: int | None = None
    _sub_started_ns: int | None = None
    _accumulated_ms: int = 0
    _last_arrival_ns: int | None = None

    @property
    def received(self) -> bool:
        return self._highest_seq > 0 or bool(self._trial.datagrams)

    @property
    def rtt_min_ms(self) -> int | None:
        return None if self._rtt_min == NO_VALUE else self._rtt_min

    def on_load(self, seq: int, payload_bytes: int, sent_s: int, sent_ns: int, status_sent_s: int, status_sent_ns: int,
                response_delay_ms: int, now_ns: int) -> None:  # fmt: skip
        """Account one Load PDU (its header's fields) that arrived at `now_ns` (UTC ns)."""
        trial, sub = self._trial, self._sub
        trial.datagrams += 1
        sub.datagrams += 1
        trial.payload_bytes += payload_bytes
        sub.payload_bytes += payload_bytes
        self._last_arrival_ns = now_ns
        if self._trial_started_ns is None:
            self._trial_started_ns = now_ns
        highest = self._highest_seq
        if seq > highest:
            if gap := seq - highest - 1:
                trial.loss += gap
                sub.loss += gap
            self._highest_seq = seq
            self._recent.append(seq)
        elif seq in self._recent:
            trial.duplicates += 1
            sub.duplicates += 1
            return
        else:  # late: it was counted lost when a later one came
            trial.reordered += 1
            sub.reordered += 1
            trial.loss -= trial.loss > 0
            sub.loss -= sub.loss > 0
            self._recent.append(seq)
            return
        if (status_sent_s, status_sent_ns) != self._last_status_time:
            self._last_status_time = (status_sent_s, status_sent_ns)
            rtt = round_ms(now_ns - status_sent_s * 1_000_000_000 - status_sent_ns)
            if response_delay_ms <= rtt:
                rtt -= response_delay_ms
            elif response_delay_ms == rtt + 1:  # each end rounded to the ms
                rtt = 0
            if rtt < self._rtt_min:
                self._rtt_min = rtt
                self._min_updated = True
            self._rtt_var_sample = variation = rtt - self._rtt_min
            sub.rtt_var_min = min(sub.rtt_var_min, variation)
            sub.rtt_var_max = max(sub.rtt_var_max, variation)
        delta = round_ms(now_ns - sent_s * 1_000_000_000 - sent_ns)
        if self._clock_delta_min is None:  # the first datagram only sets the minimum
            self._clock_delta_min = delta
            self._min_updated = True
            return
        if delta < self._clock_delta_min:
            self._clock_delta_min = delta
            self._min_updated = True
        variation = delta - self._clock_delta_min
        trial.delay_variation(variation)
        sub.delay_variation(variation)

    def status(self, now_ns: int, rate: SendingRate = _ZERO_RATE, test_action: int = TEST) -> Status | None:
        """The Status PDU due now (None before any load arrived), its trial's counts then reset; closes
        the sub-interval when it is due. `rate`: the row the server tells an upstream sender."""
        if not self.received:
            return None
        trial = self._trial
        started = self._trial_started_ns if self._trial_started_ns is not None else now_ns
        rx_stopped = self._last_arrival_ns is not None and now_ns - self._last_arrival_ns >= 1_000_000_000
        self._status_seq += 1
        status = Status(
            test_action=test_action, rx_stopped=rx_stopped, seq=self._status_seq, rate=rate,
            sub_interval_seq=len(self.closed), sub_interval=self.closed[-1] if self.closed else SubIntervalStats(),
            loss=trial.loss, reordered=trial.reordered, duplicates=trial.duplicates,
            clock_delta_min_ms=self._clock_delta_min or 0, delay_var_min_ms=trial.delay_var_min,
            delay_var_max_ms=trial.delay_var_max, delay_var_sum_ms=trial.delay_var_sum,
            delay_var_count=trial.delay_var_count, rtt_min_ms=self._rtt_min, rtt_var_sample_ms=self._rtt_var_sample,
            delay_min_updated=self._min_updated, trial_us=(now_ns - started) // 1000, trial_datagrams=trial.datagrams,
            trial_bytes=trial.payload_bytes & 0xFFFF_FFFF, sent_s=now_ns // 1_000_000_000,
            sent_ns=now_ns % 1_000_000_000, auth_mode=self.auth_mode,
        )  # fmt: skip
        self._trial = _Counts()
        self._rtt_var_sample = NO_VALUE
        self._min_updated = False
        self._trial_started_ns = now_ns
        self._after_status(now_ns)
        return status

    def _after_status(self, now_ns: int) -> None:
        if self._sub_started_ns is None:  # the first status starts the first sub-interval
            self._sub_started_ns = now_ns
            self._sub = _Counts()
            return
        elapsed_ns = now_ns - self._sub_started_ns
        if round_ms(elapsed_ns) <= self.sub_interval_ms - self.trial_ms // 2:
            return  # closed at the status nearest its end: the trial's granularity
        sub = self._sub
        self._accumulated_ms += round_ms(elapsed_ns)
        self.closed.append(SubIntervalStats(
            rx_datagrams=sub.datagrams, rx_bytes=sub.payload_bytes, delta_us=elapsed_ns // 1000, loss=sub.loss,
            reordered=sub.reordered, duplicates=sub.duplicates, delay_var_min_ms=sub.delay_var_min,
            delay_var_max_ms=sub.delay_var_max, delay_var_sum_ms=sub.delay_var_sum,
            delay_var_count=sub.delay_var_count, rtt_var_min_ms=sub.rtt_var_min, rtt_var_max_ms=sub.rtt_var_max,
            accumulated_ms=self._accumulated_ms,
        ))  # fmt: skip
        self._sub = _Counts()
        self._sub_started_ns = now_ns
