"""The responder's shared secret: one file on the responder and on each probe that may use it.

It has two uses, so that neither gives the other away:
- the STAMP key: the secret itself is the HMAC-SHA-256 key of STAMP's authenticated mode (RFC 8762
  §4.4), as another STAMP implementation given the same key would use it;
- the HTTP credential: `/download` and `/upload` want `Authorization: Bearer <credential>`, where the
  credential is HMAC-SHA-256(secret, "qiancheng responder http") in hex. The header travels in clear on
  plain HTTP; whoever reads it can use the responder's transfers, but cannot forge STAMP packets.

The file holds the secret as text (surrounding white space is ignored), e.g. `openssl rand -hex 32`.
A probe reads it at each test; a responder reads it again when the file changes (`SecretFile`). So a
replaced file takes effect at once on either end, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

from .clock import monotonic
from .logs import kv

__all__ = ["SECRET_MIN_BYTES", "read_secret", "http_credential", "authorization_header", "SecretFile"]

log = logging.getLogger("qiancheng.secret")

#: A shorter secret is refused: 16 random bytes is as little as an HMAC key should have.
SECRET_MIN_BYTES = 16
_HTTP_LABEL = b"qiancheng responder http"


def read_secret(file: str | Path) -> bytes:
    """The secret in `file`; raises ValueError saying why it cannot be used (unreadable, too short)."""
    try:
        secret = Path(file).read_bytes().strip()
    except OSError as error:
        raise ValueError(f"cannot read {file}: {error.strerror}") from None
    if len(secret) < SECRET_MIN_BYTES:
        raise ValueError(f"the secret in {file} is {len(secret)} bytes; give at least {SECRET_MIN_BYTES} "
                         "(e.g. `openssl rand -hex 32`)")
    return secret


def http_credential(secret: bytes) -> str:
    """The bearer credential the responder's transfers want for this secret."""
    return hmac.new(secret, _HTTP_LABEL, hashlib.sha256).hexdigest()


def authorization_header(secret: bytes) -> str:
    """The value of the Authorization header that carries `http_credential(secret)`."""
    return f"Bearer {http_credential(secret)}"


class SecretFile:
    """A secret file, read again when it changes (looked at no more than once a second). While the file
    is unreadable or too short, the last good secret stays in use and a warning is logged once."""

    def __init__(self, file: str | Path) -> None:
        self.file = Path(file)
        self._identity = self._stat()
        self._secret = read_secret(self.file)
        self._looked = monotonic()
        self._failing = False

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.file)
        except OSError:
            return None
        return status.st_ino, status.st_size, status.st_mtime_ns

    @property
    def secret(self) -> bytes:
        """The secret, as of the file's last readable state."""
        now = monotonic()
        if now - self._looked >= 1.0:
            self._looked = now
            identity = self._stat()
            if identity != self._identity:
                try:
                    self._secret = read_secret(self.file)
                except ValueError as error:
                    if not self._failing:
                        log.warning(kv("secret_unusable", file=str(self.file), reason=str(error),
                                       keeping="the last good secret"))
                    self._failing = True
                    return self._secret
                self._identity, self._failing = identity, False
                log.info(kv("secret_reloaded", file=str(self.file)))
        return self._secret
