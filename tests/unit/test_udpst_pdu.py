"""RFC 9946 PDUs: every field at its offset and in network byte order, both protocol versions, the
checksum, refusals, and the control exchange OB-UDPST 9.0.0 sent on loopback (key `testkey`), decoded
and re-encoded byte for byte."""

from __future__ import annotations

import pytest

from qiancheng.core.udpst import auth
from qiancheng.core.udpst.pdu import (
    ACTIVATE_DOWNSTREAM,
    ACTIVATE_UPSTREAM,
    ACTIVATION_INDEX_IS_START,
    LOAD_HEADER,
    NO_VALUE,
    RANDOM_SIZE,
    SEARCH_INDEX,
    SETUP_JUMBO,
    SETUP_RESPONSE,
    STOP2,
    Activation,
    Auth,
    BadPdu,
    LoadHeader,
    NullRequest,
    SendingRate,
    Setup,
    SetupAnswer,
    Status,
    SubIntervalStats,
    internet_checksum,
)

# OB-UDPST 9.0.0 (`udpst -a testkey`), an upstream test on loopback, captured off the wire: the client's
# Setup Request, the server's Setup Response (test port 0xB881) and Null Request, the client's Test
# Activation Request and the server's Response (the first sending rate: row 0). Time 1796687564.
REFERENCE_SETUP_REQUEST = bytes.fromhex(
    "ace100140001c7f701000000000001016b1746cc90d28558521680963e37052519270894bf070fad9c4606b43400bafbb31c01be00000000"
)
REFERENCE_SETUP_RESPONSE = bytes.fromhex(
    "ace100140001c7f702010000b88101016b1746ccb5a8f2de25598c66d5c93f99667f6c114a6997eb0b36b86573609298d7f23fe500000000"
)
REFERENCE_NULL_REQUEST = bytes.fromhex(
    "dead0014010000016b1746ccae8ab1f88b78537634308624e7bea2d46cc14c6324c996c3e8ac0df9c2453bdf00000000"
)
REFERENCE_ACTIVATION_REQUEST = bytes.fromhex(
    "ace200140100001e005a003200050000ffff000a0003000a01000000000000000000000000000000000000000000000000000000"
    "0000000003e80000000000016b1746cc47e593e1c029be3f38a3f7a282afee964f4fd538076a7ca8e5a78ce30162ad8400000000"
)
REFERENCE_ACTIVATION_RESPONSE = bytes.fromhex(
    "ace200140101001e005a003200050000ffff000a0003000a010000000000000000000000000000000000c3500000000000000000"
    "800004c603e80000000000016b1746cc0c665080f7b60d33013db97b8ad0b2fba007157e97e9a4f3da88eb249d768d0000000000"
)
REFERENCE_TIME = 1796687564
DIGEST = bytes(range(32))


def u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big")


def test_the_internet_checksum_is_rfc_1071s() -> None:
    # RFC 1071 §3's example: the words 0001 f203 f4f5 f6f7 sum to ddf2, whose complement is 220d
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6")) == internet_checksum(bytes.fromhex("0001f203f4f5f600"))
    assert internet_checksum(bytes(8)) == 0xFFFF


def test_setup_fields_sit_at_their_offsets_in_network_order() -> None:
    setup = Setup(command=SETUP_RESPONSE, answer=SetupAnswer.ACK, version=20, connection_index=3, connections=5,
                  connection_group=0x1234, max_bandwidth_mbps=500, upstream=True, test_port=0xBEEF,
                  modifiers=SETUP_JUMBO, auth=Auth(1, 0x01020304, DIGEST, 7))  # fmt: skip
    data = setup.pack()
    assert len(data) == 56 and u16(data, 0) == 0xACE1 and u16(data, 2) == 20
    assert (data[4], data[5], u16(data, 6), data[8], data[9]) == (3, 5, 0x1234, 2, 1)
    assert u16(data, 10) == 0x8000 | 500 and u16(data, 12) == 0xBEEF and data[14] == 0x01
    assert data[15] == 1 and u32(data, 16) == 0x01020304 and data[20:52] == DIGEST and data[52] == 7 and data[53] == 0
    assert u16(data, 54) != 0 and internet_checksum(data) == 0, "the checksum makes the whole PDU sum to zero"
    assert Setup.unpack(data) == setup


