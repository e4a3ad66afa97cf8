"""Authentication of the UDP Speed Test Protocol's control exchange (RFC 9946 mode 1), and its key files.

Client and server share a key (text of at most 64 characters, kept in a key file under an id 0-255).
From it each test derives two keys: NIST SP 800-108's key-based KDF in counter mode with HMAC-SHA-256
(a 32-bit counter, the label `UDPSTP`, a zero byte, the context and the output length in bits), with
the client's Setup Request time in decimal digits as the context and 512 bits of output: the first 32
bytes sign what the client sends (Setup and Test Activation Requests), the last 32 what the server
sends (Setup Response, Null Request, Test Activation Response). A PDU's digest is HMAC-SHA-256 over
the whole PDU with the digest and checksum fields zero; the checksum is written after the digest. A
signed PDU whose time is more than TIME_WINDOW_SECONDS from the receiver's clock is refused, so that
a recorded exchange cannot be replayed later. Load and Status PDUs are never signed (mode 2, which
would sign the status too, is not implemented by the reference and is refused).

Version 11 (the 8.x releases) signed only the Setup Request, keyed with the shared key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Protocol

from qiancheng.core.errors import QianchengError

from .pdu import internet_checksum

__all__ = ["KeyFileError", "KeyTable", "MAX_KEY_LENGTH", "TIME_WINDOW_SECONDS", "derive_keys", "legacy_digest",
           "sign", "verify", "load_key_table"]  # fmt: skip

#: how far a signed PDU's time may be from the receiver's clock
TIME_WINDOW_SECONDS: Final = 5
MAX_KEY_LENGTH: Final = 64
_LABEL: Final = b"UDPSTP"
_OUTPUT_BITS: Final = 512
_DIGEST_BYTES: Final = 32


class KeyFileError(QianchengError, ValueError):
    """A key file that cannot be used: the file and line, and why."""


class Signed(Protocol):
    """A PDU type with an authentication trailer: where its digest and checksum lie, and its size."""

    DIGEST_AT: ClassVar[int]
    CHECKSUM_AT: ClassVar[int]
    SIZE: ClassVar[int]


def derive_keys(shared_key: bytes, unix_time: int) -> tuple[bytes, bytes]:
    """The (client, server) keys of the test whose Setup Request carried `unix_time`."""
    context = str(unix_time).encode("ascii")
    blocks = [
        hmac.new(shared_key, counter.to_bytes(4, "big") + _LABEL + b"\0" + context + _OUTPUT_BITS.to_bytes(4, "big"),
                 hashlib.sha256).digest()
        for counter in (1, 2)
    ]  # fmt: skip
    return blocks[0], blocks[1]


def _zeroed(pdu: type[Signed], data: bytes) -> bytearray:
    blank = bytearray(data)
    blank[pdu.DIGEST_AT : pdu.DIGEST_AT + _DIGEST_BYTES] = bytes(_DIGEST_BYTES)
    blank[pdu.CHECKSUM_AT : pdu.CHECKSUM_AT + 2] = b"\0\0"
    return blank


def sign(pdu: type[Signed], packed: bytes, key: bytes, checksum: bool = True) -> bytes:
    """`packed` (mode 1, time and key id set) with its digest under `key`, then its checksum."""
    signed = _zeroed(pdu, packed)
    signed[pdu.DIGEST_AT : pdu.DIGEST_AT + _DIGEST_BYTES] = hmac.new(key, signed, hashlib.sha256).digest()
    if checksum:
        signed[pdu.CHECKSUM_AT : pdu.CHECKSUM_AT + 2] = internet_checksum(signed).to_bytes(2, "big")
    return bytes(signed)


def verify(pdu: type[Signed], data: bytes, key: bytes) -> bool:
    """True if `data`'s digest is the one `key` gives (its time is checked apart, against the clock)."""
    expected = hmac.new(key, _zeroed(pdu, data), hashlib.sha256).digest()
    return hmac.compare_digest(expected, data[pdu.DIGEST_AT : pdu.DIGEST_AT + _DIGEST_BYTES])


def legacy_digest(setup_request: bytes, shared_key: bytes, digest_at: int, checksum_at: int) -> bytes:
    """Version 11's digest of a Setup Request: keyed with the shared key itself."""
    blank = bytearray(setup_request)
    blank[digest_at : digest_at + _DIGEST_BYTES] = bytes(_DIGEST_BYTES)
    blank[checksum_at : checksum_at + 2] = b"\0\0"
    return hmac.new(shared_key, blank, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class KeyTable:
    """Shared keys by id, from a key file."""

    keys: dict[int, bytes]

    def __getitem__(self, key_id: int) -> bytes:
        return self.keys[key_id]

    def get(self, key_id: int) -> bytes | None:
        return self.keys.get(key_id)


_SEPARATORS: Final = re.compile(r"[,\s]+")


def _key_id(text: str) -> int:
    """An id as OB-UDPST reads it: decimal, 0x hexadecimal or 0-prefixed octal."""
    lowered = text.lower()
    if lowered.startswith("0x"):
        return int(lowered[2:], 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text[1:], 8)
    return int(text, 10)


def load_key_table(path: str | Path) -> KeyTable:
    """Read a key file: a line per key, `<id>,<key>` (commas, spaces and tabs separate; `#` starts a
    comment; ids 0-255, each once; keys of 1-64 characters). Raises KeyFileError naming file and line."""
    keys: dict[int, bytes] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"{path}: cannot read the key file: {error}") from None
    for number, line in enumerate(text.splitlines(), 1):
        words = [word for word in _SEPARATORS.split(line.split("#", 1)[0]) if word]
        if not words:
            continue
        where = f"{path}:{number}"
        if len(words) != 2:
            raise KeyFileError(f"{where}: expected `<id>,<key>`, found {len(words)} field(s)")
        try:
            key_id = _key_id(words[0])
        except ValueError:
            raise KeyFileError(f"{where}: key id {words[0]!r} is not a number") from None
        if not 0 <= key_id <= 255:
            raise KeyFileError(f"{where}: key id {key_id} is outside 0-255")
        if key_id in keys:
            raise KeyFileError(f"{where}: key id {key_id} appears twice")
        if len(words[1]) > MAX_KEY_LENGTH:
            raise KeyFileError(f"{where}: the key is longer than {MAX_KEY_LENGTH} characters")
        keys[key_id] = words[1].encode("utf-8")
    if not keys:
        raise KeyFileError(f"{path}: no keys in the key file")
    return KeyTable(keys)
