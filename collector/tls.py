"""TLS for the collector's listener: the server context, its certificate reload, and client identities.

The context allows TLS 1.2 and newer only. Reloading loads the renewed chain into the same context, so
new handshakes present it while connections in flight keep theirs. With a client CA the context
requires a client certificate (mutual TLS); which probe it names is read from the verified
certificate: its DNS or URI subject alternative names, or its common name when it has none.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from qiancheng.core.errors import QianchengError

__all__ = ["TlsFileError", "server_context", "reload_certificate", "certificate_names"]


class TlsFileError(QianchengError, ValueError):
    """A certificate, key or CA file that cannot be used; `field` names the config key."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    for field, path in (("cert_file", cert_file), ("key_file", key_file)):
        if not Path(path).is_file():
            raise TlsFileError(field, f"no such file: {path!r}")
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as error:  # ssl.SSLError is an OSError: a bad PEM, or a key that is not the certificate's
        raise TlsFileError("cert_file", f"cannot load {cert_file!r} with {key_file!r}: {error}") from None


def server_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """A TLS 1.2+ server context; with `client_ca_file`, one that requires a client certificate from it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert_file, key_file)
    if client_ca_file:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except OSError as error:
            raise TlsFileError("client_ca_file", f"cannot load {client_ca_file!r}: {error.strerror or error}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def reload_certificate(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load a renewed chain into `context` (raises TlsFileError and keeps the old one if it cannot)."""
    # a throwaway context first: a bad file must not leave the live one half loaded
    _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_file, key_file)
    _load_chain(context, cert_file, key_file)


def certificate_names(peercert: dict[str, Any] | None) -> set[str]:
    """The names a verified client certificate gives its holder (SSLSocket.getpeercert() form)."""
    if not peercert:
        return set()
    alternative = {value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")}
    if alternative:
        return alternative
    return {value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"}
