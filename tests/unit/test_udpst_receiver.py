"""RFC 9946 load receiver and capacity figures, on hand-computed sequences: loss, reordering and
duplicates, one-way delay variation over an unknown clock offset, round trips from status send times,
sub-intervals closing on the trial's granularity, and the maximum IP-layer capacity of RFC 9097."""

from __future__ import annotations

import pytest

from qiancheng.core.udpst.capacity import maximum, rates
from qiancheng.core.udpst.pdu import NO_VALUE, SendingRate, SubIntervalStats
from qiancheng.core.udpst.receiver import LoadReceiver, round_ms

MS = 1_000_000
T0 = 1_796_687_564 * 1_000_000_000  # a wall clock, ns
OFFSET = 1000 * MS  # the sender's clock runs a second behind the receiver's


def arrive(receiver: LoadReceiver, seq: int, at_ns: int, delay_ms: int = 10, payload: int = 1222,
           status_time: int = 0, response_delay_ms: int = 0) -> None:  # fmt: skip
    sent = at_ns - delay_ms * MS - OFFSET
    receiver.on_load(seq, payload, sent // 10**9, sent % 10**9, status_time // 10**9, status_time % 10**9,
                     response_delay_ms, at_ns)  # fmt: skip


def test_round_ms_rounds_half_up_both_ways() -> None:
    assert [round_ms(x) for x in (1_499_999, 1_500_000, -1_500_000, -1_500_001, 0)] == [1, 2, -1, -2, 0]


def test_no_status_before_the_first_datagram() -> None:
    assert LoadReceiver().status(T0) is None


def test_gaps_are_loss_late_ones_take_it_back_and_recent_repeats_are_duplicates() -> None:
    receiver = LoadReceiver()
    for seq in (1, 2, 3, 6, 5, 5, 7):  # 4 and 5 missing at 6; 5 comes late, then again
        arrive(receiver, seq, T0 + seq * MS)
    status = receiver.status(T0 + 50 * MS)
    assert status is not None
    assert (status.loss, status.reordered, status.duplicates) == (1, 1, 1)
    assert (status.trial_datagrams, status.trial_bytes) == (7, 7 * 1222), "every datagram counts, repeats too"
    assert status.seq == 1 and status.sub_interval_seq == 0


def test_a_loss_reported_in_an_earlier_trial_stays_reported() -> None:
    receiver = LoadReceiver()
    arrive(receiver, 1, T0)
    arrive(receiver, 4, T0 + MS)
    first = receiver.status(T0 + 50 * MS)
    assert first is not None and first.loss == 2
    arrive(receiver, 3, T0 + 60 * MS)
    second = receiver.status(T0 + 100 * MS)
    assert second is not None and (second.loss, second.reordered) == (0, 1)


def test_a_duplicate_is_told_from_a_late_datagram_by_the_last_32_accepted() -> None:
    receiver = LoadReceiver()
    for seq in range(1, 41):
        arrive(receiver, seq, T0 + seq * MS)
    arrive(receiver, 40 - 31, T0 + 41 * MS)  # the 32nd most recent: remembered
    arrive(receiver, 40 - 32, T0 + 42 * MS)  # the 33rd: taken for late
    status = receiver.status(T0 + 50 * MS)
    assert status is not None and (status.duplicates, status.reordered) == (1, 1)


def test_one_way_delay_variation_rises_above_the_minimum_whatever_the_clock_offset() -> None:
    receiver = LoadReceiver()
    arrive(receiver, 1, T0, delay_ms=10)  # sets the minimum only: 10 ms + the 1 s offset
    arrive(receiver, 2, T0 + MS, delay_ms=12)
    arrive(receiver, 3, T0 + 2 * MS, delay_ms=11)
    status = receiver.status(T0 + 50 * MS)
    assert status is not None and status.clock_delta_min_ms == 1010
    assert (status.delay_var_min_ms, status.delay_var_max_ms, status.delay_var_sum_ms, status.delay_var_count) == (
        1, 2, 3, 2)
    assert status.delay_min_updated, "the first datagram set the minimum in this trial"
    arrive(receiver, 4, T0 + 60 * MS, delay_ms=9)  # a new minimum: variation 0
    later = receiver.status(T0 + 100 * MS)
    assert later is not None and later.clock_delta_min_ms == 1009 and later.delay_min_updated
    assert (later.delay_var_min_ms, later.delay_var_max_ms, later.delay_var_count) == (0, 0, 1)
    quiet = receiver.status(T0 + 150 * MS)
    assert quiet is not None and quiet.delay_var_min_ms == NO_VALUE and not quiet.delay_min_updated


