"""Responder config: defaults, the example file, and bad files that name file, line, field and reason."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from qiancheng.core.errors import ConfigError
from qiancheng.probes.responder.config import (
    DnsZoneConfig,
    ResponderConfig,
    ResponderLimits,
    ResponderPorts,
    check_config,
    load_responder_config,
)
from qiancheng.probes.responder.main import apply_overrides, main

DATA = Path(__file__).resolve().parent.parent / "testdata"
ROOT = DATA.parent.parent
GIB = 1024**3


def test_defaults_serve_the_demo_on_loopback() -> None:
    config = ResponderConfig()
    assert config.listen_hosts == ("127.0.0.1",)
    assert config.ports == ResponderPorts(http=9311, echo=9312, dns=9353)
    assert config.limits == ResponderLimits(
        max_download_bytes=10 * GIB, max_upload_bytes=10 * GIB, max_concurrent_transfers=16,
        transfer_stall_timeout=30.0, max_echo_connections=256, echo_idle_timeout=30.0,
    )
    assert config.dns.zone == "qiancheng.test." and config.dns.ttl == 0
    assert (config.dns.a, config.dns.aaaa) == ("127.0.0.1", "::1")
    check_config(config)  # the defaults pass their own checks


def test_example_config_validates_and_documents_every_key() -> None:
    path = ROOT / "configs" / "responder.yaml"
    config = load_responder_config(path)
    assert config.listen_hosts == ("0.0.0.0", "::")
    assert config.limits.max_download_bytes == 10 * GIB
    text = path.read_text()
    for section in (ResponderPorts, ResponderLimits, DnsZoneConfig, ResponderConfig):
        for name in section.__struct_fields__:
            lines = [ln for ln in text.splitlines() if ln.strip().startswith(f"{name}:")]
            assert any("#" in ln for ln in lines), f"{name} is missing or has no comment in {path.name}"


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "responder.yaml"
    path.write_text("listen: '::1'\nlimits: {max_download_bytes: 64MiB, echo_idle_timeout: 500ms}\ndns: {a: null}\n")
    config = load_responder_config(path)
    assert config.listen_hosts == ("::1",)
    assert config.limits.max_download_bytes == 64 * 1024 * 1024
    assert config.limits.echo_idle_timeout == 0.5
    assert config.limits.max_upload_bytes == 10 * GIB
    assert config.dns.a is None and config.dns.aaaa == "::1"
    assert config.ports == ResponderPorts()


@pytest.mark.parametrize(
    ("file", "line", "field", "reason"),
    [
        ("responder_bad_unknown_key.yaml", 5, "limits.max_concurent_transfers", "unknown key 'max_concurent_transfers'"),
        ("responder_bad_type.yaml", 4, "ports.echo", "expected `int`, got `str`"),
        ("responder_bad_port.yaml", 4, "ports.dns", "<= 65535"),
        ("responder_bad_size.yaml", 3, "limits.max_upload_bytes", "expected a size"),
        ("responder_bad_listen.yaml", 4, "listen[1]", "not an IP address: 'localhost'"),
        ("responder_bad_same_port.yaml", 4, "ports.echo", "also the http port"),
        ("responder_bad_dns_a.yaml", 4, "dns.a", "not an IPv4 address"),
        ("responder_bad_timeout.yaml", 3, "limits.echo_idle_timeout", "longer than 0s"),
    ],
)
def test_bad_config_names_file_line_field(file: str, line: int, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_responder_config(DATA / file)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(DATA / file), line, field)
    assert reason in error.reason
    assert str(error).startswith(f"{DATA / file}:{line}: {field}: ")


@pytest.mark.parametrize(
    ("text", "line", "field", "reason"),
    [
        ("ports: {http: -1}\n", 1, "ports.http", ">= 0"),
        ("ports:\n  http: 9311\n  echo: 9312\n  dns: 9311\n", 4, "ports.dns", "also the http port"),
        ("listen: []\n", 1, "listen", "at least one address"),
        ("listen: [127.0.0.1, 127.0.0.1]\n", 1, "listen", "listed twice"),
        ("limits:\n  max_concurrent_transfers: 0\n", 2, "limits.max_concurrent_transfers", ">= 1"),
        ("limits:\n  transfer_stall_timeout: soon\n", 2, "limits.transfer_stall_timeout", "expected a duration"),
        ("dns:\n  zone: 'a..b'\n", 2, "dns.zone", "not a DNS name"),
        ("dns:\n  aaaa: 198.18.0.1\n", 2, "dns.aaaa", "not an IPv6 address"),
        ("dns:\n  ttl: -5\n", 2, "dns.ttl", ">= 0"),
        ("dns:\n  txt: '" + "x" * 2000 + "'\n", 2, "dns.txt", "longer than 1024 bytes"),
        ("secret_file: /nonexistent/qiancheng-responder.secret\n", 1, "secret_file", "cannot read"),
        ("udpst_key_file: /nonexistent/udpst.keys\n", 1, "udpst_key_file", "cannot read the key file"),
        ("ports:\n  stamp: 8620\n  udpst: 8620\n", 3, "ports.udpst", "also the stamp port"),
        ("limits:\n  udpst_max_bandwidth: 200000\n", 2, "limits.udpst_max_bandwidth", "<= 100000"),
        ("log_level: loud\n", 1, "log_level", "Invalid enum value 'loud'"),
        ("- just\n- a list\n", 1, "", "mapping"),
    ],
)
def test_bad_config_inline(tmp_path: Path, text: str, line: int, field: str, reason: str) -> None:
    path = tmp_path / "responder.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_responder_config(path)
    error = caught.value
    assert (error.line, error.field) == (line, field)
    assert reason in error.reason, error.reason


def _args(**given: object) -> argparse.Namespace:
    fields: dict[str, object] = {"listen": None, "http_port": None, "echo_port": None, "dns_port": None, "stamp_port": None,
                               "udpst_port": None, "log_level": None, "secret_file": None}
    return argparse.Namespace(**{**fields, **given})


def test_command_line_overrides_the_file() -> None:
    base = ResponderConfig(ports=ResponderPorts(http=8000, echo=8001, dns=8053))
    assert apply_overrides(base, _args()) is base
    changed = apply_overrides(base, _args(listen=["::1", "127.0.0.1"], echo_port=0, log_level="debug"))
    assert changed.listen_hosts == ("::1", "127.0.0.1")
    assert changed.ports == ResponderPorts(http=8000, echo=0, dns=8053)
    assert changed.log_level == "debug"
    assert apply_overrides(base, _args(secret_file="/run/responder.secret")).secret_file == "/run/responder.secret"
    assert apply_overrides(base, _args(udpst_port=24601)).ports.udpst == 24601


def test_main_refuses_a_bad_config_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    file = DATA / "responder_bad_type.yaml"
    assert main(["--config", str(file)]) == 2
    assert f"{file}:4: ports.echo: expected `int`, got `str`" in capsys.readouterr().err


def test_main_refuses_a_bad_command_line_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "localhost", "--http-port", "0", "--echo-port", "0", "--dns-port", "0"]) == 2
    assert "command line: listen[0]: not an IP address: 'localhost'" in capsys.readouterr().err
    assert main(["--http-port", "9999", "--echo-port", "9999"]) == 2
    assert "ports.echo: port 9999 is also the http port" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["65536", "-1", "http"])
def test_main_refuses_a_bad_port_argument(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--http-port", port])
    assert caught.value.code == 2
    assert "--http-port" in capsys.readouterr().err
