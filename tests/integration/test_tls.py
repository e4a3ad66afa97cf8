"""The collector over TLS and mutual TLS, with a real probe pushing to it on loopback.

Each test makes its own CAs and certificates (trustme): the probe verifies the collector against its
CA, a wrong CA or an expired certificate is refused, with mutual TLS the client certificate must name
the probe its token belongs to, plain HTTP to the TLS port gets nothing, and a renewed certificate is
picked up on SIGHUP without dropping a connection in flight.
"""

from __future__ import annotations

import datetime
import http.client
import json
import re
import signal
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.conftest import PYTHON, Processes, free_port
from tests.integration.helpers import Collector, probe_config, wait_for

TOKEN = "token-tls-probe-0123456789"
OTHER_TOKEN = "token-other-probe-0123456789"
# TLS 1.3 clients learn of a refused client certificate when the server closes the connection
REFUSED_HANDSHAKE = re.compile(r"upload_failed .*(closed the connection before answering|CERTIFICATE_REQUIRED|certificate)")


@dataclass
class Pki:
    """PEM files of a server CA, a client CA and the certificates the tests hand out."""

    root: Path
    server_ca: trustme.CA
    client_ca: trustme.CA

    def ca_file(self, ca: trustme.CA, name: str) -> str:
        path = self.root / f"{name}.pem"
        ca.cert_pem.write_to_path(str(path))
        return str(path)

    def leaf(self, ca: trustme.CA, name: str, *identities: str, expired: bool = False) -> tuple[str, str]:
        """(cert_file, key_file) of a certificate for `identities` signed by `ca`."""
        if expired:
            cert = ca.issue_cert(*identities, not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1))
        else:
            cert = ca.issue_cert(*identities)
        cert_file, key_file = self.root / f"{name}.crt", self.root / f"{name}.key"
        cert_file.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_file))
        return str(cert_file), str(key_file)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = tmp_path / "pki"
    root.mkdir()
    return Pki(root, trustme.CA(), trustme.CA())


def _collector(processes: Processes, tmp_path: Path, pki: Pki, *, expired: bool = False, mutual: bool = False,
               internal_port: int | None = None) -> Collector:  # fmt: skip
    cert_file, key_file = pki.leaf(pki.server_ca, "server", "127.0.0.1", "localhost", expired=expired)
    tls = f"{{cert_file: '{cert_file}', key_file: '{key_file}'"
    tls += f", client_ca_file: '{pki.ca_file(pki.client_ca, 'client-ca')}'}}" if mutual else "}"
    extra = f"metrics_listen: {{host: 127.0.0.1, port: {internal_port}}}\n" if internal_port else ""
    collector = Collector(processes, tmp_path, tokens={"p1": TOKEN, "p2": OTHER_TOKEN}, tls=tls, extra=extra)
    collector.start()
    return collector


def _probe(processes: Processes, tmp_path: Path, collector: Collector, collector_extra: str, probe_id: str = "p1",
           token: str = TOKEN) -> None:  # fmt: skip
    targets = f"  - {{name: self, address: '127.0.0.1:{collector.port}', kinds: {{tcp: {{count: 1}}}}}}\n"
    config = probe_config(tmp_path / f"{probe_id}.yaml", probe_id, token, collector, targets, collector_extra=collector_extra)
    processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name=probe_id)


def _stored_by(collector: Collector, probe_id: str) -> int:
    if not collector.db.exists():
        return 0
    return sum(1 for probe, _ in collector.stored() if probe == probe_id)


def test_tls_probe_verifies_the_collector_against_its_ca_and_pushes(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki)
    _probe(processes, tmp_path, collector, f", ca_file: '{pki.ca_file(pki.server_ca, 'server-ca')}'")
    wait_for(lambda: _stored_by(collector, "p1") >= 2, 20, "results pushed over TLS")
    assert "tls_verification_off" not in processes.log("p1")


def test_tls_collector_signed_by_another_ca_is_refused(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki)
    _probe(processes, tmp_path, collector, f", ca_file: '{pki.ca_file(trustme.CA(), 'stranger-ca')}'")
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in processes.log("p1"), 20, "the probe refusing the certificate")
    assert _stored_by(collector, "p1") == 0


def test_tls_expired_collector_certificate_is_refused(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki, expired=True)
    _probe(processes, tmp_path, collector, f", ca_file: '{pki.ca_file(pki.server_ca, 'server-ca')}'")
    wait_for(lambda: "certificate has expired" in processes.log("p1"), 20, "the probe refusing an expired certificate")
    assert _stored_by(collector, "p1") == 0


def test_tls_insecure_skip_verify_is_warned_at_start(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki)
    _probe(processes, tmp_path, collector, ", insecure_skip_verify: true")
    wait_for(lambda: _stored_by(collector, "p1") >= 1, 20, "results pushed without verification")
    assert "WARNING" in processes.log("p1") and "tls_verification_off" in processes.log("p1")


