#!/usr/bin/env python3
"""RFC 9946 load on loopback: does one Python thread keep a sending-rate row, and at what CPU per GB?

For each row asked (default: 100 Mbit/s, 500 Mbit/s, 1 Gbit/s and jumbo 2 Gbit/s), a `LoadSender` sends
for `--seconds` on a connected UDP socket to a receiving process that reads with GRO and unpacks every
Load header (as the capacity kind's receiver will). Printed: the rate sent (IP layer) against the
row's, datagrams received against sent, bursts the socket refused, and each side's CPU per GB of UDP
payload. On loopback the sender's CPU includes the kernel's delivery to the receiver. The target is the
1 Gbit/s row kept (sent ≥ 0.99 of it, nothing lost) with the sender under one core.

    .venv/bin/python bench/udpst_load.py [--seconds 3] [--rows 100,500,1000,1010]
"""

from __future__ import annotations

import argparse
import multiprocessing
import select
import socket
import time
from multiprocessing.queues import Queue

from qiancheng.core.udpst.load import LoadSender, enable_gro, read_datagrams
from qiancheng.core.udpst.pdu import LOAD_HEADER
from qiancheng.core.udpst.rates import ip_bits_per_second, sending_rates

_BUFFER_BYTES = 8 << 20


def receive(ports: Queue[int], results: Queue[tuple[int, int, float]], seconds: float) -> None:
    """Count datagrams and bytes arriving for `seconds` plus one, reading as the receiver will."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER_BYTES)
    sock.bind(("127.0.0.1", 0))
    enable_gro(sock)
    sock.setblocking(False)
    ports.put(sock.getsockname()[1])
    datagrams = payload = 0
    buffer = bytearray(65_535)
    started, deadline = time.process_time(), time.monotonic() + seconds + 1
    while time.monotonic() < deadline:
        select.select([sock], [], [], 0.05)
        for datagram in read_datagrams(sock, buffer):
            LOAD_HEADER.unpack_from(datagram)
            datagrams += 1
            payload += len(datagram)
    results.put((datagrams, payload, time.process_time() - started))
    sock.close()


def one_row(index: int, seconds: float) -> bool:
    ports: Queue[int] = multiprocessing.Queue()
    results: Queue[tuple[int, int, float]] = multiprocessing.Queue()
    receiver = multiprocessing.Process(target=receive, args=(ports, results, seconds))
    receiver.start()
    row = sending_rates()[index]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER_BYTES)
        sock.connect(("127.0.0.1", ports.get(timeout=10)))
        load = LoadSender(sock, row)
        cpu, wall = time.process_time(), time.monotonic()
        load.start()
        time.sleep(seconds)
        load.stop()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        received, received_bytes, receiver_cpu = results.get(timeout=seconds + 10)
    finally:
        sock.close()
        receiver.join(10)
        if receiver.is_alive():
            receiver.kill()
    target = ip_bits_per_second(row)
    sent = (load.payload_bytes + 28 * load.datagrams) * 8 / wall
    kept = sent >= 0.99 * target and received == load.datagrams
    print(f"row {index:4d}: {target / 1e6:7.0f} Mbit/s asked, {sent / 1e6:7.0f} sent ({sent / target:.3f}), "
          f"received {received}/{load.datagrams}, refused bursts {load.refused_bursts}, GSO {load.gso}; "
          f"sender {cpu / wall:.2f} core, {cpu / (load.payload_bytes / 1e9):.2f} CPU s/GB; "
          f"receiver {receiver_cpu / (received_bytes / 1e9):.2f} CPU s/GB {'kept' if kept else 'NOT kept'}", flush=True)  # fmt: skip
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rows", default="100,500,1000,1010", help="sending-rate rows (1000: 1 Gbit/s)")
    args = parser.parse_args()
    kept = {index: one_row(index, args.seconds) for index in map(int, args.rows.split(","))}
    if 1000 in kept:
        print(f"target: the 1 Gbit/s row kept from one thread {'PASS' if kept[1000] else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