def test_null_request_layout() -> None:
    data = NullRequest(auth=Auth(1, 0x0A0B0C0D, DIGEST, 9)).pack()
    assert len(data) == 48 and u16(data, 0) == 0xDEAD and u16(data, 2) == 20 and (data[4], data[5], data[6]) == (1, 0, 0)
    assert data[7] == 1 and u32(data, 8) == 0x0A0B0C0D and data[12:44] == DIGEST and data[44] == 9
    assert internet_checksum(data) == 0
    assert NullRequest.unpack(data).auth == Auth(1, 0x0A0B0C0D, DIGEST, 9)


def test_test_activation_layout_in_version_20() -> None:
    rate = SendingRate(100, 1222, 5, 1000, 1222 | RANDOM_SIZE, 3, 97)
    activation = Activation(
        command=ACTIVATE_UPSTREAM, answer=1, low_threshold_ms=25, upper_threshold_ms=80, trial_ms=40, duration_s=12,
        dscp_ecn=0xB8, rate_index=321, one_way_delay=True, high_speed_delta=11, slow_adjust_threshold=4,
        seq_error_threshold=6, ignore_reorder_duplicates=False, modifiers=ACTIVATION_INDEX_IS_START, algorithm=1,
        ce_threshold=2, rate=rate, sub_interval_ms=500, suppress_sub_intervals=3, auth=Auth(1, 77, DIGEST, 5),
    )  # fmt: skip
    data = activation.pack()
    assert len(data) == 104 and u16(data, 0) == 0xACE2 and u16(data, 2) == 20 and (data[4], data[5]) == (1, 1)
    assert (u16(data, 6), u16(data, 8), u16(data, 10), u16(data, 12)) == (25, 80, 40, 12)
    assert data[14] == 0 and data[15] == 0xB8 and u16(data, 16) == 321 and (data[18], data[19]) == (1, 11)
    assert (u16(data, 20), u16(data, 22), data[24], data[25], data[26], data[27]) == (4, 6, 0, 1, 1, 2)
    assert [u32(data, 28 + 4 * i) for i in range(7)] == [100, 1222, 5, 1000, 0x80000000 | 1222, 3, 97]
    assert u16(data, 56) == 500 and u16(data, 58) == 0 and u16(data, 60) == 3 and data[62] == 0
    assert data[63] == 1 and u32(data, 64) == 77 and data[68:100] == DIGEST and data[100] == 5
    assert internet_checksum(data) == 0
    assert Activation.unpack(data) == activation


def test_test_activation_in_version_11_has_60_bytes_seconds_and_no_authentication() -> None:
    activation = Activation(version=11, duration_s=10, sub_interval_ms=2000, rate_index=SEARCH_INDEX)
    data = activation.pack()
    assert len(data) == 60 and data[14] == 2, "version 11 carries the sub-interval in seconds at offset 14"
    assert u16(data, 56) == 0 and u16(data, 58) != 0 and internet_checksum(data) == 0
    back = Activation.unpack(data)
    assert back.version == 11 and back.sub_interval_ms == 2000 and back.auth == Auth() and back.suppress_sub_intervals == 0
    with pytest.raises(BadPdu, match="60 bytes, expected 104"):
        Activation.unpack(Activation().pack()[:60])  # a version-20 activation cut to 60 bytes


def test_load_header_layout() -> None:
    header = LoadHeader(test_action=STOP2, rx_stopped=True, seq=0x01020304, payload_bytes=1222, status_seq_errors=2,
                        status_sent_s=11, status_sent_ns=22, sent_s=33, sent_ns=44, response_delay_ms=5)  # fmt: skip
    data = header.pack(checksum=True) + bytes(1190)
    assert LOAD_HEADER.size == 32 and u16(data, 0) == 0xBEEF and (data[2], data[3]) == (2, 1)
    assert (u32(data, 4), u16(data, 8), u16(data, 10)) == (0x01020304, 1222, 2)
    assert (u32(data, 12), u32(data, 16), u32(data, 20), u32(data, 24), u16(data, 28)) == (11, 22, 33, 44, 5)
    assert internet_checksum(data[:32]) == 0, "a Load PDU's checksum covers its header only"
    assert LoadHeader.unpack(data) == header
    assert LoadHeader.unpack(memoryview(header.pack())) == header, "the sender leaves it out: 0"


