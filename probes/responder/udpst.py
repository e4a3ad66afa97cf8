"""The responder's RFC 9946 server: the far end of the capacity kind, and of OB-UDPST's `udpst` client.

Control. A Setup Request on the control port is answered from it, with a datagram of the request's own
size: accepted, with a fresh UDP test port, or refused with the protocol's answer (version, jumbo or
MTU setting, authentication, connection count, and "capacity exceeded" when the test's declared
bandwidth would take the server past `limits.udpst_max_bandwidth` in its direction, or the client past
`limits.udpst_tests_per_client` tests at once). A version-20 server then sends a Null Request from the
test port (smaller than the request), so that a stateful firewall in front of the client lets the
test through. The test starts with a Test Activation Request on the test port, from the address the
Setup came from, within 3 s; its parameters are coerced into the protocol's ranges and echoed in the
Response. Until then nothing but these answers is sent, and never to another address: no test port
is ever disclosed to anyone but the Setup's sender, so a spoofed Setup cannot aim load at a victim.
With keys (`udpst_key_file`), every Setup and Activation must be signed (mode 1): the per-test keys
come from the key the Setup names and its time, which must be within 5 s of ours.

Test. Downstream, the load leaves from a thread of its own (core/udpst/load.py) at the row the rate
search holds, and each Status PDU from the client moves the search; upstream, the load is counted as
it arrives and a Status PDU goes out every trial interval carrying the row the client must send at.
At the test's duration plus 0.5 s the server marks its next PDUs "stop" (STOP2), and the test ends when
the client answers with its own, or after 3 s without a valid PDU (the watchdog, which also reaps a
client that vanished). The server's sub-interval statistics are logged at debug.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from qiancheng.core.logs import kv
from qiancheng.core.udpst import OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION
from qiancheng.core.udpst.auth import TIME_WINDOW_SECONDS, KeyTable, derive_keys, legacy_digest, sign, verify
from qiancheng.core.udpst.load import LoadSender, enable_gro, read_datagrams, size_buffers
from qiancheng.core.udpst.pdu import (
    ACTIVATION_ID,
    ACTIVATION_INDEX_IS_START,
    ALGORITHM_C,
    LOAD_HEADER,
    LOAD_ID,
    SEARCH_INDEX,
    SETUP_JUMBO,
    SETUP_REQUEST,
    SETUP_RESPONSE,
    SETUP_TRADITIONAL_MTU,
    STATUS_ID,
    STOP2,
    TEST,
    Activation,
    ActivationAnswer,
    Auth,
    BadPdu,
    NullRequest,
    SendingRate,
    Setup,
    SetupAnswer,
    Status,
)
from qiancheng.core.udpst.rate_control import RateSearch
from qiancheng.core.udpst.rates import MAX_INDEX, sending_rates
from qiancheng.core.udpst.receiver import LoadReceiver

from .sockets import describe

__all__ = ["UdpstServer", "UdpstLimits"]

log = logging.getLogger("qiancheng.responder.udpst")

#: a test port not activated within this long, or a test silent this long, is closed
WATCHDOG_SECONDS: Final = 3.0
#: the server stops a test this long after its duration
STOP_GRACE_SECONDS: Final = 0.5
MAX_CONNECTIONS_PER_TEST: Final = 24
MAX_DURATION_SECONDS: Final = 3600
_READS_PER_WAKEUP: Final = 64


@dataclass(frozen=True, slots=True)
class UdpstLimits:
    """The server's bounds: total bandwidth per direction its tests may declare (Mbit/s, 0: unbounded,
    and then a declared bandwidth is not required), tests at once from one client address, and tests in all."""

    max_bandwidth_mbps: int = 0
    tests_per_client: int = 4
    max_tests: int = 64
    jumbo: bool = True
    traditional_mtu: bool = False


@dataclass(slots=True, eq=False)  # compared and hashed by identity: tests are kept in a set
class _Test:
    """One accepted connection: its test socket, what the Setup said, and the test once activated."""

    server: UdpstServer
    sock: socket.socket
    client: tuple[str, int]
    setup: Setup
    keys: tuple[bytes, bytes] | None
    deadline: float  # monotonic: activation or the watchdog
    activation: Activation | None = None
    search: RateSearch | None = None
    sender: LoadSender | None = None
    receiver: LoadReceiver | None = None
    stop_at: float = 0.0
    stopping: bool = False
    ended: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    buffer: bytearray = field(default_factory=lambda: bytearray(65_535))


class UdpstServer:
    """RFC 9946 server on one bound control socket."""

    def __init__(self, sock: socket.socket, limits: UdpstLimits = UdpstLimits(), keys: KeyTable | None = None,
                 wall: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._sock = sock
        self._limits = limits
        self._keys = keys
        self._wall = wall
        self._tests: set[_Test] = set()
        self._table = sending_rates(limits.jumbo, limits.traditional_mtu)
        self.answers: Counter[int] = Counter()  # Setup answers given, by code
        self.completed = 0
        self.timed_out = 0
        self.dropped = 0  # datagrams that were no valid PDU for where they came

    def start(self) -> None:
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_control)

    def close(self) -> None:
        """End every test, stop answering and close the control socket."""
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        for test in list(self._tests):
            self._end(test, "server stopping")
        self._sock.close()

    # -- control port -----------------------------------------------------------------------------------

    def _on_control(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, source = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # an ICMP error from an earlier answer: nothing to do with this read
                log.debug(kv("udpst_control_error", error=error))
                continue
            try:
                request = Setup.unpack(data)
            except BadPdu as error:
                self.dropped += 1
                log.debug(kv("udpst_setup_dropped", client=describe(*source[:2]), reason=error))
                continue
            if request.command != SETUP_REQUEST:
                self.dropped += 1
                continue
            self._answer_setup(data, request, (source[0], source[1]))

    def _answer_setup(self, data: bytes, request: Setup, client: tuple[str, int]) -> None:
        keys: tuple[bytes, bytes] | None = None
        answer, why = self._judge(data, request, client)
        if answer == SetupAnswer.ACK and request.auth.mode == 1 and request.version >= PROTOCOL_VERSION:
            shared = self._keys.get(request.auth.key_id) if self._keys is not None else None
            assert shared is not None  # _judge refused a key id we do not have
            keys = derive_keys(shared, request.auth.unix_time)
        test: _Test | None = None
        if answer == SetupAnswer.ACK:
            try:
                test = self._open_test(request, client, keys)
            except OSError as error:
                answer, why = SetupAnswer.CONNECTION_FAILED, f"no test port: {error}"
        self.answers[answer] += 1
        port = test.sock.getsockname()[1] if test is not None else 0
        response = replace(request, command=SETUP_RESPONSE, answer=answer, test_port=port)
        self._send_setup_response(response, request, keys, client)
        if test is None:
            log.info(kv("udpst_refused", client=describe(*client), answer=answer, reason=why))
            return
        log.debug(kv("udpst_accepted", client=describe(*client), port=port, version=request.version,
                     upstream=request.upstream, bandwidth_mbps=request.max_bandwidth_mbps))  # fmt: skip
        if request.version >= PROTOCOL_VERSION:
            null = NullRequest(request.version, self._signing(request) if keys else Auth())
            packed = sign(NullRequest, null.pack(checksum=False), keys[1]) if keys else null.pack()
            self._send(test.sock, packed, client)

    def _judge(self, data: bytes, request: Setup, client: tuple[str, int]) -> tuple[int, str]:
        """(answer, why) for a Setup Request, in the protocol's order of checks."""
        limits = self._limits
        if request.auth.mode == 1 and self._keys is not None:
            if not self._authentic(data, request):
                return SetupAnswer.AUTH_FAILED, "the digest does not verify with that key"
            if abs(request.auth.unix_time - self._wall()) > TIME_WINDOW_SECONDS:
                return SetupAnswer.AUTH_TIME_INVALID, "signed more than 5 s from our clock"
        if not OLDEST_PROTOCOL_VERSION <= request.version <= PROTOCOL_VERSION:
            return SetupAnswer.BAD_VERSION, f"protocol version {request.version}"
        if not 1 <= request.connections <= MAX_CONNECTIONS_PER_TEST or request.connection_index >= request.connections:
            return SetupAnswer.CONNECTIONS_INVALID, f"connection {request.connection_index} of {request.connections}"
        if bool(request.modifiers & SETUP_JUMBO) != limits.jumbo:
            return SetupAnswer.JUMBO_MISMATCH, "jumbo setting differs"
        if bool(request.modifiers & SETUP_TRADITIONAL_MTU) != limits.traditional_mtu:
            return SetupAnswer.MTU_MISMATCH, "traditional MTU setting differs"
        if limits.max_bandwidth_mbps:
            if not request.max_bandwidth_mbps:
                return SetupAnswer.BANDWIDTH_REQUIRED, "no bandwidth declared"
            used = sum(t.setup.max_bandwidth_mbps for t in self._tests if t.setup.upstream == request.upstream)
            if used + request.max_bandwidth_mbps > limits.max_bandwidth_mbps:
                direction = "upstream" if request.upstream else "downstream"
                return SetupAnswer.CAPACITY_EXCEEDED, f"{used} of {limits.max_bandwidth_mbps} Mbit/s {direction} taken"
        if len(self._tests) >= limits.max_tests:
            return SetupAnswer.CAPACITY_EXCEEDED, f"{len(self._tests)} tests running (the server's limit)"
        if sum(t.client[0] == client[0] for t in self._tests) >= limits.tests_per_client:
            return SetupAnswer.CAPACITY_EXCEEDED, f"{limits.tests_per_client} tests from this client already"
        if request.auth.mode != 0 and self._keys is None:
            return SetupAnswer.AUTH_NOT_CONFIGURED, "authentication asked, no keys here"
        if request.auth.mode == 0 and self._keys is not None:
            return SetupAnswer.AUTH_REQUIRED, "unsigned setup, keys required"
        if request.auth.mode > 1:
            return SetupAnswer.AUTH_MODE_INVALID, f"authentication mode {request.auth.mode}"
        return SetupAnswer.ACK, ""

    def _authentic(self, data: bytes, request: Setup) -> bool:
        assert self._keys is not None
        shared = self._keys.get(request.auth.key_id)
        if shared is None:
            return False
        if request.version < PROTOCOL_VERSION:
            return legacy_digest(data, shared, Setup.DIGEST_AT, Setup.CHECKSUM_AT) == request.auth.digest
        return verify(Setup, data, derive_keys(shared, request.auth.unix_time)[0])

    def _signing(self, request: Setup) -> Auth:
        return Auth(mode=1, unix_time=int(self._wall()), key_id=request.auth.key_id)

    def _send_setup_response(self, response: Setup, request: Setup, keys: tuple[bytes, bytes] | None,
                             client: tuple[str, int]) -> None:  # fmt: skip
        if keys is not None:
            response = replace(response, auth=self._signing(request))
            packed = sign(Setup, response.pack(checksum=False), keys[1])
        elif request.version >= PROTOCOL_VERSION:
            packed = replace(response, auth=Auth(mode=request.auth.mode)).pack()
        else:  # an older client's own trailer goes back as it came
            packed = response.pack()
        self._send(self._sock, packed, client)

    def _open_test(self, request: Setup, client: tuple[str, int], keys: tuple[bytes, bytes] | None) -> _Test:
        host = self._sock.getsockname()[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, 0))
            sock.setblocking(False)
            size_buffers(sock)
            enable_gro(sock)
        except OSError:
            sock.close()
            raise
        test = _Test(self, sock, client, request, keys, time.monotonic() + WATCHDOG_SECONDS)
        self._tests.add(test)
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._on_test, test)
        test.timers.append(loop.call_later(WATCHDOG_SECONDS, self._watchdog, test))
        return test

    @staticmethod
    def _send(sock: socket.socket, data: bytes, to: tuple[str, int] | None = None) -> None:
        try:
            if to is None:
                sock.send(data)
            else:
                sock.sendto(data, to)
        except OSError as error:  # an unreachable client: the watchdog ends its test
            log.debug(kv("udpst_send_failed", error=error))

    # -- test port --------------------------------------------------------------------------------------

    def _on_test(self, test: _Test) -> None:
        try:
            if test.activation is None:
                for _ in range(_READS_PER_WAKEUP):
                    data, source = test.sock.recvfrom(2048)
                    self._on_activation(test, data, (source[0], source[1]))
                    if test.activation is not None or test.ended:
                        return
                return
            # each view is valid until the next is read: handled one by one, never kept
            for datagram in read_datagrams(test.sock, test.buffer):
                self._on_test_datagram(test, datagram)
                if test.ended:
                    return
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # the client's port is closed (ICMP): it left
            self._end(test, f"client unreachable: {error}")

    def _on_activation(self, test: _Test, data: bytes, source: tuple[str, int]) -> None:
        if source[0] != test.client[0]:  # only the address that made the setup may start its test
            self.dropped += 1
            log.info(kv("udpst_activation_refused", client=describe(*test.client), source=describe(*source),
                        reason="not the address of the setup"))  # fmt: skip
            return
        try:
            request = Activation.unpack(data)
        except BadPdu as error:
            self.dropped += 1
            log.debug(kv("udpst_activation_dropped", client=describe(*source), reason=error))
            return
        if test.keys is not None and request.version >= PROTOCOL_VERSION:
            if not verify(Activation, data, test.keys[0]) or abs(request.auth.unix_time - self._wall()) > TIME_WINDOW_SECONDS:
                self.dropped += 1
                log.info(kv("udpst_activation_refused", client=describe(*source), reason="authentication"))
                return
        activation = self._coerce(request)
        test.sock.connect(source)
        test.activation = activation
        test.search = RateSearch.for_activation(activation)
        first = self._table[test.search.current(0)]
        # upstream, the row the client starts sending at; downstream, none
        answer = replace(activation, answer=ActivationAnswer.ACK, rate=first if activation.upstream else SendingRate())
        if test.keys is not None and request.version >= PROTOCOL_VERSION:
            answer = replace(answer, auth=self._signing(test.setup))
            packed = sign(Activation, answer.pack(checksum=False), test.keys[1])
        else:
            packed = answer.pack()
        self._send(test.sock, packed)  # as long as the request: a version-11 client's is 60 bytes
        self._start(test)

    def _coerce(self, request: Activation) -> Activation:
        """The request's parameters within the protocol's ranges (the server never refuses, it coerces)."""
        low = request.low_threshold_ms if 1 <= request.low_threshold_ms <= 10_000 else 30
        upper = request.upper_threshold_ms if 1 <= request.upper_threshold_ms <= 10_000 else 90
        if low > upper:
            low, upper = 30, 90
        trial = request.trial_ms if 5 <= request.trial_ms <= 250 else 50
        duration = request.duration_s if 5 <= request.duration_s <= MAX_DURATION_SECONDS else 10
        sub_interval = request.sub_interval_ms if 100 <= request.sub_interval_ms <= 10_000 else 1000
        if sub_interval > duration * 1000:
            duration, sub_interval = 10, 1000
        index = request.rate_index if request.rate_index == SEARCH_INDEX or request.rate_index <= MAX_INDEX else SEARCH_INDEX
        suppress = request.suppress_sub_intervals
        if not 0 <= suppress < duration * 1000 // sub_interval:
            suppress = 0
        ce = request.ce_threshold if request.dscp_ecn & 0x03 in (1, 2) else 0
        return replace(
            request, low_threshold_ms=low, upper_threshold_ms=upper, trial_ms=trial, duration_s=duration,
            sub_interval_ms=sub_interval, rate_index=index, suppress_sub_intervals=suppress, ce_threshold=ce,
            high_speed_delta=request.high_speed_delta or 10, slow_adjust_threshold=request.slow_adjust_threshold or 3,
            one_way_delay=bool(request.one_way_delay), algorithm=request.algorithm if request.algorithm <= ALGORITHM_C else 0,
            modifiers=request.modifiers & ACTIVATION_INDEX_IS_START,  # random payload is not offered here
            auth=Auth(),
        )  # fmt: skip

    def _start(self, test: _Test) -> None:
        activation, search = test.activation, test.search
        assert activation is not None and search is not None
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        test.deadline = now + WATCHDOG_SECONDS
        test.stop_at = now + activation.duration_s + STOP_GRACE_SECONDS
        if activation.dscp_ecn:
            self._set_traffic_class(test.sock, activation.dscp_ecn)
        if activation.upstream:
            test.receiver = LoadReceiver(activation.trial_ms, activation.sub_interval_ms, test.setup.auth.mode)
            test.timers.append(loop.call_later(activation.trial_ms / 1000, self._status_due, test))
        else:
            ipv6 = test.sock.family == socket.AF_INET6
            test.sender = LoadSender(test.sock, self._table[search.current(0)], ipv6=ipv6)
            test.sender.start(first_burst_in_ns=random.randint(5, 50) * 1_000_000)
        test.timers.append(loop.call_at(loop.time() + activation.duration_s + STOP_GRACE_SECONDS, self._stop, test))
        log.debug(kv("udpst_test_started", client=describe(*test.client), upstream=activation.upstream,
                     duration_s=activation.duration_s, algorithm="C" if activation.algorithm else "B"))  # fmt: skip

    @staticmethod
    def _set_traffic_class(sock: socket.socket, value: int) -> None:
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, value)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, value)
        except OSError as error:
            log.debug(kv("udpst_dscp_failed", error=error))

    def _on_test_datagram(self, test: _Test, datagram: memoryview) -> None:
        if len(datagram) < 2:
            self.dropped += 1
            return
        pdu = int.from_bytes(datagram[:2], "big")
        activation, search = test.activation, test.search
        assert activation is not None and search is not None
        if pdu == LOAD_ID and test.receiver is not None and len(datagram) >= LOAD_HEADER.size:
            (_, action, _, seq, payload, _, status_s, status_ns, sent_s, sent_ns, delay, _) = LOAD_HEADER.unpack_from(datagram)
            if action != TEST:
                self._end(test, "the client stopped", completed=True)
                return
            test.deadline = time.monotonic() + WATCHDOG_SECONDS
            test.receiver.on_load(seq, payload, sent_s, sent_ns, status_s, status_ns, delay, time.time_ns())
        elif pdu == STATUS_ID and test.sender is not None:
            try:
                status = Status.unpack(bytes(datagram))
            except BadPdu:
                self.dropped += 1
                return
            if status.test_action != TEST:
                self._end(test, "the client stopped", completed=True)
                return
            test.deadline = time.monotonic() + WATCHDOG_SECONDS
            test.sender.status_received(status.sent_s, status.sent_ns)
            if not test.stopping:
                test.sender.row = self._table[search.after_trial(status)]
        elif pdu == ACTIVATION_ID:
            return  # a repeated activation: the test is already running
        else:
            self.dropped += 1

    def _status_due(self, test: _Test) -> None:
        """Upstream: the trial's status, carrying the row the search chose from it."""
        if test.ended:
            return
        receiver, search, activation = test.receiver, test.search, test.activation
        assert receiver is not None and search is not None and activation is not None
        loop = asyncio.get_running_loop()
        test.timers.append(loop.call_later(activation.trial_ms / 1000, self._status_due, test))
        status = receiver.status(time.time_ns(), test_action=STOP2 if test.stopping else TEST)
        if status is None:
            return  # nothing arrived yet
        index = search.current(status.sub_interval_seq) if test.stopping else search.after_trial(status)
        status = replace(status, rate=self._table[index])
        self._send(test.sock, status.pack(test.setup.version))

    def _stop(self, test: _Test) -> None:
        test.stopping = True
        if test.sender is not None:
            test.sender.test_action = STOP2
            test.sender.row = replace(test.sender.row, burst1=min(test.sender.row.burst1, 1),
                                      burst2=min(test.sender.row.burst2, 1))  # fmt: skip

    def _watchdog(self, test: _Test) -> None:
        if test.ended:
            return
        remaining = test.deadline - time.monotonic()
        if remaining <= 0:
            self.timed_out += test.activation is not None
            self._end(test, "no activation" if test.activation is None else "silent for 3 s",
                      completed=test.stopping)  # fmt: skip
            return
        test.timers.append(asyncio.get_running_loop().call_later(min(remaining, 0.5) + 0.001, self._watchdog, test))

    def _end(self, test: _Test, reason: str, completed: bool = False) -> None:
        if test.ended:
            return
        test.ended = True
        self._tests.discard(test)
        for timer in test.timers:
            timer.cancel()
        if test.sender is not None:
            test.sender.stop()
        try:
            asyncio.get_running_loop().remove_reader(test.sock.fileno())
        except (RuntimeError, ValueError):
            pass
        test.sock.close()
        self.completed += completed
        if log.isEnabledFor(logging.DEBUG):
            stats = test.receiver.closed if test.receiver is not None else []
            log.debug(kv("udpst_test_ended", client=describe(*test.client), reason=reason, sub_intervals=len(stats),
                         received=[s.rx_datagrams for s in stats], lost=[s.loss for s in stats]))  # fmt: skip