def test_tls_plain_http_to_the_tls_port_gets_no_answer(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki)
    with pytest.raises((http.client.HTTPException, ConnectionError, urllib.error.URLError)):
        urllib.request.urlopen(f"http://127.0.0.1:{collector.port}/healthz", timeout=5).read()
    context = ssl.create_default_context(cafile=pki.ca_file(pki.server_ca, "server-ca"))
    with urllib.request.urlopen(f"https://127.0.0.1:{collector.port}/healthz", timeout=5, context=context) as answer:
        assert json.loads(answer.read())["status"] == "ok"


def test_mtls_probe_with_its_own_certificate_pushes(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki, mutual=True)
    cert_file, key_file = pki.leaf(pki.client_ca, "p1-client", "p1")
    ca = pki.ca_file(pki.server_ca, "server-ca")
    _probe(processes, tmp_path, collector, f", ca_file: '{ca}', cert_file: '{cert_file}', key_file: '{key_file}'")
    wait_for(lambda: _stored_by(collector, "p1") >= 2, 20, "results pushed over mutual TLS")


def test_mtls_certificate_of_another_probe_is_refused(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki, mutual=True)
    cert_file, key_file = pki.leaf(pki.client_ca, "p2-client", "p2")  # p2's certificate, p1's token
    ca = pki.ca_file(pki.server_ca, "server-ca")
    _probe(processes, tmp_path, collector, f", ca_file: '{ca}', cert_file: '{cert_file}', key_file: '{key_file}'")
    wait_for(lambda: "the client certificate names p2, not probe 'p1'" in processes.log("collector"), 20,
             "the collector refusing p1's token with p2's certificate")  # fmt: skip
    assert _stored_by(collector, "p1") == 0 and _stored_by(collector, "p2") == 0


def test_mtls_without_a_client_certificate_no_handshake(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki, mutual=True)
    _probe(processes, tmp_path, collector, f", ca_file: '{pki.ca_file(pki.server_ca, 'server-ca')}'")
    wait_for(lambda: REFUSED_HANDSHAKE.search(processes.log("p1")), 20, "the collector ending the handshake")
    assert _stored_by(collector, "p1") == 0 and "batch_refused" not in processes.log("collector")


def test_mtls_client_certificate_from_another_ca_is_refused(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    collector = _collector(processes, tmp_path, pki, mutual=True)
    cert_file, key_file = pki.leaf(trustme.CA(), "p1-stranger", "p1")
    ca = pki.ca_file(pki.server_ca, "server-ca")
    _probe(processes, tmp_path, collector, f", ca_file: '{ca}', cert_file: '{cert_file}', key_file: '{key_file}'")
    wait_for(lambda: REFUSED_HANDSHAKE.search(processes.log("p1")), 20, "the collector ending the handshake")
    assert _stored_by(collector, "p1") == 0


def _serial(port: int, ca_file: str) -> int:
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_tls_renewed_certificate_is_loaded_on_sighup_without_dropping_connections(
    processes: Processes, tmp_path: Path, pki: Pki
) -> None:
    collector = _collector(processes, tmp_path, pki)
    ca_file = pki.ca_file(pki.server_ca, "server-ca")
    before = _serial(collector.port, ca_file)
    context = ssl.create_default_context(cafile=ca_file)
    kept = http.client.HTTPSConnection("127.0.0.1", collector.port, context=context, timeout=5)
    kept.request("GET", "/healthz")
    first = kept.getresponse()
    assert (first.status, json.loads(first.read())["status"]) == (200, "ok")
    pki.leaf(pki.server_ca, "server", "127.0.0.1", "localhost")  # renewed in place
    collector.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "tls_reloaded" in processes.log("collector"), 10, "the reload")
    assert _serial(collector.port, ca_file) != before
    kept.request("GET", "/healthz")  # the connection opened before the reload still answers
    assert json.loads(kept.getresponse().read())["status"] == "ok"
    kept.close()
    assert collector.process.poll() is None


def test_tls_metrics_listen_serves_metrics_apart_from_public_ingest(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    internal = free_port()
    collector = _collector(processes, tmp_path, pki, internal_port=internal)
    with urllib.request.urlopen(f"http://127.0.0.1:{internal}/metrics", timeout=5) as answer:
        assert b"# TYPE qiancheng_ingest_requests_total counter" in answer.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{internal}/healthz", timeout=5) as answer:
        assert json.loads(answer.read())["status"] == "ok"
    context = ssl.create_default_context(cafile=pki.ca_file(pki.server_ca, "server-ca"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://127.0.0.1:{collector.port}/metrics", timeout=5, context=context)
    assert refused.value.code == 404  # the public listener no longer shows /metrics
