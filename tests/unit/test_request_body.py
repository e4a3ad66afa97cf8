"""Bounded bodies: gzip inflates within the limit, a bomb is refused without being inflated whole."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import AsyncIterator

import pytest

from qiancheng.collector.request_body import BadEncoding, BodyTooLarge, GzipInflater, inflate_gzip, read_bounded

MiB = 1024 * 1024


def gzip_zeros(size: int) -> bytes:
    """A gzip stream of `size` zero bytes, built piecewise (a bomb: ~1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MiB)
    parts = [compressor.compress(chunk) for _ in range(size // MiB)]
    parts.append(compressor.flush())
    return b"".join(parts)


def test_inflates_a_normal_body() -> None:
    body = b'{"probe_id": "p1"}' * 1000
    assert inflate_gzip(gzip.compress(body), limit=len(body)) == body


def test_body_exactly_at_the_limit_passes_one_byte_more_fails() -> None:
    body = bytes(range(256)) * 64
    assert inflate_gzip(gzip.compress(body), limit=len(body)) == body
    with pytest.raises(BodyTooLarge) as caught:
        inflate_gzip(gzip.compress(body + b"x"), limit=len(body))
    assert caught.value.inflated and caught.value.limit == len(body)


def test_concatenated_members_inflate_to_their_concatenation() -> None:
    assert inflate_gzip(gzip.compress(b"abc") + gzip.compress(b"def"), limit=100) == b"abcdef"


def test_bomb_is_refused_quickly_without_inflating_it_whole() -> None:
    bomb = gzip_zeros(256 * MiB)
    assert len(bomb) < MiB  # a small body...
    started = time.perf_counter()
    inflater = GzipInflater(limit=MiB)
    with pytest.raises(BodyTooLarge):
        inflater.feed(bomb)  # ...that would inflate to 256 MiB
    # inflating 256 MiB takes ~0.3 s; stopping at 1 MiB takes a few ms
    assert time.perf_counter() - started < 0.1
    assert len(inflater._output) <= MiB + 1  # never more than the limit plus the byte that proves it


def test_pieces_fed_one_byte_at_a_time_inflate_the_same() -> None:
    body = b"result " * 500
    inflater = GzipInflater(limit=len(body))
    for byte in gzip.compress(body):
        inflater.feed(bytes([byte]))
    assert inflater.finish() == body


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"{\"probe_id\": 1}", "not valid gzip"),
        (gzip.compress(b"x" * 1000)[:-12], "truncated"),
        (gzip.compress(b"abc") + b"garbage!", "not valid gzip"),
    ],
)
def test_bad_gzip_is_bad_encoding(data: bytes, reason: str) -> None:
    with pytest.raises(BadEncoding, match=reason):
        inflate_gzip(data, limit=MiB)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_read_bounded_stops_at_the_first_byte_past_the_limit() -> None:
    with pytest.raises(BodyTooLarge) as caught:
        await read_bounded(_chunks(b"a" * 600, b"b" * 600), limit=1000, gzip=False)
    assert not caught.value.inflated
    assert await read_bounded(_chunks(b"a" * 500, b"b" * 500), limit=1000, gzip=False) == b"a" * 500 + b"b" * 500


async def test_read_bounded_inflates_gzip_and_bounds_the_result() -> None:
    packed = gzip.compress(b"z" * 5000)
    assert await read_bounded(_chunks(packed[:10], packed[10:]), limit=5000, gzip=True) == b"z" * 5000
    with pytest.raises(BodyTooLarge) as caught:
        await read_bounded(_chunks(packed), limit=4999, gzip=True)
    assert caught.value.inflated
