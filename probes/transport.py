"""How the probe reaches its collector over HTTPS: which certificates it trusts, and its own.

The collector's certificate is verified against the system's CAs, or against `collector.ca_file` only
when that is given; the host name must match. `collector.cert_file` and `key_file` are presented for
mutual TLS. Verification is turned off only by `insecure_skip_verify: true`, and the agent says so
loudly at every start.
"""

from __future__ import annotations

import ssl

from qiancheng.core.errors import QianchengError

__all__ = ["TlsSettingsError", "client_context"]


class TlsSettingsError(QianchengError, ValueError):
    """A CA, certificate or key file the probe cannot use; `field` names the collector setting."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"collector.{field}: {reason}")


def client_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None, verify: bool = True
) -> ssl.SSLContext:
    """A TLS 1.2+ client context; raises TlsSettingsError naming the setting whose file is unusable."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError as error:  # FileNotFoundError, or an ssl.SSLError for a file that holds no certificate
        raise TlsSettingsError("ca_file", f"cannot load {ca_file!r}: {error.strerror or error}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except OSError as error:
            raise TlsSettingsError("cert_file", f"cannot load {cert_file!r} with key {key_file!r}: {error.strerror or error}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
