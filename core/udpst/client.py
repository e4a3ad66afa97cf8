"""The RFC 9946 client: one capacity test against a server (ours, or OB-UDPST's `udpst`), over 1-24
connections, returning each connection's closed sub-intervals for `capacity.maximum`.

Each connection: a Setup Request to the control port (signed when a key is given) answered within 3 s
(a Null Request from the test port may come first and is dropped), then a Test Activation Request to the
test port the answer named, from the socket now connected to it, whose Response's parameters are
adopted. Downstream, the load arrives (read with GRO) and a Status PDU goes back every trial interval;
upstream, the load leaves from a thread of its own at the row each Status PDU names, and the
server's sub-interval statistics ride in those statuses. The server ends the test (its PDUs say stop);
the client answers with its own stop. A client that hears nothing valid for 3 s, or is still testing
3.5 s past the duration, ends the test itself.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Final

from qiancheng.core.errors import MeasurementError

from . import PROTOCOL_VERSION
from .auth import TIME_WINDOW_SECONDS, derive_keys, sign, verify
from .load import LoadSender, enable_gro, read_datagrams, size_buffers
from .pdu import (
    ACTIVATE_DOWNSTREAM,
    ACTIVATE_UPSTREAM,
    ACTIVATION_ID,
    ACTIVATION_INDEX_IS_START,
    LOAD_HEADER,
    LOAD_ID,
    NULL_ID,
    SEARCH_INDEX,
    SETUP_ID,
    SETUP_JUMBO,
    SETUP_RESPONSE,
    SETUP_TRADITIONAL_MTU,
    STATUS_ID,
    STOP2,
    TEST,
    Activation,
    ActivationAnswer,
    Auth,
    BadPdu,
    Setup,
    SetupAnswer,
    Status,
    SubIntervalStats,
)
from .receiver import LoadReceiver

__all__ = ["CapacityTest", "ConnectionResult", "run_test"]

CONTROL_TIMEOUT_SECONDS: Final = 3.0
WATCHDOG_SECONDS: Final = 3.0
#: past the duration, a client still testing stops the test itself
FORCED_STOP_SECONDS: Final = 3.5


@dataclass(frozen=True, slots=True)
class CapacityTest:
    """What the client asks of the server (the server may coerce it; the answer is adopted)."""

    upstream: bool = False
    duration_s: int = 10
    sub_interval_ms: int = 1000
    trial_ms: int = 50
    connections: int = 1
    algorithm: int = 0
    rate_index: int | None = None  # a fixed row; None: search from row 0
    start_index: int | None = None  # search from this row instead
    jumbo: bool = True
    traditional_mtu: bool = False
    low_threshold_ms: int = 30
    upper_threshold_ms: int = 90
    seq_error_threshold: int = 10
    ignore_reorder_duplicates: bool = True
    one_way_delay: bool = False
    max_bandwidth_mbps: int = 0  # declared for the server's admission (0: none)
    dscp_ecn: int = 0
    key: bytes | None = None
    key_id: int = 0


@dataclass(slots=True)
class ConnectionResult:
    """One connection's sub-intervals (the load's receiver's), and what else it learnt."""

    index: int
    activation: Activation
    sub_intervals: list[SubIntervalStats] = field(default_factory=list)
    rtt_min_ms: int | None = None  # downstream: ours; upstream: the server's last report
    stopped_by: str = ""  # "server", "watchdog" or "duration"


