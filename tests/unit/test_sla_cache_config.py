"""The `sla.cache` setting: where a collector on the influx backend keeps its SLA window cache, and the
files it refuses, naming file, line, field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from qiancheng.collector.config import load_collector_config
from qiancheng.core.errors import ConfigError

SLA_YAML = Path(__file__).resolve().parents[2] / "configs" / "sla.yaml"
INFLUX = "influx: {url: 'http://127.0.0.1:8086', bucket: results}"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "sla.yaml").write_text(SLA_YAML.read_text())
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    return path


def test_influx_with_profiles_caches_beside_the_store_path_by_default(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config, _ = load_collector_config(write(tmp_path, (
        f"store: {{backend: influx, path: {tmp_path / 'data' / 'collector.db'}, {INFLUX}}}\n"
        "sla: {profiles: sla.yaml}\n"
    )))  # fmt: skip
    assert config.sla.cache == str(tmp_path / "data" / "sla-cache.db")
    assert config.sla.profiles == str(tmp_path / "sla.yaml")


def test_a_given_cache_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    config, _ = load_collector_config(write(tmp_path, (
        f"store: {{backend: influx, {INFLUX}}}\nsla: {{profiles: sla.yaml, cache: cache/windows.db}}\n"
    )))  # fmt: skip
    assert config.sla.cache == str(tmp_path / "cache" / "windows.db")


@pytest.mark.parametrize("sla", ["{profiles: sla.yaml}", "{profiles: sla.yaml, cache: elsewhere.db}", "{cache: x.db}"])
def test_no_cache_where_the_judgement_reads_the_store_or_does_not_run(tmp_path: Path, sla: str) -> None:
    backend = "sqlite" if "profiles" in sla else f"influx, {INFLUX}"
    config, _ = load_collector_config(write(tmp_path, (
        f"store: {{backend: {backend}, path: {tmp_path / 'collector.db'}}}\nsla: {sla}\n"
    )))  # fmt: skip
    assert config.sla.cache == ""


@pytest.mark.parametrize(
    ("text", "line", "field", "reason"),
    [
        # the default directory of store.path does not exist on this machine's test path
        (f"store: {{backend: influx, path: /nonexistent/q/collector.db, {INFLUX}}}\nsla: {{profiles: sla.yaml}}\n",
         2, "sla.profiles", "directory '/nonexistent/q' does not exist (set sla.cache)"),
        (f"store: {{backend: influx, {INFLUX}}}\nsla:\n  profiles: sla.yaml\n  cache: missing/w.db\n",
         4, "sla.cache", "does not exist"),
        (f"store: {{backend: influx, path: PLACE/collector.db, {INFLUX}}}\nsla:\n  profiles: sla.yaml\n  cache: collector.db\n",
         4, "sla.cache", "give it its own file, not store.path"),
    ],
)  # fmt: skip
def test_bad_cache_settings_are_refused(tmp_path: Path, text: str, line: int, field: str, reason: str) -> None:
    path = write(tmp_path, text.replace("PLACE", str(tmp_path)))
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(path), line, field)
    assert reason in error.reason