def _status() -> Status:
    stats = SubIntervalStats(rx_datagrams=1000, rx_bytes=0x1_0000_0002, delta_us=1_000_123, loss=3, reordered=2,
                             duplicates=1, delay_var_min_ms=0, delay_var_max_ms=7, delay_var_sum_ms=900,
                             delay_var_count=950, rtt_var_min_ms=1, rtt_var_max_ms=9, accumulated_ms=3000)  # fmt: skip
    return Status(test_action=0, rx_stopped=False, seq=61, rate=SendingRate(100, 1222, 2), sub_interval_seq=3,
                  sub_interval=stats, loss=1, reordered=0, duplicates=0, clock_delta_min_ms=-12, delay_var_min_ms=0,
                  delay_var_max_ms=4, delay_var_sum_ms=40, delay_var_count=50, rtt_min_ms=2, rtt_var_sample_ms=3,
                  delay_min_updated=True, trial_us=50_012, trial_datagrams=50, trial_bytes=61_100, sent_s=1796687564,
                  sent_ns=123_456_789, auth_mode=1, ce_trial=4, ce_sub_interval=40, modifiers=1)  # fmt: skip


def test_status_layout_in_version_20() -> None:
    data = _status().pack()
    assert len(data) == 204 and u16(data, 0) == 0xFEED and (data[2], data[3], u32(data, 4)) == (0, 0, 61)
    assert [u32(data, 8 + 4 * i) for i in range(3)] == [100, 1222, 2] and u32(data, 36) == 3
    assert u32(data, 40) == 1000 and data[44:52] == (0x1_0000_0002).to_bytes(8, "big") and u32(data, 52) == 1_000_123
    assert [u32(data, at) for at in range(56, 96, 4)] == [3, 2, 1, 0, 7, 900, 950, 1, 9, 3000]
    assert (u32(data, 96), u32(data, 100), u32(data, 104)) == (1, 0, 0)
    assert int.from_bytes(data[108:112], "big", signed=True) == -12
    assert [u32(data, at) for at in range(112, 136, 4)] == [0, 4, 40, 50, 2, 3] and data[136] == 1
    assert (u32(data, 140), u32(data, 144), u32(data, 148), u32(data, 152), u32(data, 156)) == (
        50_012, 50, 61_100, 1796687564, 123_456_789)
    assert data[163] == 1 and (u32(data, 176), u32(data, 180), data[185]) == (4, 40, 1)
    assert data[186:188] == b"\0\0" and data[188:204] == bytes(16), "no checksum, and the tail is zeros"
    assert Status.unpack(data) == _status()


def test_status_tolerates_the_reference_implementations_unwritten_tail() -> None:
    # OB-UDPST fills only part of the status's reused authentication area: the rest, checksum field
    # included, is whatever its buffer held. That must not cost the status.
    data = bytearray(_status().pack())
    data[188:204] = bytes.fromhex("0000beef0000000051ae04c600001234")
    assert Status.unpack(bytes(data)) == _status()


def test_status_in_version_11_pads_the_sub_interval_statistics() -> None:
    status = _status()
    data = status.pack(version=11)
    assert len(data) == 168 and u32(data, 40) == 1000 and data[44:48] == bytes(4)
    assert data[48:56] == (0x1_0000_0002).to_bytes(8, "big") and u32(data, 96) == 3000 and data[100:104] == bytes(4)
    assert u32(data, 104) == 1 and u32(data, 160) == 1796687564 and data[146:148] == b"\0\0"
    back = Status.unpack(data)
    assert back.sub_interval == status.sub_interval and back.trial_bytes == status.trial_bytes
    assert (back.auth_mode, back.ce_trial, back.modifiers) == (0, 0, 0), "version 11 has no such tail"


@pytest.mark.parametrize(
    ("data", "parse", "reason"),
    [
        (Setup().pack()[:55], Setup.unpack, "55 bytes, expected 56"),
        (b"\xac\xe2" + Setup().pack()[2:], Setup.unpack, "PDU id 0xACE2, expected 0xACE1"),
        (Setup(command=3).pack(), Setup.unpack, "command 3"),
        (Setup().pack()[:-1] + b"\x01", Setup.unpack, "checksum does not verify"),
        (NullRequest().pack()[:47], NullRequest.unpack, "47 bytes"),
        (Activation(command=0).pack(), Activation.unpack, "command 0"),
        (b"\xbe\xef" + bytes(20), LoadHeader.unpack, "shorter than its 32-byte header"),
        (b"\xbe\xef\x03" + bytes(29), LoadHeader.unpack, "test action 3"),
        (_status().pack()[:200], Status.unpack, "200 bytes, expected 204 or 168"),
    ],
)
def test_a_datagram_that_is_not_the_pdu_is_refused_with_a_reason(data: bytes, parse: object, reason: str) -> None:
    with pytest.raises(BadPdu, match=reason):
        parse(data)  # type: ignore[operator]


