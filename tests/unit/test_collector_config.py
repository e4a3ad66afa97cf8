"""Collector config: defaults, the example file, and bad files naming file, line, field and reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from qiancheng.collector.registry import hash_token
from qiancheng.collector.config import CollectorConfig, load_collector_config
from qiancheng.collector.main import main
from qiancheng.core.errors import ConfigError

DATA = Path(__file__).resolve().parent.parent / "testdata"
ROOT = DATA.parent.parent


def test_minimal_config_gets_defaults() -> None:
    config, _ = load_collector_config(DATA / "collector_minimal.yaml")
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 9310)
    assert config.store.backend == "sqlite"
    assert config.limits.max_body_bytes == 16 * 1024 * 1024
    assert config.limits.max_results_per_batch == 10_000
    assert config.metrics.series_ttl == 3600.0
    assert [p.id for p in config.probes] == ["test-probe-01"]
    assert config.probes[0].token_sha256 == hash_token("test-token")


def test_example_config_validates() -> None:
    config, _ = load_collector_config(ROOT / "configs" / "collector.yaml")
    assert config.listen.port == 9310
    assert len(config.probes) >= 2
    # every key of the Struct appears in the documented example
    text = (ROOT / "configs" / "collector.yaml").read_text()
    for key in ("listen:", "host:", "port:", "store:", "backend:", "path:", "probes:", "token_sha256:",
                "limits:", "max_body_bytes:", "max_results_per_batch:", "metrics:", "series_ttl:", "log_level:",
                "sla:", "profiles:", "windows:", "interval:", "open_after:", "close_after:", "cache:",
                "tls:", "cert_file:", "key_file:", "client_ca_file:", "metrics_listen:", "requests_per_second:",
                "request_burst:", "results_per_second:", "result_burst:", "max_concurrent_requests:",
                "max_targets_per_probe:", "plan:", "file: plan.yaml"):  # fmt: skip
        assert key in text
    assert set(CollectorConfig.__struct_fields__) == {"listen", "metrics_listen", "store", "probes", "limits", "metrics", "sla",
                                                       "plan", "log_level"}


@pytest.mark.parametrize(
    ("file", "line", "field", "reason"),
    [
        ("collector_bad_unknown_key.yaml", 7, "store.journal", "unknown key 'journal'"),
        ("collector_bad_type.yaml", 3, "listen.port", "expected `int`, got `str`"),
        ("collector_bad_token_hash.yaml", 5, "probes[1].token_sha256", "64 lowercase hex digits"),
        ("collector_bad_duplicate_probe.yaml", 4, "probes[1].id", "duplicate probe id 'city-a-01'"),
        ("collector_bad_shared_token.yaml", 5, "probes[1].token_sha256", "same token as probes[0]"),
        ("collector_bad_size.yaml", 2, "limits.max_body_bytes", "expected a size such as 64MiB"),
        ("collector_bad_backend.yaml", 2, "store.backend", "mongodb"),
        ("collector_bad_limit.yaml", 3, "limits.max_results_per_batch", "<= 10000"),
    ],
)
def test_bad_config_names_file_line_field(file: str, line: int, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_collector_config(DATA / file)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(DATA / file), line, field)
    assert reason in error.reason
    assert str(error).startswith(f"{DATA / file}:{line}: {field}: ")


def test_main_reports_bad_config_on_stderr_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    file = DATA / "collector_bad_type.yaml"
    assert main(["--config", str(file)]) == 2
    err = capsys.readouterr().err
    assert f"{file}:3: listen.port: expected `int`, got `str`" in err


def test_check_flag_validates_without_serving(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(DATA / "collector_minimal.yaml"), "--check"]) == 0
    assert "ok" in capsys.readouterr().out


def test_hash_token_prints_the_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    token = "a-random-token-of-forty-three-characters-xx"
    assert main(["hash-token", token]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize(
    ("hashes", "field", "reason"),
    [
        ("[A, B, C]", "probes[0].token_sha256", "length <= 2"),
        ("[A, A]", "probes[0].token_sha256[1]", "the same token twice"),
        ("[A, nothex]", "probes[0].token_sha256[1]", "64 lowercase hex digits"),
        ("[]", "probes[0].token_sha256", "length >= 1"),
    ],
)
def test_token_rotation_lists_are_checked(tmp_path: Path, hashes: str, field: str, reason: str) -> None:
    path = tmp_path / "collector.yaml"
    hashes = hashes.replace("A", hash_token("a")).replace("B", hash_token("b")).replace("C", hash_token("c"))
    path.write_text(f"probes:\n  - {{id: p1, token_sha256: {hashes}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    assert caught.value.field == field and reason in caught.value.reason, caught.value