def test_round_trips_come_from_each_new_status_time_less_the_senders_response_delay() -> None:
    receiver = LoadReceiver()
    arrive(receiver, 1, T0)  # no status received by the sender yet: its status time is 0
    status_a = T0 + 10 * MS
    arrive(receiver, 2, status_a + 25 * MS, status_time=status_a, response_delay_ms=5)  # 25 − 5 = 20 ms
    arrive(receiver, 3, status_a + 40 * MS, status_time=status_a, response_delay_ms=20)  # same status: not again
    first = receiver.status(T0 + 50 * MS)
    assert first is not None and (first.rtt_min_ms, first.rtt_var_sample_ms) == (20, 0)
    status_b = T0 + 60 * MS
    arrive(receiver, 4, status_b + 26 * MS, status_time=status_b, response_delay_ms=3)  # 23 ms: 3 above
    second = receiver.status(T0 + 100 * MS)
    assert second is not None and (second.rtt_min_ms, second.rtt_var_sample_ms) == (20, 3)
    status_c = T0 + 110 * MS
    arrive(receiver, 5, status_c + 4 * MS, status_time=status_c, response_delay_ms=5)  # rounding: 0, a new minimum
    third = receiver.status(T0 + 150 * MS)
    assert third is not None and (third.rtt_min_ms, third.rtt_var_sample_ms, third.delay_min_updated) == (0, 0, True)
    assert receiver.rtt_min_ms == 0


def test_sub_intervals_close_at_the_status_nearest_their_end_and_ride_in_later_statuses() -> None:
    receiver = LoadReceiver(trial_ms=50, sub_interval_ms=1000)
    seq = 0
    statuses = []
    for trial in range(45):  # 2.25 s of trials, 10 datagrams each, the status at the end of each
        for _ in range(10):
            seq += 1
            arrive(receiver, seq, T0 + trial * 50 * MS + seq * 1000)
        statuses.append(receiver.status(T0 + (trial + 1) * 50 * MS))
    # the first status starts the first sub-interval; the one 1000 ms later (> 975) closes it
    assert [s.sub_interval_seq for s in statuses if s][:22] == [0] * 21 + [1]
    first, second = receiver.closed
    assert first.delta_us == 1_000_000 and first.rx_datagrams == 200 and first.rx_bytes == 200 * 1222
    assert first.accumulated_ms == 1000 and second.accumulated_ms == 2000
    assert statuses[21] is not None and statuses[21].sub_interval == first
    assert statuses[-1] is not None and statuses[-1].sub_interval == second and statuses[-1].sub_interval_seq == 2


def test_the_status_carries_the_rate_and_action_it_is_given_and_says_when_load_stopped() -> None:
    receiver = LoadReceiver(auth_mode=1)
    arrive(receiver, 1, T0)
    status = receiver.status(T0 + 50 * MS, rate=SendingRate(100, 1222, 3), test_action=2)
    assert status is not None and status.rate == SendingRate(100, 1222, 3) and status.test_action == 2
    assert status.auth_mode == 1 and not status.rx_stopped and status.sent_s == T0 // 10**9
    silent = receiver.status(T0 + 1001 * MS)
    assert silent is not None and silent.rx_stopped, "nothing for a second: receive stopped"


def stats(datagrams: int, payload: int = 1222, delta_us: int = 1_000_000, loss: int = 0) -> SubIntervalStats:
    return SubIntervalStats(rx_datagrams=datagrams, rx_bytes=datagrams * payload, delta_us=delta_us, loss=loss,
                            delay_var_min_ms=1, delay_var_max_ms=4, delay_var_count=datagrams,
                            rtt_var_min_ms=0, rtt_var_max_ms=6)  # fmt: skip


def test_the_maximum_ip_layer_capacity_and_the_other_layers_of_its_sub_interval() -> None:
    # 80 000 datagrams of 1222 bytes in a second: 1250-byte IP packets, 800 Mbit/s; 1264-byte frames
    capacity = maximum([[stats(40_000), stats(80_000, loss=800), stats(60_000)]])
    assert capacity is not None
    top = capacity.maximum
    assert top.index == 2 and top.ip_bits_per_second == pytest.approx(800e6)
    assert top.ethernet_bits_per_second == pytest.approx(80_000 * 1264 * 8)
    assert capacity.loss_ratio == pytest.approx(800 / 80_800)
    assert (top.delay_var_min_ms, top.delay_var_max_ms, top.rtt_var_min_ms, top.rtt_var_max_ms) == (1, 4, 0, 6)
    assert [round(r.ip_bits_per_second) for r in capacity.sub_intervals] == [400_000_000, 800_000_000, 600_000_000]


def test_the_earliest_of_equal_sub_intervals_is_the_maximum_and_a_longer_one_is_scaled() -> None:
    capacity = maximum([[stats(50_000), stats(50_000), stats(100_000, delta_us=2_000_000)]])
    assert capacity is not None and capacity.maximum.index == 1


def test_connections_add_up_and_ipv6_counts_its_longer_header() -> None:
    two = rates([[stats(40_000)], [stats(40_000)], [stats(40_000), stats(1)]])
    assert len(two) == 1, "only sub-intervals every connection closed"
    assert two[0].ip_bits_per_second == pytest.approx(3 * 40_000 * 1250 * 8)
    v6 = rates([[stats(80_000, payload=1202)]], ipv6=True)  # IPv6 payloads are 20 bytes smaller
    assert v6[0].ip_bits_per_second == pytest.approx(800e6)
    assert maximum([]) is None and maximum([[]]) is None
