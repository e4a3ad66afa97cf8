"""Request bodies with bounds: a byte limit on what is sent, and the same limit on what gzip inflates to.

A gzip bomb is a small body that inflates to gigabytes; the inflater below never holds more than the
limit plus one byte of output, because zlib is asked for at most that much (`max_length`) and the
input it did not consume waits in `unconsumed_tail`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from qiancheng.core.deflate import DeflateError, gzip_inflater
from qiancheng.core.errors import QianchengError

__all__ = ["BodyTooLarge", "BadEncoding", "GzipInflater", "inflate_gzip", "read_bounded"]


class BodyTooLarge(QianchengError, ValueError):
    """The body, as sent or once inflated, exceeds the limit (bytes)."""

    def __init__(self, limit: int, inflated: bool) -> None:
        self.limit = limit
        self.inflated = inflated
        what = "inflated body" if inflated else "body"
        super().__init__(f"{what} exceeds {limit} bytes")


class BadEncoding(QianchengError, ValueError):
    """The body says it is gzip but is not a complete, valid gzip stream."""


class GzipInflater:
    """Inflates gzip data fed in pieces, refusing to produce more than `limit` bytes.

    Several concatenated gzip members (RFC 1952 allows it) inflate to their concatenation.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._output = bytearray()
        self._inflater = gzip_inflater()
        self._fed = False

    def feed(self, data: bytes) -> None:
        """Inflate `data`; raises BodyTooLarge past the limit, BadEncoding for data that is not gzip."""
        try:
            while data:
                self._fed = True
                if self._inflater.eof:  # the previous member ended: `data` starts the next one
                    self._inflater = gzip_inflater()
                room = self._limit + 1 - len(self._output)  # ≥ 1: we raise as soon as the limit is passed
                self._output += self._inflater.decompress(data, room)
                if len(self._output) > self._limit:
                    raise BodyTooLarge(self._limit, inflated=True)
                data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
        except DeflateError as error:
            raise BadEncoding(f"not valid gzip: {error}") from None

    def finish(self) -> bytes:
        """The inflated bytes; raises BadEncoding when the stream is empty or truncated."""
        if not self._fed or not self._inflater.eof:
            raise BadEncoding("gzip stream is truncated")
        return bytes(self._output)


def inflate_gzip(data: bytes, limit: int) -> bytes:
    """Inflate a whole gzip body, never producing more than `limit` bytes (else BodyTooLarge)."""
    inflater = GzipInflater(limit)
    inflater.feed(data)
    return inflater.finish()


async def read_bounded(chunks: AsyncIterable[bytes], limit: int, gzip: bool) -> bytes:
    """Read a body from `chunks`, inflating it when `gzip`; raises BodyTooLarge or BadEncoding.

    Reading stops at the first byte past the limit, as sent or as inflated, so memory stays bounded by
    the limit whatever the client sends.
    """
    received = 0
    inflater = GzipInflater(limit) if gzip else None
    plain = bytearray()
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(limit, inflated=False)
        if inflater is not None:
            inflater.feed(chunk)
        else:
            plain += chunk
    return inflater.finish() if inflater is not None else bytes(plain)