class _Connection:
    def __init__(self, index: int, group: int, test: CapacityTest, family: socket.AddressFamily,
                 server: tuple[str, int]) -> None:  # fmt: skip
        self.index = index
        self.test = test
        self.server = server
        self.group = group
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        size_buffers(self.sock)
        self.keys: tuple[bytes, bytes] | None = None
        self.activation: Activation | None = None
        self.receiver: LoadReceiver | None = None
        self.sender: LoadSender | None = None
        self.sub_intervals: list[SubIntervalStats] = []
        self.server_rtt_min_ms: int | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.stopping = False
        self.last_heard = time.monotonic()
        self.buffer = bytearray(65_535)
        self._deadline = 0.0  # the control exchange's, from the Setup Request on

    # -- control -----------------------------------------------------------------------------------------

    async def _receive(self, wanted: int, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MeasurementError("timeout", "no answer from the capacity server within 3 s")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 2048), remaining)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise MeasurementError("refused", "nothing listens on the capacity server's port") from None
            if len(data) >= 2 and int.from_bytes(data[:2], "big") == wanted:
                return data
            # a Null Request (it opened the server's firewall for us) or a stray datagram: not an answer

    def _signed(self, pdu: type[Setup] | type[Activation], packed: bytes) -> bytes:
        return sign(pdu, packed, self.keys[0]) if self.keys is not None else packed

    def _check_signed(self, pdu: type[Setup] | type[Activation], data: bytes, auth: Auth, what: str) -> None:
        if self.keys is None:
            return
        if not verify(pdu, data, self.keys[1]):
            raise MeasurementError("permission", f"the server's {what} is not signed with our key")
        if abs(auth.unix_time - time.time()) > TIME_WINDOW_SECONDS:
            raise MeasurementError("permission", f"the server's {what} is signed more than 5 s from our clock")

    async def setup(self) -> None:
        test, loop = self.test, asyncio.get_running_loop()
        auth = Auth()
        if test.key is not None:
            unix_time = int(time.time())
            self.keys = derive_keys(test.key, unix_time)
            auth = Auth(mode=1, unix_time=unix_time, key_id=test.key_id)
        modifiers = (SETUP_JUMBO if test.jumbo else 0) | (SETUP_TRADITIONAL_MTU if test.traditional_mtu else 0)
        request = Setup(connection_index=self.index, connections=test.connections, connection_group=self.group,
                        max_bandwidth_mbps=test.max_bandwidth_mbps, upstream=test.upstream, modifiers=modifiers,
                        auth=auth)  # fmt: skip
        deadline = time.monotonic() + CONTROL_TIMEOUT_SECONDS
        await loop.sock_sendto(self.sock, self._signed(Setup, request.pack(checksum=self.keys is None)), self.server)
        data = await self._receive(SETUP_ID, deadline)
        try:
            response = Setup.unpack(data)
        except BadPdu as error:
            raise MeasurementError("protocol", f"setup response: {error}") from None
        if response.command != SETUP_RESPONSE:
            raise MeasurementError("protocol", "the capacity server sent a setup request, not a response")
        if response.answer != SetupAnswer.ACK:
            text = SetupAnswer.TEXT.get(response.answer, f"answer {response.answer}")
            raise MeasurementError("refused", f"the capacity server refused the test: {text}")
        self._check_signed(Setup, data, response.auth, "setup response")
        self.sock.connect((self.server[0], response.test_port))
        self._deadline = deadline

    async def activate(self) -> Activation:
        test = self.test
        index, modifiers = SEARCH_INDEX, 0
        if test.rate_index is not None:
            index = test.rate_index
        elif test.start_index is not None:
            index, modifiers = test.start_index, ACTIVATION_INDEX_IS_START
        auth = Auth(mode=1, unix_time=int(time.time()), key_id=test.key_id) if self.keys is not None else Auth()
        request = Activation(
            command=ACTIVATE_UPSTREAM if test.upstream else ACTIVATE_DOWNSTREAM, low_threshold_ms=test.low_threshold_ms,
            upper_threshold_ms=test.upper_threshold_ms, trial_ms=test.trial_ms, duration_s=test.duration_s,
            dscp_ecn=test.dscp_ecn, rate_index=index, one_way_delay=test.one_way_delay,
            seq_error_threshold=test.seq_error_threshold, ignore_reorder_duplicates=test.ignore_reorder_duplicates,
            modifiers=modifiers, algorithm=test.algorithm, sub_interval_ms=test.sub_interval_ms, auth=auth,
        )  # fmt: skip
        self.sock.send(self._signed(Activation, request.pack(checksum=self.keys is None)))
        data = await self._receive(ACTIVATION_ID, self._deadline)
        try:
            answer = Activation.unpack(data)
        except BadPdu as error:
            raise MeasurementError("protocol", f"test activation response: {error}") from None
        if answer.answer != ActivationAnswer.ACK:
            raise MeasurementError("refused", f"the capacity server refused the activation (answer {answer.answer})")
        self._check_signed(Activation, data, answer.auth, "test activation response")
        self.activation = answer
        return answer

    # -- the test ----------------------------------------------------------------------------------------

    def start(self) -> None:
        activation = self.activation
        assert activation is not None
        loop = asyncio.get_running_loop()
        self.last_heard = time.monotonic()
        if activation.upstream:
            ipv6 = self.sock.family == socket.AF_INET6
            self.sender = LoadSender(self.sock, activation.rate, ipv6=ipv6)
            self.sender.start(first_burst_in_ns=random.randint(5, 50) * 1_000_000)
        else:
            enable_gro(self.sock)
            self.receiver = LoadReceiver(activation.trial_ms, activation.sub_interval_ms, activation.auth.mode)
            loop.call_later(activation.trial_ms / 1000, self._status_due)
        loop.add_reader(self.sock.fileno(), self._on_readable)
        loop.call_later(activation.duration_s + FORCED_STOP_SECONDS, self._finish, "duration")
        loop.call_later(WATCHDOG_SECONDS, self._watchdog)

    def _finish(self, why: str) -> None:
        """End the test, telling the server (unless it went silent): our next PDU says stop."""
        if self.done.done() or self.stopping:
            return
        self.stopping = True
        if self.sender is not None:
            self.sender.test_action = STOP2  # the next burst carries it; give it a few ms to leave
            asyncio.get_running_loop().call_later(0.01, self._settle, why)
            return
        if self.receiver is not None and why != "watchdog":
            status = self.receiver.status(time.time_ns(), test_action=STOP2)
            if status is not None:
                self._send(status.pack(self.activation.version if self.activation else PROTOCOL_VERSION))
        self._settle(why)

    def _settle(self, why: str) -> None:
        if self.sender is not None:
            self.sender.stop()
        if not self.done.done():
            self.done.set_result(why)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            pass  # the watchdog notices a server gone

    def _watchdog(self) -> None:
        if self.done.done():
            return
        silent = time.monotonic() - self.last_heard
        if silent >= WATCHDOG_SECONDS:
            self._finish("watchdog")
            return
        asyncio.get_running_loop().call_later(WATCHDOG_SECONDS - silent + 0.001, self._watchdog)

    def _status_due(self) -> None:
        if self.done.done():
            return
        receiver, activation = self.receiver, self.activation
        assert receiver is not None and activation is not None
        asyncio.get_running_loop().call_later(activation.trial_ms / 1000, self._status_due)
        status = receiver.status(time.time_ns())
        if status is not None:
            self._send(status.pack(activation.version))

    def _on_readable(self) -> None:
        if self.done.done() or self.stopping:
            return
        try:
            datagrams = read_datagrams(self.sock, self.buffer)
            for datagram in datagrams:
                if len(datagram) >= 2 and self._on_datagram(datagram):
                    return
        except OSError as error:  # ICMP: the server's port closed
            if not self.done.done():
                self.done.set_exception(MeasurementError("refused", f"the capacity server went away: {error}"))

    def _on_datagram(self, datagram: memoryview) -> bool:
        """Account one datagram; True once the test is over."""
        pdu = int.from_bytes(datagram[:2], "big")
        if pdu == LOAD_ID and self.receiver is not None and len(datagram) >= LOAD_HEADER.size:
            (_, action, _, seq, payload, _, status_s, status_ns, sent_s, sent_ns, delay, _) = LOAD_HEADER.unpack_from(datagram)
            self.last_heard = time.monotonic()
            if action != TEST:
                self._finish("server")
                return True
            self.receiver.on_load(seq, payload, sent_s, sent_ns, status_s, status_ns, delay, time.time_ns())
        elif pdu == STATUS_ID and self.sender is not None:
            try:
                status = Status.unpack(bytes(datagram))
            except BadPdu:
                return False
            self.last_heard = time.monotonic()
            self.sender.status_received(status.sent_s, status.sent_ns)
            if status.sub_interval_seq > len(self.sub_intervals) and status.sub_interval.delta_us:
                self.sub_intervals.append(status.sub_interval)
            self.server_rtt_min_ms = None if status.rtt_min_ms == 0xFFFF_FFFF else status.rtt_min_ms
            if status.test_action != TEST:
                self._finish("server")
                return True
            self.sender.row = status.rate
        elif pdu not in (NULL_ID, ACTIVATION_ID):
            return False
        return False

    def result(self, stopped_by: str) -> ConnectionResult:
        assert self.activation is not None
        if self.receiver is not None:
            subs = self.receiver.closed[: self.activation.duration_s * 1000 // self.activation.sub_interval_ms]
            return ConnectionResult(self.index, self.activation, list(subs), self.receiver.rtt_min_ms, stopped_by)
        subs = self.sub_intervals[: self.activation.duration_s * 1000 // self.activation.sub_interval_ms]
        return ConnectionResult(self.index, self.activation, list(subs), self.server_rtt_min_ms, stopped_by)

    def close(self) -> None:
        if self.sender is not None:
            self.sender.stop()
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except (ValueError, RuntimeError):
            pass
        self.sock.close()


async def run_test(address: str, port: int, test: CapacityTest) -> list[ConnectionResult]:
    """One test to the server at (address, port); raises MeasurementError when it cannot be made."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    group = random.randint(1, 0xFFFF)
    connections = [_Connection(index, group, test, family, (address, port)) for index in range(test.connections)]
    try:
        try:
            await asyncio.gather(*(connection.setup() for connection in connections))
            await asyncio.gather(*(connection.activate() for connection in connections))
        except OSError as error:
            if isinstance(error, MeasurementError):
                raise
            raise MeasurementError("unreachable", f"cannot reach the capacity server: {error}") from None
        for connection in connections:
            connection.start()
        ends = await asyncio.gather(*(connection.done for connection in connections))
        return [connection.result(end) for connection, end in zip(connections, ends, strict=True)]
    finally:
        for connection in connections:
            connection.close()
