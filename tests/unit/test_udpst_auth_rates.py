"""RFC 9946 authentication (the per-test key derivation against OpenSSL's KBKDF, key files), the
sending-rate table against rows computed by hand, and the server's rate search on scripted trials."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from qiancheng.core.udpst import auth
from qiancheng.core.udpst.pdu import (
    ACTIVATION_INDEX_IS_START,
    ALGORITHM_B,
    ALGORITHM_C,
    NO_VALUE,
    RANDOM_SIZE,
    Activation,
    SendingRate,
    Setup,
    Status,
)
from qiancheng.core.udpst.rate_control import RateSearch
from qiancheng.core.udpst.rates import HIGH_SPEED_INDEX, MAX_INDEX, ip_bits_per_second, sending_rates


@pytest.mark.parametrize(
    ("key", "unix_time", "client", "server"),
    [
        # OpenSSL 3's KBKDF (counter mode, HMAC-SHA-256, label "UDPSTP", the time as context, 64 bytes)
        (b"firstkey", 1_700_000_000, "c46aefd47f968e6dad28d6189797fd06f4a8122fbaccc5b40faa0ac184592c29",
         "e8c791f77f8195c14eb00897fdb696991fe1ce567b5ce0d38f74f2f3300b04ce"),
        (b"testkey", 1_796_687_564, "bdbe4915f6073d331756a85b4cb2470f8c5fa6d8d20ce8ca83f9936f4d28b024",
         "99411f72980a42ab668c865ad6f98974ff3ab7efd8842163ef73d6702015eb2e"),
    ],
)  # fmt: skip
def test_per_test_keys_are_sp_800_108s_kdf(key: bytes, unix_time: int, client: str, server: str) -> None:
    assert auth.derive_keys(key, unix_time) == (bytes.fromhex(client), bytes.fromhex(server))


def test_the_legacy_digest_is_keyed_with_the_shared_key() -> None:
    request = Setup(version=11).pack(checksum=False)
    assert auth.legacy_digest(request, b"legacykey", Setup.DIGEST_AT, Setup.CHECKSUM_AT) == hmac.new(
        b"legacykey", request, hashlib.sha256).digest()


def test_a_key_file_with_comments_and_every_way_of_writing_an_id(tmp_path: Path) -> None:
    path = tmp_path / "udpst.keys"
    path.write_text("# city keys\n0,legacykey\n\n1 firstkey   # the first\n0x0a,\ttenkey\n017,fifteenkey\n")
    table = auth.load_key_table(path)
    assert table.keys == {0: b"legacykey", 1: b"firstkey", 10: b"tenkey", 15: b"fifteenkey"}
    assert table[10] == b"tenkey" and table.get(2) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1,a\n1,b\n", r"udpst.keys:2: key id 1 appears twice"),
        ("256,a\n", r"udpst.keys:1: key id 256 is outside 0-255"),
        ("x,a\n", r"udpst.keys:1: key id 'x' is not a number"),
        ("3\n", r"udpst.keys:1: expected `<id>,<key>`, found 1 field"),
        ("3," + "k" * 65 + "\n", r"udpst.keys:1: the key is longer than 64 characters"),
        ("# nothing\n", r"udpst.keys: no keys"),
    ],
)
def test_a_bad_key_file_names_its_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "udpst.keys"
    path.write_text(text)
    with pytest.raises(auth.KeyFileError, match=reason):
        auth.load_key_table(path)


# rows computed by hand from the table's construction (rates: IP packets, payload + 28 bytes)
@pytest.mark.parametrize(
    ("jumbo", "traditional", "index", "row", "bits"),
    [
        # one datagram of 52-1222 random bytes every 50 ms: a mean of (52 + 1222) // 2 + 28 = 665 bytes, 20 a second
        (True, False, 0, SendingRate(0, 0, 0, 50_000, 0, 0, RANDOM_SIZE | 1222), 665 * 20 * 8),
        (True, False, 1, SendingRate(0, 0, 0, 1000, 0, 0, 97), 1_000_000),  # (97 + 28) bytes every 1 ms
        (True, False, 2, SendingRate(0, 0, 0, 1000, 0, 0, 222), 2_000_000),
        (True, False, 10, SendingRate(0, 0, 0, 1000, 1222, 1, 0), 10_000_000),  # 1250 bytes every 1 ms
        (True, False, 99, SendingRate(0, 0, 0, 1000, 1222, 9, 1097), 99_000_000),
        (True, False, 100, SendingRate(100, 1222, 1), 100_000_000),  # 1250 bytes every 100 µs
        (True, False, 101, SendingRate(100, 1222, 1, 1000, 0, 0, 97), 101_000_000),
        (True, False, 999, SendingRate(100, 1222, 9, 1000, 1222, 9, 1097), 999_000_000),
        (True, False, 1000, SendingRate(100, 1222, 10), 1_000_000_000),
        (True, False, 1001, SendingRate(100, 1347, 10), 1_100_000_000),  # jumbo: 1375-byte packets
        (True, False, 1062, SendingRate(100, 8972, 10), 7_200_000_000),  # 9000-byte packets
        (True, False, 1063, SendingRate(100, 8972, 11), 7_920_000_000),
        (True, False, 1152, SendingRate(100, 8972, 100), 72_000_000_000),
        (False, False, 1001, SendingRate(100, 1222, 11), 1_100_000_000),
        (False, False, 1152, SendingRate(100, 1222, 100), 10_000_000_000),
        (True, True, 0, SendingRate(0, 0, 0, 50_000, 0, 0, RANDOM_SIZE | 1472), 790 * 20 * 8),
        (True, True, 10, SendingRate(0, 0, 0, 1000, 0, 0, 1222), 10_000_000),  # the 10 Mbit/s add-on
        (True, True, 100, SendingRate(0, 0, 0, 1000, 1472, 8, 472), 100_000_000),  # 8 × 12 + 4 Mbit/s
        (True, True, 1000, SendingRate(100, 1472, 8, 1000, 1472, 3, 472), 1_000_000_000),  # 960 + 36 + 4
        (True, True, 1001, SendingRate(100, 1347, 10), 1_100_000_000),
        (False, True, 1001, SendingRate(100, 1472, 9), 1_080_000_000),
        (False, True, 1152, SendingRate(100, 1472, 100), 12_000_000_000),
    ],
)
def test_sending_rate_rows(jumbo: bool, traditional: bool, index: int, row: SendingRate, bits: int) -> None:
    table = sending_rates(jumbo, traditional)
    assert table[index] == row
    assert ip_bits_per_second(row) == bits


@pytest.mark.parametrize(("jumbo", "traditional"), [(True, False), (False, False), (True, True), (False, True)])
def test_every_row_below_a_gigabit_is_its_index_in_mbits_and_the_table_only_rises(jumbo: bool, traditional: bool) -> None:
    table = sending_rates(jumbo, traditional)
    assert len(table) == MAX_INDEX + 1
    assert all(ip_bits_per_second(table[index]) == index * 1_000_000 for index in range(1, HIGH_SPEED_INDEX + 1))
    rates = [ip_bits_per_second(row) for row in table]
    assert all(lower <= higher for lower, higher in zip(rates, rates[1:])), "a higher row never sends less"
    assert all(row.burst1 <= 100 and row.burst2 <= 100 for row in table)


def trial(loss: int = 0, rtt_var: int = 0, **fields: int) -> Status:
    return Status(loss=loss, rtt_var_sample_ms=rtt_var, **fields)  # type: ignore[arg-type]


GOOD, BAD, BETWEEN = trial(), trial(loss=11), trial(rtt_var=50)


def test_algorithm_b_climbs_ten_rows_falls_thirty_once_then_moves_by_one() -> None:
    search = RateSearch(ALGORITHM_B)
    assert [search.after_trial(GOOD) for _ in range(3)] == [10, 20, 30]
    assert search.after_trial(BETWEEN) == 30, "delay variation between the thresholds: stay"
    assert [search.after_trial(BAD) for _ in range(3)] == [29, 28, 0], "the third congested trial drops 3 × 10"
    assert [search.after_trial(GOOD) for _ in range(2)] == [1, 2], "after that, one row at a time"
    assert search.after_trial(trial(rtt_var=91)) == 1, "delay variation over the upper threshold is congestion"


def test_algorithm_b_takes_ten_row_steps_only_up_to_a_gigabit_and_one_row_steps_beyond() -> None:
    search = RateSearch(ALGORITHM_B, index=995)
    assert [search.after_trial(GOOD) for _ in range(3)] == [1000, 1001, 1002]
    search = RateSearch(ALGORITHM_B, index=MAX_INDEX)
    assert search.after_trial(GOOD) == MAX_INDEX


def test_algorithm_c_doubles_every_second_good_trial_and_retries_fast_steps_later() -> None:
    search = RateSearch(ALGORITHM_C)
    assert [search.after_trial(GOOD) for _ in range(8)] == [1, 2, 2, 4, 4, 8, 8, 16]
    search = RateSearch(ALGORITHM_C, index=600)
    assert search.after_trial(GOOD) == 1000, "doubling past 1 Gbit/s stops at it"
    search = RateSearch(ALGORITHM_C, index=500)
    assert [search.after_trial(BAD) for _ in range(3)] == [499, 498, 468]
    # slowed: one row per trial, up or down; the fifth such move allows fast steps again, and the
    # next good trial arms the doubling, the one after doubles
    assert [search.after_trial(GOOD) for _ in range(5)] == [469, 470, 471, 471, 942]


def test_errors_count_reordering_only_when_asked_and_no_sample_moves_on_errors_alone() -> None:
    reordered = trial(loss=5, reordered=6)
    assert RateSearch(ALGORITHM_B, index=50).after_trial(reordered) == 60
    assert RateSearch(ALGORITHM_B, index=50, ignore_reorder_duplicates=False).after_trial(reordered) == 49
    no_sample = trial(rtt_var=NO_VALUE)
    assert RateSearch(ALGORITHM_B, index=50).after_trial(no_sample) == 50, "at the low threshold: neither"
    assert RateSearch(ALGORITHM_B, index=50).after_trial(trial(loss=11, rtt_var=NO_VALUE)) == 49


def test_one_way_delay_variation_is_the_trials_rounded_mean() -> None:
    # 29.5 ms on average rounds to 30: not below the low threshold of 30, so no climb
    search = RateSearch(ALGORITHM_B, index=50, one_way_delay=True)
    assert search.after_trial(trial(delay_var_sum_ms=59, delay_var_count=2, rtt_var=0)) == 50
    assert search.after_trial(trial(delay_var_sum_ms=58, delay_var_count=2, rtt_var=99)) == 60, "29 ms: climb"


def test_ecn_ce_marks_past_the_threshold_are_congestion() -> None:
    # threshold 52 of 255: (51 × 1000 / 255) = 200 of 1000 datagrams may be marked
    search = RateSearch(ALGORITHM_B, index=50, ce_threshold=52)
    assert search.after_trial(trial(trial_datagrams=1000, ce_trial=200)) == 60
    assert search.after_trial(trial(trial_datagrams=1000, ce_trial=201)) == 59


def test_fixed_rates_suppression_and_starting_rows_come_from_the_activation() -> None:
    fixed = RateSearch.for_activation(Activation(rate_index=420, suppress_sub_intervals=2))
    assert fixed.after_trial(trial(sub_interval_seq=1)) == 0, "row 0 while adjustment is suppressed"
    assert fixed.after_trial(trial(sub_interval_seq=2)) == 420
    assert fixed.after_trial(trial(loss=99, sub_interval_seq=3)) == 420, "a fixed rate never moves"
    start = RateSearch.for_activation(Activation(rate_index=420, modifiers=ACTIVATION_INDEX_IS_START))
    assert start.after_trial(GOOD) == 430
    search = RateSearch.for_activation(Activation(algorithm=ALGORITHM_C, seq_error_threshold=0))
    assert search.after_trial(trial(loss=1)) == 0 and search.algorithm == ALGORITHM_C
