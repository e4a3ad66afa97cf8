"""The `store: {backend: influx}` config: defaults, and bad files naming line, field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from qiancheng.collector.config import load_collector_config
from qiancheng.collector.store.influx import RECENT_SEQS, _ProbeMemory
from qiancheng.core.errors import ConfigError
from qiancheng.core.result import Result, Target


def _write(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"listen: {{port: 9310}}\nstore:\n{store}")
    return path


def test_influx_store_config(tmp_path: Path) -> None:
    token = tmp_path / "influx.token"
    token.write_text("secret\n")
    config, _ = load_collector_config(_write(tmp_path, (
        "  backend: influx\n"
        f"  influx: {{url: 'https://influx.example.net:8086', org: noc, bucket: qiancheng, token_file: '{token}'}}\n"
    )))  # fmt: skip
    influx = config.store.influx
    assert influx is not None and config.store.backend == "influx"
    assert (influx.url, influx.org, influx.bucket, influx.timeout, influx.gzip) == (
        "https://influx.example.net:8086", "noc", "qiancheng", 5.0, True)  # fmt: skip
    assert config.store.location == "https://influx.example.net:8086 bucket=qiancheng"


@pytest.mark.parametrize(
    ("store", "line", "field", "reason"),
    [
        ("  backend: influx\n", 3, "store.backend", "needs a store.influx section"),
        ("  backend: influx\n  influx: {url: 'ftp://x', bucket: b}\n", 4, "store.influx.url", "regex"),
        ("  backend: influx\n  influx: {url: 'http://x:8086'}\n", 4, "store.influx.bucket", "missing required key"),
        ("  backend: influx\n  influx: {url: 'http://x', bucket: b, token: t, token_file: /etc/hostname}\n", 4,
         "store.influx.token", "not both"),
        ("  backend: influx\n  influx: {url: 'http://x', bucket: b, token_file: /nonexistent/token}\n", 4,
         "store.influx.token_file", "no such file"),
        ("  backend: influx\n  influx: {url: 'http://x', bucket: b, timeout: 0s}\n", 4, "store.influx.timeout", "more than 0"),
        ("  backend: mongo\n", 3, "store.backend", "Invalid enum value 'mongo'"),
    ],
)
def test_bad_influx_configs_name_line_field_and_reason(tmp_path: Path, store: str, line: int, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_collector_config(_write(tmp_path, store))
    error = caught.value
    assert error.field == field and reason in error.reason, str(error)
    assert error.line == line, str(error)


def _result(seq: int, start_ns: int) -> Result:
    return Result(kind="tcp", target=Target(name="t", address="198.18.0.1:80"), start_ns=start_ns,
                  duration_seconds=0.1, success=True, seq=seq)  # fmt: skip


def test_memory_knows_resent_results_and_forgets_the_oldest() -> None:
    memory = _ProbeMemory()
    first = [_result(1, 100), _result(2, 200)]
    assert memory.fresh(first) == first
    memory.remember("b1", first)
    # a re-send is not fresh; the same seq with another start time is another result (another point)
    assert memory.fresh([_result(2, 200), _result(3, 300), _result(3, 300), _result(1, 999)]) == [_result(3, 300), _result(1, 999)]
    memory.remember("b2", [_result(seq, seq) for seq in range(10, 10 + RECENT_SEQS)])
    assert memory.fresh([_result(1, 100)]) == [_result(1, 100)]  # forgotten: the point's identity still holds
    assert len(memory.seqs) == RECENT_SEQS and "b1" in memory.batches
