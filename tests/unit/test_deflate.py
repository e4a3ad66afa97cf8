"""gzip through core.deflate: the standard library reads what it writes, and it reads what the standard
library writes, including a stream cut short and concatenated members."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from qiancheng.core.deflate import DeflateError, compress_gzip, gzip_inflater

JSON = b'{"kind":"icmp","figures":{"rtt_median_seconds":0.0021,"loss_ratio":0.1}}\n' * 500


def test_the_standard_library_inflates_what_it_compresses() -> None:
    body = compress_gzip(JSON)
    assert gzip.decompress(body) == JSON
    assert len(body) < len(JSON) / 8


def test_it_inflates_the_standard_librarys_gzip_in_pieces_and_bounded() -> None:
    body = gzip.compress(JSON, 9)
    inflater = gzip_inflater()
    first = inflater.decompress(body, 1000)  # max_length: no more than asked, the rest waits
    assert first == JSON[:1000] and not inflater.eof
    rest = inflater.decompress(inflater.unconsumed_tail)
    assert first + rest == JSON and inflater.eof and inflater.unused_data == b""


def test_a_second_member_is_left_as_unused_data() -> None:
    inflater = gzip_inflater()
    assert inflater.decompress(gzip.compress(b"one") + gzip.compress(b"two")) == b"one"
    assert inflater.eof and gzip.decompress(inflater.unused_data) == b"two"


def test_a_stream_cut_short_never_reaches_eof_and_garbage_raises() -> None:
    inflater = gzip_inflater()
    inflater.decompress(compress_gzip(JSON)[:-4])
    assert not inflater.eof
    with pytest.raises(DeflateError):
        gzip_inflater().decompress(b"this is not gzip")


def test_without_zlib_ng_it_falls_back_to_zlib() -> None:
    code = (
        "import sys, gzip; sys.modules['zlib_ng'] = None\n"  # an import of it now fails, as on armv7
        "from qiancheng.core import deflate\n"
        "assert deflate.IMPLEMENTATION == 'zlib' and deflate.GZIP_LEVEL == 6\n"
        "body = deflate.compress_gzip(b'x' * 1000)\n"
        "assert gzip.decompress(body) == b'x' * 1000 and deflate.gzip_inflater().decompress(body) == b'x' * 1000\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
