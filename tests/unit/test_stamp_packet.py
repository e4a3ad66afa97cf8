"""STAMP packets (RFC 8762 §4.2.1, §4.3.1, and authenticated §4.2.2, §4.3.2): our bytes against layouts built independently.

The reference layouts are declared here with scapy's own field classes, field by field from the RFC's
figures, and cross-checked with scapy's contrib STAMP dissector; NTP timestamps against exact rational
arithmetic; the Error Estimate against RFC 4656 §4.1.2.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from fractions import Fraction

import pytest
from scapy.contrib.stamp import ErrorEstimate as ScapyErrorEstimate
from scapy.contrib.stamp import STAMPSessionReflectorTestUnauthenticated, STAMPSessionSenderTestUnauthenticated
from scapy.fields import BitField, ByteField, IntField, LongField, ShortField, StrFixedLenField
from scapy.packet import Packet

from qiancheng.core.stamp_packet import (
    AUTHENTICATED_PACKET_BYTES,
    NTP_UNIX_OFFSET_SECONDS,
    PACKET_BYTES,
    ErrorEstimate,
    SenderPacket,
    build_reflector_packet,
    build_sender_packet,
    ns_from_ntp,
    ns_from_ptp,
    ntp_from_ns,
    packet_bytes,
    parse_reflector_packet,
    parse_sender_packet,
    stamp_timestamp,
    timestamp_offset,
    verify,
)


class RfcSenderPacket(Packet):  # RFC 8762 §4.2.1, Figure 3
    name = "STAMP sender (RFC 8762 4.2.1)"
    fields_desc = [
        IntField("sequence", 0),
        LongField("timestamp", 0),
        BitField("s", 0, 1), BitField("z", 0, 1), BitField("scale", 0, 6), ByteField("multiplier", 1),
        StrFixedLenField("mbz", b"\x00" * 30, 30),
    ]  # fmt: skip


class RfcReflectorPacket(Packet):  # RFC 8762 §4.3.1, Figure 5
    name = "STAMP reflector (RFC 8762 4.3.1)"
    fields_desc = [
        IntField("sequence", 0),
        LongField("timestamp", 0),
        BitField("s", 0, 1), BitField("z", 0, 1), BitField("scale", 0, 6), ByteField("multiplier", 1),
        ShortField("mbz1", 0),
        LongField("receive_timestamp", 0),
        IntField("sender_sequence", 0),
        LongField("sender_timestamp", 0),
        BitField("sender_s", 0, 1), BitField("sender_z", 0, 1), BitField("sender_scale", 0, 6),
        ByteField("sender_multiplier", 1),
        ShortField("mbz2", 0),
        ByteField("sender_ttl", 0),
        StrFixedLenField("mbz3", b"\x00" * 3, 3),
    ]  # fmt: skip


def exact_ntp(unix_ns: int) -> int:
    """The NTP timestamp nearest to `unix_ns`, by exact rational arithmetic (RFC 5905 §6)."""
    value = (Fraction(unix_ns, 10**9) + NTP_UNIX_OFFSET_SECONDS) * 2**32
    rounded = int(value + Fraction(1, 2))
    return rounded % 2**64


NOW_NS = 1_795_600_000_123_456_789  # 2026-11-25
ESTIMATES = [ErrorEstimate(False, 0, 1), ErrorEstimate(True, 22, 17), ErrorEstimate(False, 36, 255)]


def test_both_packets_are_44_bytes_like_the_rfc_figures() -> None:
    assert PACKET_BYTES == len(RfcSenderPacket()) == len(RfcReflectorPacket()) == 44


@pytest.mark.parametrize("sequence", [0, 1, 0xDEADBEEF, 0xFFFFFFFF])
@pytest.mark.parametrize("estimate", ESTIMATES)
@pytest.mark.parametrize("size", [44, 45, 128, 1472])
def test_sender_packet_is_the_rfc_layout(sequence: int, estimate: ErrorEstimate, size: int) -> None:
    expected = bytes(RfcSenderPacket(
        sequence=sequence, timestamp=exact_ntp(NOW_NS), s=int(estimate.synchronized), z=0,
        scale=estimate.scale, multiplier=estimate.multiplier,
    )) + bytes(size - 44)  # fmt: skip
    assert bytes(build_sender_packet(sequence, NOW_NS, estimate, size)) == expected


def test_sender_packet_reads_back_in_scapys_stamp_dissector() -> None:
    built = bytes(build_sender_packet(7, NOW_NS, ErrorEstimate(True, 20, 3)))
    dissected = STAMPSessionSenderTestUnauthenticated(built)
    assert dissected.seq == 7
    assert (dissected.err_estimate.S, dissected.err_estimate.Z) == (1, 0)
    assert (dissected.err_estimate.scale, dissected.err_estimate.multiplier) == (20, 3)
    assert dissected.ssid == 0 and dissected.mbz == 0
    # scapy's TimeStampField holds NTP seconds as a float: within a microsecond of ours
    assert abs(float(dissected.ts) - (NOW_NS / 1e9 + NTP_UNIX_OFFSET_SECONDS)) < 1e-6


def test_sender_packet_from_scapy_is_parsed() -> None:
    wire = bytes(STAMPSessionSenderTestUnauthenticated(
        seq=99, ts=3_900_000_000.5, err_estimate=ScapyErrorEstimate(S=1, Z=0, scale=30, multiplier=5), ssid=0,
    ))  # fmt: skip
    packet = parse_sender_packet(wire)
    assert packet is not None
    assert packet.sequence == 99
    assert packet.timestamp == (3_900_000_000 << 32) | 0x8000_0000
    assert packet.error_estimate == ErrorEstimate(True, 30, 5)
    assert packet.size == 44


@pytest.mark.parametrize("size", [44, 100, 1000])
def test_reflector_packet_is_the_rfc_layout_with_the_senders_fields_copied(size: int) -> None:
    sender_estimate = ErrorEstimate(True, 12, 200)
    received = bytes(build_sender_packet(4242, NOW_NS, sender_estimate, size))
    receive_ns, transmit_ns = NOW_NS + 1_000_123, NOW_NS + 1_050_777
    estimate = ErrorEstimate(False, 35, 9)
    reply = build_reflector_packet(received, receive_ns, 57, estimate, transmit_ns)
    expected = bytes(RfcReflectorPacket(
        sequence=4242, timestamp=exact_ntp(transmit_ns), s=0, z=0, scale=35, multiplier=9,
        receive_timestamp=exact_ntp(receive_ns), sender_sequence=4242, sender_timestamp=exact_ntp(NOW_NS),
        sender_s=1, sender_z=0, sender_scale=12, sender_multiplier=200, sender_ttl=57,
    )) + bytes(size - 44)  # fmt: skip
    assert reply is not None
    assert bytes(reply) == expected
    assert len(reply) == len(received)  # symmetrical: the answer is as long as the question


def test_reflector_packet_reads_back_in_scapys_stamp_dissector() -> None:
    received = bytes(build_sender_packet(11, NOW_NS, ErrorEstimate(False, 1, 1)))
    reply = build_reflector_packet(received, NOW_NS + 5000, 250, ErrorEstimate(True, 2, 3), NOW_NS + 9000)
    assert reply is not None
    dissected = STAMPSessionReflectorTestUnauthenticated(bytes(reply))
    assert (dissected.seq, dissected.seq_sender, dissected.ttl_sender) == (11, 11, 250)
    assert (dissected.err_estimate.S, dissected.err_estimate.scale, dissected.err_estimate.multiplier) == (1, 2, 3)
    assert (dissected.err_estimate_sender.S, dissected.err_estimate_sender.multiplier) == (0, 1)
    assert dissected.mbz1 == 0 and dissected.mbz2 == 0


def test_reflector_packet_from_scapy_is_parsed() -> None:
    wire = bytes(STAMPSessionReflectorTestUnauthenticated(
        seq=3, ts=3_900_000_002.25, err_estimate=ScapyErrorEstimate(S=0, Z=0, scale=10, multiplier=7), ssid=0,
        ts_rx=3_900_000_002.0, seq_sender=3, ts_sender=3_900_000_001.75,
        err_estimate_sender=ScapyErrorEstimate(S=1, Z=0, scale=11, multiplier=8), ttl_sender=61,
    ))  # fmt: skip
    packet = parse_reflector_packet(wire)
    assert packet is not None
    assert (packet.sequence, packet.sender_sequence, packet.sender_ttl) == (3, 3, 61)
    assert packet.timestamp == (3_900_000_002 << 32) | 0x4000_0000
    assert packet.receive_timestamp == 3_900_000_002 << 32
    assert packet.sender_timestamp == (3_900_000_001 << 32) | 0xC000_0000
    assert packet.error_estimate == ErrorEstimate(False, 10, 7)
    assert packet.sender_error_estimate == ErrorEstimate(True, 11, 8)


def test_the_ssid_of_rfc_8972_comes_back() -> None:
    received = bytes(build_sender_packet(1, NOW_NS, ErrorEstimate(False, 1, 1), ssid=0xBEEF))
    reply = build_reflector_packet(received, NOW_NS, 64, ErrorEstimate(False, 1, 1))
    assert reply is not None
    assert STAMPSessionReflectorTestUnauthenticated(bytes(reply)).ssid == 0xBEEF


@pytest.mark.parametrize("size", [0, 1, 20, 43])
def test_short_packets_are_refused_by_both_parsers_and_never_reflected(size: int) -> None:
    data = bytes(build_sender_packet(1, NOW_NS, ErrorEstimate(False, 1, 1)))[:size]
    assert parse_sender_packet(data) is None
    assert parse_reflector_packet(data) is None
    assert build_reflector_packet(data, NOW_NS, 64, ErrorEstimate(False, 1, 1)) is None


def test_a_zero_multiplier_marks_a_corrupt_packet() -> None:
    # RFC 4656 §4.1.2: Multiplier MUST NOT be zero; such a packet SHOULD be discarded
    wire = bytes(RfcSenderPacket(sequence=1, timestamp=1, multiplier=0))
    assert parse_sender_packet(wire) is None
    assert build_reflector_packet(wire, NOW_NS, 64, ErrorEstimate(False, 1, 1)) is None
    with pytest.raises(ValueError, match="multiplier"):
        ErrorEstimate(False, 0, 0)


def test_a_sender_packet_shorter_than_the_layout_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="at least 44"):
        build_sender_packet(0, NOW_NS, ErrorEstimate(False, 1, 1), 43)


# NTP timestamps (RFC 5905 §6)


@pytest.mark.parametrize(
    ("unix_ns", "ntp"),
    [
        (0, 2_208_988_800 << 32),  # the Unix epoch
        (946_684_800 * 10**9, 3_155_673_600 << 32),  # 2000-01-01
        (946_684_800 * 10**9 + 500_000_000, (3_155_673_600 << 32) | 0x8000_0000),  # half a second later
        (2_085_978_496 * 10**9, 0),  # 2036-02-07T06:28:16Z: era 1 starts, the seconds wrap to 0
        (2_085_978_496 * 10**9 + 250_000_000, 0x4000_0000),
    ],
)
def test_ntp_timestamps_of_known_times(unix_ns: int, ntp: int) -> None:
    assert ntp_from_ns(unix_ns) == ntp
    assert ns_from_ntp(ntp) == unix_ns  # RFC 4330 §3: top bit clear means era 1 (2036-2104)


def test_ntp_timestamps_match_exact_arithmetic_and_round_trip_to_the_nanosecond() -> None:
    rng = random.Random(8762)
    for _ in range(2000):
        unix_ns = rng.randrange(0, 4_000_000_000 * 10**9)  # 1970 to 2096, across the 2036 era change
        assert ntp_from_ns(unix_ns) == exact_ntp(unix_ns)
        assert ns_from_ntp(ntp_from_ns(unix_ns)) == unix_ns  # 2^-32 s is finer than a nanosecond


def test_a_fraction_that_rounds_up_carries_into_the_seconds() -> None:
    assert ntp_from_ns(999_999_999_999) == exact_ntp(999_999_999_999)
    assert ntp_from_ns(10**9 - 1) & 0xFFFFFFFF == exact_ntp(10**9 - 1) & 0xFFFFFFFF


def test_ptp_truncated_timestamps_are_seconds_and_nanoseconds() -> None:
    assert ns_from_ptp((1_700_000_000 << 32) | 123_456_789) == 1_700_000_000_123_456_789


# Error Estimate (RFC 4656 §4.1.2)


@pytest.mark.parametrize(
    ("estimate", "seconds"),
    [
        (ErrorEstimate(False, 0, 1), 2.0**-32),
        (ErrorEstimate(False, 32, 1), 1.0),
        (ErrorEstimate(True, 32, 16), 16.0),
        (ErrorEstimate(True, 20, 250), 250 * 2.0**-12),
        (ErrorEstimate(False, 63, 255), 255 * 2.0**31),
    ],
)
def test_error_estimate_is_multiplier_times_two_to_the_scale_minus_32(estimate: ErrorEstimate, seconds: float) -> None:
    assert estimate.seconds == seconds


@pytest.mark.parametrize("synchronized", [False, True])
@pytest.mark.parametrize("scale", [0, 1, 31, 63])
@pytest.mark.parametrize("multiplier", [1, 128, 255])
def test_error_estimate_field_bits_match_scapys(synchronized: bool, scale: int, multiplier: int) -> None:
    ours = ErrorEstimate(synchronized, scale, multiplier).to_field().to_bytes(2, "big")
    assert ours == bytes(ScapyErrorEstimate(S=int(synchronized), Z=0, scale=scale, multiplier=multiplier))
    assert ErrorEstimate.from_field(int.from_bytes(ours, "big")) == ErrorEstimate(synchronized, scale, multiplier)


def test_the_z_bit_marks_ptp_timestamps() -> None:
    field = int.from_bytes(bytes(ScapyErrorEstimate(S=0, Z=1, scale=3, multiplier=4)), "big")
    estimate = ErrorEstimate.from_field(field)
    assert estimate is not None and estimate.ptp_format and estimate.to_field() == field


@pytest.mark.parametrize("seconds", [1e-12, 2.0**-32, 1e-6, 0.000123, 0.01, 1.0, 16.0, 3600.0, 1e9])
def test_encoding_an_error_rounds_up_to_the_next_representable_value(seconds: float) -> None:
    estimate = ErrorEstimate.from_seconds(seconds, synchronized=True)
    assert estimate.synchronized
    assert estimate.seconds >= seconds  # an error estimate is never understated
    # and it is the finest encoding: the next step down would understate it
    assert (estimate.multiplier - 1) * 2.0 ** (estimate.scale - 32) < seconds
    assert estimate.seconds <= seconds * (1 + 1 / 128) or estimate.scale == 0


def test_an_error_beyond_the_largest_encoding_is_the_largest() -> None:
    assert ErrorEstimate.from_seconds(1e30, synchronized=False) == ErrorEstimate(False, 63, 255)
    assert ErrorEstimate.from_seconds(0.0, synchronized=False) == ErrorEstimate(False, 0, 1)


# Authenticated mode (RFC 8762 §4.2.2, §4.3.2; the SSID of RFC 8972 §3 after the Error Estimate): the
# layouts field by field from the RFC's figures, and the HMAC computed here, HMAC-SHA-256 over the
# first 96 bytes, truncated to 16 (RFC 8762 §4.4).
KEY = bytes.fromhex("5f0c3a7d9e21b4468a0f7c2e91d3b5a6")


class RfcAuthenticatedSenderPacket(Packet):  # RFC 8762 §4.2.2, Figure 4
    name = "STAMP sender, authenticated (RFC 8762 4.2.2)"
    fields_desc = [
        IntField("sequence", 0),
        StrFixedLenField("mbz1", b"\x00" * 12, 12),
        LongField("timestamp", 0),
        BitField("s", 0, 1), BitField("z", 0, 1), BitField("scale", 0, 6), ByteField("multiplier", 1),
        ShortField("ssid", 0),
        StrFixedLenField("mbz2", b"\x00" * 68, 68),
        StrFixedLenField("hmac", b"\x00" * 16, 16),
    ]  # fmt: skip


class RfcAuthenticatedReflectorPacket(Packet):  # RFC 8762 §4.3.2, Figure 6
    name = "STAMP reflector, authenticated (RFC 8762 4.3.2)"
    fields_desc = [
        IntField("sequence", 0),
        StrFixedLenField("mbz1", b"\x00" * 12, 12),
        LongField("timestamp", 0),
        BitField("s", 0, 1), BitField("z", 0, 1), BitField("scale", 0, 6), ByteField("multiplier", 1),
        ShortField("ssid", 0),
        StrFixedLenField("mbz2", b"\x00" * 4, 4),
        LongField("receive_timestamp", 0),
        StrFixedLenField("mbz3", b"\x00" * 8, 8),
        IntField("sender_sequence", 0),
        StrFixedLenField("mbz4", b"\x00" * 12, 12),
        LongField("sender_timestamp", 0),
        BitField("sender_s", 0, 1), BitField("sender_z", 0, 1), BitField("sender_scale", 0, 6),
        ByteField("sender_multiplier", 1),
        StrFixedLenField("mbz5", b"\x00" * 6, 6),
        ByteField("sender_ttl", 0),
        StrFixedLenField("mbz6", b"\x00" * 15, 15),
        StrFixedLenField("hmac", b"\x00" * 16, 16),
    ]  # fmt: skip


def signed(packet: Packet, key: bytes = KEY) -> bytes:
    """The packet's bytes with its HMAC field set as RFC 8762 §4.4 says."""
    wire = bytes(packet)
    return wire[:96] + hmac.new(key, wire[:96], hashlib.sha256).digest()[:16] + wire[112:]


