"""Probe config: a good file loads into jobs; every bad one names file, line, field and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qiancheng.core.errors import ConfigError
from qiancheng.core.kind_settings import IcmpSettings, TcpSettings
from qiancheng.probes.config import check_address, load_probe_config, split_host_port

DATA = Path(__file__).resolve().parent.parent / "testdata"
ROOT = DATA.parent.parent


def test_minimal_config_gets_defaults() -> None:
    config = load_probe_config(DATA / "probe_minimal.yaml")
    assert config.probe.id == "test-probe-01"
    assert config.token == "test-token"
    [job] = config.jobs
    assert job.kind == "icmp" and job.target.address == "127.0.0.1"
    assert job.settings == IcmpSettings()


def test_example_config_validates(tmp_path: Path) -> None:
    """configs/probe.yaml, with its token file present, is a valid config."""
    token = tmp_path / "probe.token"
    token.write_text("s3cret\n")
    text = (ROOT / "configs" / "probe.yaml").read_text().replace("/etc/qiancheng/probe.token", str(token))
    (tmp_path / "probe.yaml").write_text(text)
    config = load_probe_config(tmp_path / "probe.yaml")
    assert config.token == "s3cret"
    classes = {job.target.target_class for job in config.jobs}
    assert {"edge", "cloud_pool", "national_hub", "cdn", "dns"} <= classes
    edge_tcp = next(j for j in config.jobs if j.key == ("lishui-edge", "tcp"))
    assert isinstance(edge_tcp.settings, TcpSettings) and edge_tcp.settings.port == 9312
    assert edge_tcp.settings.interval == 30.0  # from defaults:, not from the target


@pytest.mark.parametrize(
    ("file", "line", "field", "reason"),
    [
        ("probe_bad_unknown_key.yaml", 9, "targets[0].kinds.icmp.colour", "unknown key 'colour'"),
        ("probe_bad_type.yaml", 8, "targets[0].kinds.tcp.count", "expected `int`, got `str`"),
        ("probe_bad_address.yaml", 8, "targets[1].address", "not an IP address, host name or host:port"),
        ("probe_bad_interval.yaml", 10, "targets[0].kinds.icmp.interval", "shorter than the test it schedules"),
    ],
)
def test_bad_config_names_file_line_field(file: str, line: int, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_probe_config(DATA / file)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(DATA / file), line, field)
    assert reason in error.reason
    assert str(error).startswith(f"{DATA / file}:{line}: {field}: ")


@pytest.mark.parametrize(
    ("text", "line", "field", "reason"),
    [
        ("probe: {id: p1, city: c, isp: i}\ntargets: []\n", 1, "collector", "missing required key"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: ftp://x, token: t}\ntargets: []\n", 2, "collector.url", "http(s) URL"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t, token_file: /x}\ntargets: []\n", 2, "collector", "exactly one of token and token_file"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ntargets: []\n", 3, "targets", "no targets"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ntargets:\n  - {name: a, address: 127.0.0.1, kinds: [warp]}\n", 4, "targets[0].kinds.warp", "unknown kind 'warp'"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ntargets:\n  - {name: a, address: 127.0.0.1, kinds: [http]}\n", 4, "targets[0].address", "kind http needs a URL"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ntargets:\n  - {name: a, address: 127.0.0.1, kinds: [dns]}\n", 4, "targets[0].kinds.dns", "give query_name"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ntargets:\n  - {name: a, address: 127.0.0.1, kinds: [icmp]}\n  - {name: a, address: 127.0.0.2, kinds: [icmp]}\n", 5, "targets[1].name", "used twice"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ndefaults:\n  icmp: {timeout: soon}\ntargets: []\n", 4, "defaults.icmp.timeout", "expected a duration"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ntargets:\n  - {name: a, address: 127.0.0.1, kinds: {stamp: {secret_file: /nonexistent/r.secret}}}\n", 4, "targets[0].kinds.stamp.secret_file", "cannot read"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ntargets:\n  - {name: a, address: 127.0.0.1, kinds: {stamp: {secret_file: /nonexistent/r.secret, size: 44}}}\n", 4, "targets[0].kinds.stamp.size", "at least 112 bytes"),
        ("probe: {id: p1, city: c, isp: i}\ncollector: {url: 'http://c', token: t}\ndefaults:\n  upload: {secret_file: /nonexistent/r.secret}\ntargets:\n  - {name: a, address: 127.0.0.1, kinds: [upload]}\n", 6, "targets[0].kinds.upload.secret_file", "cannot read"),
        ("probe: {id: p1, city: c, isp: i}\nprobe: {id: p2, city: c, isp: i}\n", 2, "", "duplicate key 'probe'"),
        ("probe: [unclosed\n", 2, "", "not valid YAML"),
        ("{{}: 1}\n", 1, "", "a key must be a name or a number"),  # found by the config fuzzer
        ("? [a, b]\n: 1\n", 1, "", "a key must be a name or a number"),
    ],
)
def test_bad_config_inline(tmp_path: Path, text: str, line: int, field: str, reason: str) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_probe_config(path)
    assert (caught.value.line, caught.value.field) == (line, field)
    assert reason in caught.value.reason


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_probe_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1", "127.0.0.1", None),
        ("127.0.0.1:9312", "127.0.0.1", 9312),
        ("::1", "::1", None),
        ("[::1]:53", "::1", 53),
        ("edge.lishui.example.net", "edge.lishui.example.net", None),
        ("edge.example.net:443", "edge.example.net", 443),
        ("bad host", None, None),
        ("host:99999", None, None),
        ("[::1", None, None),
    ],
)
def test_split_host_port(address: str, host: str | None, port: int | None) -> None:
    assert split_host_port(address) == (host, port)


def test_check_address_by_kind() -> None:
    assert check_address("https://cdn.example.com/x", "http") is None
    assert "needs a host" in str(check_address("https://cdn.example.com/x", "icmp"))
    assert "scheme" in str(check_address("ftp://x/y", "http"))


def test_cli_exits_2_with_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qiancheng.probes.cli", "check", "--config", str(DATA / "probe_bad_type.yaml")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert f"{DATA / 'probe_bad_type.yaml'}:8: targets[0].kinds.tcp.count:" in result.stderr
