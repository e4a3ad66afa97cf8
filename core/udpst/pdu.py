"""The PDUs of the UDP Speed Test Protocol (RFC 9946): layouts, packing and checked unpacking.

Every PDU is one UDP datagram; every multi-byte field is in network byte order; no field is padded in
protocol version 20 (offsets in bytes from the start of the UDP payload):

    Setup Request/Response (0xACE1), 56 bytes, both versions
      0 id  2 version  4 connection index  5 connections  6 connection group  8 command  9 answer
      10 max bandwidth (Mbit/s; bit 15: upstream)  12 test port  14 modifiers (jumbo 0x01,
      traditional MTU 0x02)  15-55 authentication trailer (below)
    Null Request (0xDEAD), 48 bytes, version 20 only: from the server's new test port, to open a
      stateful firewall or NAT in front of it; never answered
      0 id  2 version  4 command (1)  5 answer (0)  6 reserved  7-47 authentication trailer
    Test Activation Request/Response (0xACE2), 104 bytes (version 11: the first 60)
      0 id  2 version  4 command (1 upstream, 2 downstream)  5 answer  6 low and 8 upper delay
      variation thresholds (ms)  10 trial interval (ms)  12 test duration (s)  14 sub-interval (s,
      version 11 only)  15 DSCP and ECN  16 sending-rate index (0xFFFF: search)  18 one-way delay
      variation instead of RTT's  19 high-speed delta  20 slow adjustment threshold  22 sequence
      error threshold  24 ignore reordering and duplicates  25 modifiers (0x01 the index is a start,
      0x02 random payload)  26 algorithm (0 B, 1 C)  27 ECN CE threshold  28 sending rate (7 × 4)
      56 sub-interval (ms)  58 checksum in version 11  60 rate adjustment suppressed for this many
      sub-intervals  62 reserved  63-103 authentication trailer
    Load (0xBEEF), a 32-byte header and padding to the datagram's size
      0 id  2 test action  3 receive stopped  4 sequence number  8 UDP payload bytes  10 status
      sequence errors  12 send time of the last status received (s, ns)  20 send time (s, ns)
      28 response delay since that status (ms)  30 checksum of the header
    Status Feedback (0xFEED), 204 bytes (version 11: 168, with the sub-interval statistics padded)
      0 id  2 test action  3 receive stopped  4 sequence number  8 sending rate (7 × 4)
      36 sub-interval number  40 the last sub-interval's statistics (56)  96 loss  100 reordered
      104 duplicates (this trial)  108 minimum clock delta (ms, signed)  112 delay variation min,
      max, sum, count (ms)  128 RTT minimum  132 RTT variation sample (ms)  136 minimum updated
      140 trial length (µs)  144 datagrams  148 bytes (this trial)  152 send time (s, ns)
      160-203 the authentication area, reused: 163 mode, 176 CE-marked datagrams this trial,
      180 in the sub-interval, 185 modifiers (0x01 ECN bleached), 202 checksum

    authentication trailer: mode (1)  Unix time (4)  HMAC-SHA-256 (32)  key id (1)  reserved (1)
      checksum (2)

The checksum is the Internet checksum (RFC 1071) over the whole PDU (a Load PDU: its header), with
the field zero while it is computed; 0 means none. We write it on control PDUs and check it where it
is not 0. Status PDUs are the exception both ways: the reference implementation fills only part of
their reused authentication area and leaves the rest, where the checksum field lies, as whatever its
receive buffer held, so a status checksum is neither written nor trusted (UDP's own checksum covers
the datagram).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Final

from qiancheng.core.errors import QianchengError

from . import OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION

__all__ = [
    "BadPdu",
    "Auth",
    "SendingRate",
    "Setup",
    "NullRequest",
    "Activation",
    "LoadHeader",
    "SubIntervalStats",
    "Status",
    "internet_checksum",
    "LOAD_HEADER",
    "SETUP_ID",
    "NULL_ID",
    "ACTIVATION_ID",
    "LOAD_ID",
    "STATUS_ID",
    "SETUP_REQUEST",
    "SETUP_RESPONSE",
    "SETUP_JUMBO",
    "SETUP_TRADITIONAL_MTU",
    "UPSTREAM_BANDWIDTH_BIT",
    "ACTIVATE_UPSTREAM",
    "ACTIVATE_DOWNSTREAM",
    "ACTIVATION_INDEX_IS_START",
    "ACTIVATION_RANDOM_PAYLOAD",
    "ALGORITHM_B",
    "ALGORITHM_C",
    "SEARCH_INDEX",
    "RANDOM_SIZE",
    "NO_VALUE",
    "STATUS_ECN_BLEACHED",
    "TEST",
    "STOP1",
    "STOP2",
    "SetupAnswer",
    "ActivationAnswer",
]

SETUP_ID: Final = 0xACE1
NULL_ID: Final = 0xDEAD
ACTIVATION_ID: Final = 0xACE2
LOAD_ID: Final = 0xBEEF
STATUS_ID: Final = 0xFEED

SETUP_REQUEST: Final = 1
SETUP_RESPONSE: Final = 2
SETUP_JUMBO: Final = 0x01  # datagrams up to 9000 bytes in the high-speed rows (both ends must agree)
SETUP_TRADITIONAL_MTU: Final = 0x02  # 1500-byte IP packets instead of 1250 below 1 Gbit/s
UPSTREAM_BANDWIDTH_BIT: Final = 0x8000  # in Setup's max bandwidth: the bandwidth asked is upstream

ACTIVATE_UPSTREAM: Final = 1  # the client sends the load
ACTIVATE_DOWNSTREAM: Final = 2  # the server sends the load
ACTIVATION_INDEX_IS_START: Final = 0x01  # the rate index is where the search starts, not a fixed rate
ACTIVATION_RANDOM_PAYLOAD: Final = 0x02  # load padding is random bytes (against compressing links)
ALGORITHM_B: Final = 0  # TR-471's rate adjustment
ALGORITHM_C: Final = 1  # multiply and retry
SEARCH_INDEX: Final = 0xFFFF  # the rate index that asks for a search from the lowest row
RANDOM_SIZE: Final = 0x8000_0000  # on a payload size: each burst's size is drawn up to the rest
NO_VALUE: Final = 0xFFFF_FFFF  # a delay statistic nothing was measured for
STATUS_ECN_BLEACHED: Final = 0x01

#: test actions (Load and Status PDUs): testing, the server's own stop, the stop both ends exchange
TEST: Final = 0
STOP1: Final = 1
STOP2: Final = 2


class SetupAnswer:
    """The answers of a Setup Response."""

    NONE: Final = 0
    ACK: Final = 1
    BAD_VERSION: Final = 2
    JUMBO_MISMATCH: Final = 3
    AUTH_NOT_CONFIGURED: Final = 4
    AUTH_REQUIRED: Final = 5
    AUTH_MODE_INVALID: Final = 6
    AUTH_FAILED: Final = 7
    AUTH_TIME_INVALID: Final = 8
    BANDWIDTH_REQUIRED: Final = 9
    CAPACITY_EXCEEDED: Final = 10
    MTU_MISMATCH: Final = 11
    CONNECTIONS_INVALID: Final = 12
    CONNECTION_FAILED: Final = 13

    #: what each answer means, for an error a person reads
    TEXT: Final = {
        0: "no answer", 1: "accepted", 2: "protocol version not supported", 3: "jumbo setting differs",
        4: "the server has no authentication key", 5: "the server requires authentication",
        6: "authentication mode not supported", 7: "authentication failed",
        8: "authentication time outside the server's window", 9: "the server requires a maximum bandwidth",
        10: "capacity exceeded: the server's bandwidth for tests is taken", 11: "traditional MTU setting differs",
        12: "connection count or index invalid", 13: "the server could not open a test port",
    }  # fmt: skip


class ActivationAnswer:
    """The answers of a Test Activation Response."""

    NONE: Final = 0
    ACK: Final = 1
    BAD_PARAMETERS: Final = 2


class BadPdu(QianchengError, ValueError):
    """A datagram that is not the PDU it should be: its size, id, command or checksum is wrong."""


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of `data`: big-endian 16-bit words, an odd last byte padded with zero."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(packed: bytearray, at: int, end: int) -> bytes:
    packed[at : at + 2] = b"\0\0"
    packed[at : at + 2] = internet_checksum(packed[:end]).to_bytes(2, "big")
    return bytes(packed)


def _check(data: bytes, size: int | tuple[int, ...], pdu_id: int, name: str) -> None:
    sizes = (size,) if isinstance(size, int) else size
    if len(data) not in sizes:
        raise BadPdu(f"{name}: {len(data)} bytes, expected {' or '.join(map(str, sizes))}")
    found = int.from_bytes(data[:2], "big")
    if found != pdu_id:
        raise BadPdu(f"{name}: PDU id 0x{found:04X}, expected 0x{pdu_id:04X}")


def _check_checksum(data: bytes, at: int, end: int, name: str) -> None:
    if data[at : at + 2] != b"\0\0" and internet_checksum(data[:end]) != 0:
        raise BadPdu(f"{name}: header checksum does not verify")


@dataclass(frozen=True, slots=True)
class Auth:
    """The authentication trailer of the control PDUs (`auth` signs and checks it): mode 0 or 1 (the
    control exchange signed with HMAC-SHA-256), the sender's Unix time, the digest and the key's id."""

    mode: int = 0
    unix_time: int = 0
    digest: bytes = bytes(32)
    key_id: int = 0

    #: the trailer's layout, after the fields of its PDU
    FORMAT: ClassVar[str] = "BI32sBBH"


@dataclass(frozen=True, slots=True)
class SendingRate:
    """A row of the sending-rate table: two transmitters, each sending `burst` datagrams of `payload`
    UDP payload bytes every `interval` µs, and the second one more datagram of `addon2` bytes after each
    burst. A size with RANDOM_SIZE set is drawn per burst, up to the size in its other bits."""

    interval1_us: int = 0
    payload1: int = 0
    burst1: int = 0
    interval2_us: int = 0
    payload2: int = 0
    burst2: int = 0
    addon2: int = 0

    def fields(self) -> tuple[int, int, int, int, int, int, int]:
        return (self.interval1_us, self.payload1, self.burst1, self.interval2_us, self.payload2, self.burst2,
                self.addon2)  # fmt: skip


_ZERO_RATE: Final = SendingRate()


@dataclass(frozen=True, slots=True)
class Setup:
    """Setup Request (command 1, client to the control port) and Response (command 2, the answer and,
    when accepted, the test port the rest of the test uses)."""

    command: int = SETUP_REQUEST
    answer: int = SetupAnswer.NONE
    version: int = PROTOCOL_VERSION
    connection_index: int = 0  # this connection's place among `connections` (0-based)
    connections: int = 1  # 1-24 connections in one test
    connection_group: int = 0  # the same random number on every connection of one test
    max_bandwidth_mbps: int = 0  # what the test may use (0: not said); the server admits by it
    upstream: bool = False  # the bandwidth is asked for the upstream direction
    test_port: int = 0
    modifiers: int = SETUP_JUMBO
    auth: Auth = field(default_factory=Auth)

    SIZE: ClassVar[int] = 56
    DIGEST_AT: ClassVar[int] = 20
    CHECKSUM_AT: ClassVar[int] = 54
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("!HHBBHBBHHB" + Auth.FORMAT)

    def pack(self, checksum: bool = True) -> bytes:
        bandwidth = self.max_bandwidth_mbps | (UPSTREAM_BANDWIDTH_BIT if self.upstream else 0)
        auth = self.auth
        packed = bytearray(self._STRUCT.pack(
            SETUP_ID, self.version, self.connection_index, self.connections, self.connection_group,
            self.command, self.answer, bandwidth, self.test_port, self.modifiers,
            auth.mode, auth.unix_time, auth.digest, auth.key_id, 0, 0,
        ))  # fmt: skip
        return _with_checksum(packed, self.CHECKSUM_AT, self.SIZE) if checksum else bytes(packed)

    @classmethod
    def unpack(cls, data: bytes) -> Setup:
        _check(data, cls.SIZE, SETUP_ID, "setup")
        _check_checksum(data, cls.CHECKSUM_AT, cls.SIZE, "setup")
        (_, version, index, count, group, command, answer, bandwidth, port, modifiers,
         mode, unix_time, digest, key_id, _, _) = cls._STRUCT.unpack(data)  # fmt: skip
        if command not in (SETUP_REQUEST, SETUP_RESPONSE):
            raise BadPdu(f"setup: command {command}, expected 1 (request) or 2 (response)")
        return cls(command, answer, version, index, count, group, bandwidth & ~UPSTREAM_BANDWIDTH_BIT,
                   bool(bandwidth & UPSTREAM_BANDWIDTH_BIT), port, modifiers, Auth(mode, unix_time, digest, key_id))  # fmt: skip


@dataclass(frozen=True, slots=True)
class NullRequest:
    """The Null Request a version-20 server sends from the new test port right after accepting."""

    version: int = PROTOCOL_VERSION
    auth: Auth = field(default_factory=Auth)

    SIZE: ClassVar[int] = 48
    DIGEST_AT: ClassVar[int] = 12
    CHECKSUM_AT: ClassVar[int] = 46
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("!HHBBB" + Auth.FORMAT)

    def pack(self, checksum: bool = True) -> bytes:
        auth = self.auth
        packed = bytearray(self._STRUCT.pack(NULL_ID, self.version, 1, 0, 0, auth.mode, auth.unix_time, auth.digest,
                                             auth.key_id, 0, 0))  # fmt: skip
        return _with_checksum(packed, self.CHECKSUM_AT, self.SIZE) if checksum else bytes(packed)

    @classmethod
    def unpack(cls, data: bytes) -> NullRequest:
        _check(data, cls.SIZE, NULL_ID, "null request")
        _check_checksum(data, cls.CHECKSUM_AT, cls.SIZE, "null request")
        _, version, _, _, _, mode, unix_time, digest, key_id, _, _ = cls._STRUCT.unpack(data)
        return cls(version, Auth(mode, unix_time, digest, key_id))


@dataclass(frozen=True, slots=True)
class Activation:
    """Test Activation Request (the client's parameters) and Response (the server's, which the client
    adopts): direction, thresholds, intervals, the rate search and, upstream, the first sending rate."""

    command: int = ACTIVATE_DOWNSTREAM
    answer: int = ActivationAnswer.NONE
    version: int = PROTOCOL_VERSION
    low_threshold_ms: int = 30  # delay variation below it: the rate may rise
    upper_threshold_ms: int = 90  # above it: the rate falls
    trial_ms: int = 50  # a status every trial interval
    duration_s: int = 10
    dscp_ecn: int = 0
    rate_index: int = SEARCH_INDEX
    one_way_delay: bool = False  # judge delay variation one way, not by round trips
    high_speed_delta: int = 10  # rows the search climbs at a time below 1 Gbit/s
    slow_adjust_threshold: int = 3  # congested trials before the search slows to one row at a time
    seq_error_threshold: int = 10  # losses (and reordering, unless ignored) a trial may have
    ignore_reorder_duplicates: bool = True
    modifiers: int = 0
    algorithm: int = ALGORITHM_B
    ce_threshold: int = 0  # ECN CE marks that count as congestion (0: off)
    rate: SendingRate = _ZERO_RATE  # the response's first row for an upstream test, else zero
    sub_interval_ms: int = 1000
    suppress_sub_intervals: int = 0  # the first sub-intervals run without rate adjustment
    auth: Auth = field(default_factory=Auth)

    SIZE: ClassVar[int] = 104
    OLD_SIZE: ClassVar[int] = 60  # version 11: no suppression, no authentication
    DIGEST_AT: ClassVar[int] = 68
    CHECKSUM_AT: ClassVar[int] = 102
    OLD_CHECKSUM_AT: ClassVar[int] = 58
    _HEAD: ClassVar[str] = "!HHBBHHHHBBHBBHHBBBB7IH"
    _STRUCT: ClassVar[struct.Struct] = struct.Struct(_HEAD + "HHB" + Auth.FORMAT)
    _OLD_STRUCT: ClassVar[struct.Struct] = struct.Struct(_HEAD + "H")

    @property
    def upstream(self) -> bool:
        return self.command == ACTIVATE_UPSTREAM

    def pack(self, checksum: bool = True) -> bytes:
        """Version 20's 104 bytes, or version 11's 60 when `version` is older."""
        old = self.version < PROTOCOL_VERSION
        head = (
            ACTIVATION_ID, self.version, self.command, self.answer, self.low_threshold_ms, self.upper_threshold_ms,
            self.trial_ms, self.duration_s, self.sub_interval_ms // 1000 if old else 0, self.dscp_ecn,
            self.rate_index, int(self.one_way_delay), self.high_speed_delta, self.slow_adjust_threshold,
            self.seq_error_threshold, int(self.ignore_reorder_duplicates), self.modifiers, self.algorithm,
            0 if old else self.ce_threshold, *self.rate.fields(), 0 if old else self.sub_interval_ms,
        )  # fmt: skip
        if old:
            return _with_checksum(bytearray(self._OLD_STRUCT.pack(*head, 0)), self.OLD_CHECKSUM_AT, self.OLD_SIZE)
        auth = self.auth
        packed = bytearray(self._STRUCT.pack(*head, 0, self.suppress_sub_intervals, 0, auth.mode, auth.unix_time,
                                             auth.digest, auth.key_id, 0, 0))  # fmt: skip
        return _with_checksum(packed, self.CHECKSUM_AT, self.SIZE) if checksum else bytes(packed)

    @classmethod
    def unpack(cls, data: bytes) -> Activation:
        """Either version, told apart by the version field (a version-20 PDU must be 104 bytes)."""
        if len(data) < cls.OLD_SIZE:
            raise BadPdu(f"test activation: {len(data)} bytes, expected {cls.SIZE} (or {cls.OLD_SIZE}, version 11)")
        version = int.from_bytes(data[2:4], "big")
        old = OLDEST_PROTOCOL_VERSION <= version < PROTOCOL_VERSION
        size, checksum_at = (cls.OLD_SIZE, cls.OLD_CHECKSUM_AT) if old else (cls.SIZE, cls.CHECKSUM_AT)
        _check(data, size, ACTIVATION_ID, "test activation")
        _check_checksum(data, checksum_at, size, "test activation")
        if old:
            fields = cls._OLD_STRUCT.unpack(data)
            auth, suppress = Auth(), 0
        else:
            fields = cls._STRUCT.unpack(data)
            suppress, mode, unix_time, digest, key_id = fields[28], fields[30], fields[31], fields[32], fields[33]
            auth = Auth(mode, unix_time, digest, key_id)
        (_, version, command, answer, low, upper, trial, duration, old_sub_interval_s, dscp_ecn, index, one_way,
         delta, slow, seq_errors, ignore, modifiers, algorithm, ce) = fields[:19]  # fmt: skip
        if command not in (ACTIVATE_UPSTREAM, ACTIVATE_DOWNSTREAM):
            raise BadPdu(f"test activation: command {command}, expected 1 (upstream) or 2 (downstream)")
        rate = SendingRate(*fields[19:26])
        sub_interval_ms = old_sub_interval_s * 1000 if old else fields[26]
        return cls(command, answer, version, low, upper, trial, duration, dscp_ecn, index, bool(one_way), delta, slow,
                   seq_errors, bool(ignore), modifiers, algorithm, 0 if old else ce, rate, sub_interval_ms, suppress,
                   auth)  # fmt: skip


#: the Load PDU's header, for the sender's hot path (pack_into a datagram buffer); fields in order:
#: id, test action, receive stopped, sequence number, UDP payload bytes, status sequence errors, the last
#: status's send time (s, ns), this send time (s, ns), response delay (ms), checksum
LOAD_HEADER: Final = struct.Struct("!HBBIHHIIIIHH")


@dataclass(frozen=True, slots=True)
class LoadHeader:
    """A Load PDU's header, as received (the sender packs LOAD_HEADER straight into its buffers)."""

    test_action: int
    rx_stopped: bool
    seq: int
    payload_bytes: int  # the datagram's UDP payload as the sender says: the receiver counts this
    status_seq_errors: int
    status_sent_s: int  # the send time of the last Status PDU the sender received (0, 0: none yet)
    status_sent_ns: int
    sent_s: int
    sent_ns: int
    response_delay_ms: int  # from that status's arrival to this burst

    SIZE: ClassVar[int] = 32
    CHECKSUM_AT: ClassVar[int] = 30

    def pack(self, checksum: bool = False) -> bytes:
        packed = bytearray(LOAD_HEADER.pack(
            LOAD_ID, self.test_action, int(self.rx_stopped), self.seq, self.payload_bytes, self.status_seq_errors,
            self.status_sent_s, self.status_sent_ns, self.sent_s, self.sent_ns, self.response_delay_ms, 0,
        ))  # fmt: skip
        return _with_checksum(packed, self.CHECKSUM_AT, self.SIZE) if checksum else bytes(packed)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> LoadHeader:
        """The header of a Load datagram (at least its 32 bytes; padding after them is not read)."""
        if len(data) < cls.SIZE:
            raise BadPdu(f"load: {len(data)} bytes, shorter than its {cls.SIZE}-byte header")
        header = bytes(data[: cls.SIZE])
        _check(header, cls.SIZE, LOAD_ID, "load")
        _check_checksum(header, cls.CHECKSUM_AT, cls.SIZE, "load")
        _, action, stopped, seq, payload, errors, status_s, status_ns, sent_s, sent_ns, delay, _ = LOAD_HEADER.unpack(header)
        if action > STOP2 or stopped > 1:
            raise BadPdu(f"load: test action {action} or receive-stopped {stopped} out of range")
        return cls(action, bool(stopped), seq, payload, errors, status_s, status_ns, sent_s, sent_ns, delay)