def test_both_authenticated_packets_are_112_bytes_like_the_rfc_figures() -> None:
    assert (AUTHENTICATED_PACKET_BYTES == len(RfcAuthenticatedSenderPacket())
            == len(RfcAuthenticatedReflectorPacket()) == 112)  # fmt: skip


@pytest.mark.parametrize("size", [None, 112, 113, 1472])
@pytest.mark.parametrize("estimate", ESTIMATES)
def test_authenticated_sender_packet_is_the_rfc_layout_signed(size: int | None, estimate: ErrorEstimate) -> None:
    reference = RfcAuthenticatedSenderPacket(
        sequence=0xC0FFEE, timestamp=exact_ntp(NOW_NS), s=int(estimate.synchronized), scale=estimate.scale,
        multiplier=estimate.multiplier, ssid=0x1234,
    )  # fmt: skip
    expected = signed(reference) + bytes((size or 112) - 112)
    assert bytes(build_sender_packet(0xC0FFEE, NOW_NS, estimate, size, ssid=0x1234, key=KEY)) == expected
    parsed = parse_sender_packet(expected, KEY)
    assert parsed == SenderPacket(0xC0FFEE, exact_ntp(NOW_NS), estimate, 0x1234, size or 112)


def test_stamping_the_timestamp_signs_again() -> None:
    packet = build_sender_packet(5, 0, ErrorEstimate(True, 3, 4), key=KEY)
    stamp_timestamp(packet, KEY, NOW_NS)
    expected = signed(RfcAuthenticatedSenderPacket(sequence=5, timestamp=exact_ntp(NOW_NS), s=1, scale=3, multiplier=4))
    assert bytes(packet) == expected
    assert timestamp_offset(KEY) == 16 and timestamp_offset(None) == 4


