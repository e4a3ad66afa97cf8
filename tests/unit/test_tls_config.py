"""TLS settings of the collector and the probe: unusable files are refused at load, naming the field."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from qiancheng.collector.config import load_collector_config
from qiancheng.collector.tls import certificate_names, server_context
from qiancheng.core.errors import ConfigError
from qiancheng.probes.config import load_probe_config


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    other = ca.issue_cert("127.0.0.2")
    out = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "s.crt", "key": tmp_path / "s.key", "other_key": tmp_path / "o.key"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    server.cert_chain_pems[0].write_to_path(str(out["cert"]))
    server.private_key_pem.write_to_path(str(out["key"]))
    other.private_key_pem.write_to_path(str(out["other_key"]))
    return {name: str(path) for name, path in out.items()}


def test_tls_server_context_is_tls12_or_newer_and_mutual_with_a_client_ca(files: dict[str, str]) -> None:
    context = server_context(files["cert"], files["key"])
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 and context.verify_mode == ssl.CERT_NONE
    mutual = server_context(files["cert"], files["key"], files["ca"])
    assert mutual.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("tls", "field", "reason"),
    [
        ("{cert_file: CERT, key_file: /nonexistent/k.pem}", "listen.tls.key_file", "no such file"),
        ("{cert_file: /nonexistent/c.pem, key_file: KEY}", "listen.tls.cert_file", "no such file"),
        ("{cert_file: CERT, key_file: OTHER_KEY}", "listen.tls.cert_file", "cannot load"),
        ("{cert_file: CERT, key_file: KEY, client_ca_file: /nonexistent/ca.pem}", "listen.tls.client_ca_file", "cannot load"),
    ],
)
def test_tls_collector_files_that_cannot_be_used_are_refused(
    tmp_path: Path, files: dict[str, str], tls: str, field: str, reason: str
) -> None:
    for name, key in (("CERT", "cert"), ("OTHER_KEY", "other_key"), ("KEY", "key")):
        tls = tls.replace(name, files[key])
    path = tmp_path / "collector.yaml"
    path.write_text(f"listen:\n  port: 9310\n  tls: {tls}\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    assert (caught.value.line, caught.value.field) == (3, field) and reason in caught.value.reason


def test_tls_metrics_listen_needs_its_own_port(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text("listen: {host: 127.0.0.1, port: 9310}\nmetrics_listen: {host: 127.0.0.1, port: 9310}\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    assert caught.value.field == "metrics_listen.port"


def _probe(tmp_path: Path, collector: str) -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(
        "probe: {id: p1, city: c, isp: i}\n"
        f"collector: {{token: t, {collector}}}\n"
        "targets:\n  - {name: a, address: 127.0.0.1, kinds: [icmp]}\n"
    )
    return path


@pytest.mark.parametrize(
    ("collector", "field", "reason"),
    [
        ("url: 'http://c:9310', ca_file: CA", "collector.ca_file", "https:// collector URL only"),
        ("url: 'https://c:9310', ca_file: /nonexistent/ca.pem", "collector.ca_file", "cannot load"),
        ("url: 'https://c:9310', cert_file: CERT", "collector.key_file", "together"),
        ("url: 'https://c:9310', cert_file: CERT, key_file: OTHER_KEY", "collector.cert_file", "cannot load"),
        ("url: 'https://c:9310', ca_file: CA, insecure_skip_verify: true", "collector.insecure_skip_verify", "contradicts"),
    ],
)
def test_tls_probe_settings_that_cannot_be_used_are_refused(
    tmp_path: Path, files: dict[str, str], collector: str, field: str, reason: str
) -> None:
    for name, key in (("CA", "ca"), ("CERT", "cert"), ("OTHER_KEY", "other_key")):
        collector = collector.replace(name, files[key])
    with pytest.raises(ConfigError) as caught:
        load_probe_config(_probe(tmp_path, collector))
    assert (caught.value.line, caught.value.field) == (2, field) and reason in caught.value.reason


def test_tls_probe_with_its_certificate_loads(tmp_path: Path, files: dict[str, str]) -> None:
    config = load_probe_config(_probe(tmp_path, f"url: 'https://c:9310', ca_file: {files['ca']}, "
                                                f"cert_file: {files['cert']}, key_file: {files['key']}"))  # fmt: skip
    context = config.collector.tls()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_tls_certificate_names_prefer_subject_alternative_names() -> None:
    assert certificate_names(None) == set()
    san = {"subject": ((("commonName", "cn-name"),),), "subjectAltName": (("DNS", "p1"), ("IP Address", "198.18.0.1"))}
    assert certificate_names(san) == {"p1"}
    assert certificate_names({"subject": ((("commonName", "p7"),),)}) == {"p7"}