@dataclass(frozen=True, slots=True)
class SubIntervalStats:
    """What the load's receiver counted over one sub-interval (delays in ms; NO_VALUE: none measured)."""

    rx_datagrams: int = 0
    rx_bytes: int = 0  # UDP payload bytes, as the Load PDUs said
    delta_us: int = 0  # the sub-interval's measured length
    loss: int = 0
    reordered: int = 0
    duplicates: int = 0
    delay_var_min_ms: int = NO_VALUE
    delay_var_max_ms: int = 0
    delay_var_sum_ms: int = 0
    delay_var_count: int = 0
    rtt_var_min_ms: int = NO_VALUE
    rtt_var_max_ms: int = 0
    accumulated_ms: int = 0  # since the first status, at this sub-interval's end

    FORMAT: ClassVar[str] = "IQ11I"

    def fields(self) -> tuple[int, ...]:
        return (self.rx_datagrams, self.rx_bytes, self.delta_us, self.loss, self.reordered, self.duplicates,
                self.delay_var_min_ms, self.delay_var_max_ms, self.delay_var_sum_ms, self.delay_var_count,
                self.rtt_var_min_ms, self.rtt_var_max_ms, self.accumulated_ms)  # fmt: skip


_ZERO_STATS: Final = SubIntervalStats()