@pytest.mark.parametrize("size", [112, 300])
def test_authenticated_reflection_is_the_rfc_layout_signed(size: int) -> None:
    sender = signed(RfcAuthenticatedSenderPacket(
        sequence=77, timestamp=exact_ntp(NOW_NS), s=1, scale=12, multiplier=200, ssid=9,
    )) + bytes(size - 112)  # fmt: skip
    receive_ns, transmit_ns = NOW_NS + 2_000_001, NOW_NS + 2_040_002
    reply = build_reflector_packet(sender, receive_ns, 61, ErrorEstimate(False, 35, 9), transmit_ns, key=KEY)
    expected = signed(RfcAuthenticatedReflectorPacket(
        sequence=77, timestamp=exact_ntp(transmit_ns), s=0, scale=35, multiplier=9, ssid=9,
        receive_timestamp=exact_ntp(receive_ns), sender_sequence=77, sender_timestamp=exact_ntp(NOW_NS),
        sender_s=1, sender_scale=12, sender_multiplier=200, sender_ttl=61,
    )) + bytes(size - 112)  # fmt: skip
    assert reply is not None and bytes(reply) == expected
    parsed = parse_reflector_packet(expected, KEY)
    assert parsed is not None
    assert (parsed.sequence, parsed.sender_sequence, parsed.sender_ttl, parsed.ssid) == (77, 77, 61, 9)
    assert parsed.receive_timestamp == exact_ntp(receive_ns) and parsed.sender_timestamp == exact_ntp(NOW_NS)