def test_the_reference_implementations_control_exchange_decodes_and_verifies() -> None:
    client_key, server_key = auth.derive_keys(b"testkey", REFERENCE_TIME)
    request = Setup.unpack(REFERENCE_SETUP_REQUEST)
    assert (request.command, request.version, request.connections, request.modifiers) == (1, 20, 1, SETUP_JUMBO)
    assert request.auth.mode == 1 and request.auth.unix_time == REFERENCE_TIME
    response = Setup.unpack(REFERENCE_SETUP_RESPONSE)
    assert (response.command, response.answer, response.test_port) == (2, SetupAnswer.ACK, 0xB881)
    activation = Activation.unpack(REFERENCE_ACTIVATION_REQUEST)
    assert (activation.command, activation.trial_ms, activation.duration_s, activation.sub_interval_ms) == (
        ACTIVATE_UPSTREAM, 50, 5, 1000)
    assert activation.rate_index == SEARCH_INDEX and activation.ignore_reorder_duplicates
    answered = Activation.unpack(REFERENCE_ACTIVATION_RESPONSE)
    assert answered.answer == 1 and answered.rate == SendingRate(0, 0, 0, 50_000, 0, 0, RANDOM_SIZE | 1222)
    assert auth.verify(Setup, REFERENCE_SETUP_REQUEST, client_key)
    assert auth.verify(Activation, REFERENCE_ACTIVATION_REQUEST, client_key)
    assert auth.verify(Setup, REFERENCE_SETUP_RESPONSE, server_key)
    assert auth.verify(NullRequest, REFERENCE_NULL_REQUEST, server_key)
    assert auth.verify(Activation, REFERENCE_ACTIVATION_RESPONSE, server_key)
    assert not auth.verify(Setup, REFERENCE_SETUP_REQUEST, server_key), "each direction has its own key"


def test_we_encode_and_sign_the_reference_exchange_byte_for_byte() -> None:
    client_key, server_key = auth.derive_keys(b"testkey", REFERENCE_TIME)
    signing = Auth(mode=1, unix_time=REFERENCE_TIME)
    request = Setup(connection_group=0xC7F7, auth=signing)
    assert auth.sign(Setup, request.pack(checksum=False), client_key, checksum=False) == REFERENCE_SETUP_REQUEST
    null = NullRequest(auth=signing).pack(checksum=False)
    assert auth.sign(NullRequest, null, server_key, checksum=False) == REFERENCE_NULL_REQUEST
    activation = Activation(command=ACTIVATE_UPSTREAM, duration_s=5, auth=signing)
    assert auth.sign(Activation, activation.pack(checksum=False), client_key, checksum=False) == REFERENCE_ACTIVATION_REQUEST
    answer = Activation(command=ACTIVATE_UPSTREAM, answer=1, duration_s=5, auth=signing,
                        rate=SendingRate(0, 0, 0, 50_000, 0, 0, RANDOM_SIZE | 1222))  # fmt: skip
    assert auth.sign(Activation, answer.pack(checksum=False), server_key, checksum=False) == REFERENCE_ACTIVATION_RESPONSE


def test_a_signed_pdu_with_its_checksum_still_verifies_and_a_changed_byte_does_not() -> None:
    client_key, _ = auth.derive_keys(b"firstkey", 1_700_000_000)
    signed = auth.sign(Setup, Setup(auth=Auth(1, 1_700_000_000, key_id=1)).pack(checksum=False), client_key)
    assert u16(signed, 54) != 0 and internet_checksum(signed) == 0 and auth.verify(Setup, signed, client_key)
    tampered = bytearray(signed)
    tampered[10] ^= 0x01  # the bandwidth asked
    assert not auth.verify(Setup, bytes(tampered), client_key)


def test_downstream_activation_and_defaults_are_the_reference_clients() -> None:
    request = Activation.unpack(REFERENCE_ACTIVATION_REQUEST)
    ours = Activation(command=ACTIVATE_DOWNSTREAM)
    assert (ours.low_threshold_ms, ours.upper_threshold_ms, ours.trial_ms, ours.high_speed_delta) == (
        request.low_threshold_ms, request.upper_threshold_ms, request.trial_ms, request.high_speed_delta)
    assert (ours.slow_adjust_threshold, ours.seq_error_threshold, ours.ignore_reorder_duplicates, ours.algorithm) == (
        request.slow_adjust_threshold, request.seq_error_threshold, request.ignore_reorder_duplicates, request.algorithm)
    assert NO_VALUE == 0xFFFFFFFF
