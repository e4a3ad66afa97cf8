"""Which probe a request comes from: its bearer token, looked up in the registry, and with mutual TLS
its client certificate, which must name the same probe. Shared by every route a probe calls."""

from __future__ import annotations

from aiohttp import hdrs, web

from .refused import Refused
from .registry import Identity, ProbeRegistry
from .tls import certificate_names

__all__ = ["authenticate"]


def authenticate(request: web.Request, registry: ProbeRegistry, client_certificates: bool) -> Identity:
    """The active probe behind `request`; raises Refused: 401 without a known token (with
    WWW-Authenticate), 403 for a revoked probe or a certificate naming another one."""
    identity = registry.identify(request.headers.get(hdrs.AUTHORIZATION))
    if identity is None:
        reason = "bearer token required" if hdrs.AUTHORIZATION not in request.headers else "invalid token"
        raise Refused(401, reason, headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="qiancheng"'})
    probe = identity.probe_id
    if identity.revoked:
        raise Refused(403, f"probe {probe!r} is revoked; enroll it again", probe=probe)
    if client_certificates:
        # the token says which probe this is; its certificate must say the same
        peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
        names = certificate_names(peercert)
        if probe not in names:
            raise Refused(403, f"the client certificate names {', '.join(sorted(names)) or 'no one'}, not probe {probe!r}",
                          probe=probe)  # fmt: skip
    return identity