def test_a_packet_not_signed_with_the_key_is_refused_everywhere() -> None:
    good = bytes(build_sender_packet(1, NOW_NS, ErrorEstimate(True, 3, 4), key=KEY))
    assert verify(good, KEY)
    other_key = bytes(build_sender_packet(1, NOW_NS, ErrorEstimate(True, 3, 4), key=KEY[::-1]))
    unauthenticated = bytes(build_sender_packet(1, NOW_NS, ErrorEstimate(True, 3, 4), 112))
    for bad in (other_key, unauthenticated, good[:111]):
        assert not verify(bad, KEY)
        assert parse_sender_packet(bad, KEY) is None
        assert build_reflector_packet(bad, NOW_NS, 64, ErrorEstimate(True, 3, 4), key=KEY) is None
    for offset in (0, 16, 24, 26, 95, 96, 111):  # any bit changed in what the HMAC covers, or in the HMAC
        tampered = bytearray(good)
        tampered[offset] ^= 0x01
        assert parse_sender_packet(bytes(tampered), KEY) is None
    padded = good + b"\x01"  # padding follows the HMAC and is not covered by it (RFC 8762 §4.4)
    assert parse_sender_packet(padded, KEY) is not None
    reply = build_reflector_packet(good, NOW_NS, 64, ErrorEstimate(True, 3, 4), NOW_NS, key=KEY)
    assert reply is not None
    assert parse_reflector_packet(bytes(reply), KEY[::-1]) is None
    assert parse_reflector_packet(bytes(reply), KEY) is not None


def test_an_authenticated_packet_is_at_least_112_bytes() -> None:
    with pytest.raises(ValueError, match="at least 112"):
        build_sender_packet(1, NOW_NS, ErrorEstimate(True, 3, 4), 44, key=KEY)
    assert packet_bytes(KEY) == 112 and packet_bytes(None) == 44
