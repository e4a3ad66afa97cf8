"""How one ICMP train counts replies: kernel timestamps preferred, late and duplicate replies kept apart."""

from __future__ import annotations

from qiancheng.probes.measure.icmp import _Train

TOKEN = b"12345678"
MS = 1_000_000  # ns


def _train(count: int = 3, timeout: float = 0.1) -> _Train:
    train = _Train(count, timeout, TOKEN)
    train.samples = [None] * count
    for index in range(count):
        train.sent_wall_ns.append(1_000 * MS + index * 10 * MS)
        train.sent_perf_ns.append(5_000 * MS + index * 10 * MS)
        train.sent_kernel_ns.append(0)
    return train


def test_the_kernel_timestamp_is_used_when_it_is_plausible() -> None:
    train = _train()
    # read by the loop 9 ms after the send, stamped by the kernel 2 ms after it
    train.reply(0, TOKEN + b"pad", kernel_ns=1_002 * MS, perf_ns=5_009 * MS)
    assert train.samples[0] == 0.002


def test_the_kernel_send_timestamp_replaces_the_clock_read_before_the_send() -> None:
    train = _train()
    train.transmitted(0, 1_000 * MS + 300_000)  # the device got the packet 0.3 ms after the clock read
    train.reply(0, TOKEN, kernel_ns=1_002 * MS, perf_ns=5_009 * MS)
    assert train.samples[0] == 0.0017
    train.transmitted(9, 1_000 * MS)  # a packet not sent (yet): ignored
    assert len(train.sent_kernel_ns) == 3


def test_a_stepped_wall_clock_falls_back_to_the_monotonic_pair() -> None:
    train = _train()
    train.reply(0, TOKEN, kernel_ns=900 * MS, perf_ns=5_004 * MS)  # wall clock stepped back 100 ms
    assert train.samples[0] == 0.004
    train.reply(1, TOKEN, kernel_ns=None, perf_ns=5_015 * MS)  # no timestamp: monotonic pair
    assert train.samples[1] == 0.005


def test_duplicates_and_late_replies_are_counted_apart() -> None:
    train = _train(timeout=0.1)
    train.reply(0, TOKEN, kernel_ns=1_001 * MS, perf_ns=5_001 * MS)
    train.reply(0, TOKEN, kernel_ns=1_002 * MS, perf_ns=5_002 * MS)  # duplicate
    train.reply(1, TOKEN, kernel_ns=1_160 * MS, perf_ns=5_160 * MS)  # 150 ms after its send: late
    train.reply(1, TOKEN, kernel_ns=1_161 * MS, perf_ns=5_161 * MS)  # duplicate of a late reply
    assert train.samples == [0.001, None, None]
    assert (train.received, train.duplicates, train.late) == (1, 2, 1)


def test_replies_without_the_train_token_are_ignored() -> None:
    train = _train()
    train.reply(0, b"other-tr" + b"pad", kernel_ns=1_001 * MS, perf_ns=5_001 * MS)
    train.reply(7, TOKEN, kernel_ns=1_001 * MS, perf_ns=5_001 * MS)  # a packet not sent (yet)
    assert train.samples == [None, None, None] and train.received == 0


def test_the_train_completes_when_every_packet_is_answered() -> None:
    answered: list[int] = []
    train = _train(count=2)
    train.on_answered = lambda: answered.append(train.received)
    train.reply(0, TOKEN, kernel_ns=None, perf_ns=5_001 * MS)
    assert answered == []
    train.reply(0, TOKEN, kernel_ns=None, perf_ns=5_002 * MS)  # a duplicate completes nothing
    assert answered == []
    train.reply(1, TOKEN, kernel_ns=None, perf_ns=5_011 * MS)
    assert answered == [2]