@dataclass(frozen=True, slots=True)
class Status:
    """A Status Feedback PDU, sent by the load's receiver every trial interval: this trial's counts, the
    last completed sub-interval's, and (from the server of an upstream test) the rate to send at."""

    test_action: int = TEST
    rx_stopped: bool = False
    seq: int = 0
    rate: SendingRate = _ZERO_RATE
    sub_interval_seq: int = 0  # completed sub-intervals; `sub_interval` is the last of them
    sub_interval: SubIntervalStats = _ZERO_STATS
    loss: int = 0
    reordered: int = 0
    duplicates: int = 0
    clock_delta_min_ms: int = 0  # the smallest (arrival − send time) so far: the clocks' offset included
    delay_var_min_ms: int = NO_VALUE
    delay_var_max_ms: int = 0
    delay_var_sum_ms: int = 0
    delay_var_count: int = 0
    rtt_min_ms: int = NO_VALUE
    rtt_var_sample_ms: int = NO_VALUE  # this trial's RTT above the minimum (NO_VALUE: no sample)
    delay_min_updated: bool = False
    trial_us: int = 0
    trial_datagrams: int = 0
    trial_bytes: int = 0
    sent_s: int = 0
    sent_ns: int = 0
    auth_mode: int = 0  # a copy of the connection's; status PDUs are never signed
    ce_trial: int = 0
    ce_sub_interval: int = 0
    modifiers: int = 0  # STATUS_ECN_BLEACHED

    SIZE: ClassVar[int] = 204
    OLD_SIZE: ClassVar[int] = 168
    _BODY: ClassVar[str] = "IIIi4IIIBBHIIIII"
    _STRUCT: ClassVar[struct.Struct] = struct.Struct(
        "!HBBI7II" + SubIntervalStats.FORMAT + _BODY + "HBB12sIIBBH14sH"
    )
    # version 11: the sub-interval statistics were not packed (4 bytes after the first count, 4 at the end)
    _OLD_STRUCT: ClassVar[struct.Struct] = struct.Struct("!HBBI7IIIxxxxQ11Ixxxx" + _BODY)

    def _body(self) -> tuple[int, ...]:
        return (self.loss, self.reordered, self.duplicates, self.clock_delta_min_ms, self.delay_var_min_ms,
                self.delay_var_max_ms, self.delay_var_sum_ms, self.delay_var_count, self.rtt_min_ms,
                self.rtt_var_sample_ms, int(self.delay_min_updated), 0, 0, self.trial_us, self.trial_datagrams,
                self.trial_bytes, self.sent_s, self.sent_ns)  # fmt: skip

    def pack(self, version: int = PROTOCOL_VERSION) -> bytes:
        """204 bytes, or 168 to a version-11 peer; no checksum (see the module's text)."""
        head = (STATUS_ID, self.test_action, int(self.rx_stopped), self.seq, *self.rate.fields(), self.sub_interval_seq,
                *self.sub_interval.fields(), *self._body())  # fmt: skip
        if version < PROTOCOL_VERSION:
            return self._OLD_STRUCT.pack(*head)
        return self._STRUCT.pack(*head, 0, 0, self.auth_mode, bytes(12), self.ce_trial, self.ce_sub_interval, 0,
                                 self.modifiers, 0, bytes(14), 0)  # fmt: skip

    @classmethod
    def unpack(cls, data: bytes) -> Status:
        _check(data, (cls.SIZE, cls.OLD_SIZE), STATUS_ID, "status")
        old = len(data) == cls.OLD_SIZE
        fields = (cls._OLD_STRUCT if old else cls._STRUCT).unpack(data)
        _, action, stopped, seq = fields[:4]
        if action > STOP2 or stopped > 1:
            raise BadPdu(f"status: test action {action} or receive-stopped {stopped} out of range")
        rate, sub_seq, stats = SendingRate(*fields[4:11]), fields[11], SubIntervalStats(*fields[12:25])
        (loss, reordered, duplicates, clock_delta, dv_min, dv_max, dv_sum, dv_count, rtt_min, rtt_var, updated, _, _,
         trial_us, trial_datagrams, trial_bytes, sent_s, sent_ns) = fields[25:43]  # fmt: skip
        mode = ce_trial = ce_sub = modifiers = 0
        if not old:
            _, _, mode, _, ce_trial, ce_sub, _, modifiers, _, _, _ = fields[43:]
        return cls(action, bool(stopped), seq, rate, sub_seq, stats, loss, reordered, duplicates, clock_delta, dv_min,
                   dv_max, dv_sum, dv_count, rtt_min, rtt_var, bool(updated), trial_us, trial_datagrams, trial_bytes,
                   sent_s, sent_ns, mode, ce_trial, ce_sub, modifiers)  # fmt: skip
