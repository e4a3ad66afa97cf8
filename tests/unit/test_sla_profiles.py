"""sla.yaml: the shipped profiles load; a bad profile is refused with file, line, field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from qiancheng.collector.config import load_collector_config
from qiancheng.collector.main import main
from qiancheng.collector.sla.profiles import load_sla_profiles
from qiancheng.core.errors import ConfigError

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "testdata" / "sla"
SHIPPED = ROOT / "configs" / "sla.yaml"


def test_shipped_profiles_hold_the_issue_thresholds_in_base_units() -> None:
    sla = load_sla_profiles(SHIPPED)
    thresholds = {(p.name, o.name): (o.indicator.bound, o.threshold) for p in sla.profiles.values() for o in p.objectives}
    assert thresholds[("edge_local", "rtt_p95")] == ("max", 0.010)
    assert thresholds[("edge_local", "jitter")] == ("max", 0.010)
    assert thresholds[("edge_local", "loss")] == ("max", 0.001)
    assert thresholds[("edge_local", "download")] == ("min", 500e6)
    assert thresholds[("regional_cloud", "rtt_p95")] == ("max", 0.020)
    assert thresholds[("national_hub", "rtt_p95")] == ("max", 0.060)
    assert thresholds[("national_hub", "pdv")] == ("max", 0.050)
    assert thresholds[("cloud_vr_gaming", "rtt_p95")] == ("max", 0.020)
    assert thresholds[("cloud_vr_gaming", "download")] == ("min", 70e6)
    assert thresholds[("video_conf_edu", "rtt_p95")] == ("max", 0.150)
    assert thresholds[("video_conf_edu", "jitter")] == ("max", 0.040)
    assert thresholds[("video_conf_edu", "loss")] == ("max", 0.01)
    assert thresholds[("video_conf_edu", "mos")] == ("min", 4.0)
    assert thresholds[("uhd_streaming", "download_4k")] == ("min", 50e6)
    assert thresholds[("uhd_streaming", "download_8k")] == ("min", 200e6)
    assert thresholds[("voice", "rtt_p95")] == ("max", 0.300)
    assert thresholds[("voice", "loss")] == ("max", 0.03)
    for profile in sla.profiles.values():  # availability (success ratio) for all
        assert any(o.indicator.name == "availability" for o in profile.objectives), profile.name


def test_assign_matches_labels_fully_and_unions_profiles_in_file_order() -> None:
    sla = load_sla_profiles(SHIPPED)
    edge = {"probe": "p1", "city": "lishui", "isp": "ct", "target": "edge-1", "target_class": "edge"}
    assert [p.name for p in sla.for_series(edge)] == ["edge_local", "cloud_vr_gaming"]
    assert [p.name for p in sla.for_series({**edge, "target_class": "regional_hub"})] == ["national_hub", "voice"]
    assert sla.for_series({**edge, "target_class": "edgeX"}) == []  # a pattern matches the whole value


@pytest.mark.parametrize(
    ("file", "line", "field", "reason"),
    [
        ("bad_unknown_indicator.yaml", 5, "profiles.edge.objectives.rtt_p99", "unknown indicator 'rtt_p99'"),
        ("bad_indicator_reference.yaml", 5, "profiles.uhd.objectives.download_4k.indicator", "unknown indicator 'downlaod'"),
        ("bad_wrong_unit.yaml", 4, "profiles.edge.objectives.rtt_p95.max", "rtt_p95 is a time"),
        ("bad_time_without_unit.yaml", 4, "profiles.edge.objectives.jitter.max", "write it with its unit"),
        ("bad_negative.yaml", 5, "profiles.voice.objectives.loss.max", "cannot be negative"),
        ("bad_floor_for_ceiling.yaml", 5, "profiles.edge.objectives.rtt_p95.min", "rtt_p95 is a ceiling"),
        ("bad_ratio_over_one.yaml", 4, "profiles.edge.objectives.availability.min", "ratio within 0..1"),
        ("bad_rate_as_ratio.yaml", 4, "profiles.uhd.objectives.download_4k.min", "download is a bit rate"),
        ("bad_unknown_profile.yaml", 7, "assign[0].profiles[1]", "unknown profile 'edge_lcoal'"),
        ("bad_match_label.yaml", 8, "assign[0].match.colour", "cannot match on 'colour'"),
    ],
)  # fmt: skip
def test_bad_profile_names_file_line_field_and_reason(file: str, line: int, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_sla_profiles(DATA / file)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(DATA / file), line, field), str(error)
    assert reason in error.reason


def _collector_config(tmp_path: Path, profiles: Path, store: str = "sqlite") -> Path:
    config = tmp_path / "collector.yaml"
    config.write_text(f"store: {{backend: {store}, path: {tmp_path / 'c.db'}}}\n"
                      f"sla:\n  profiles: {profiles}\n  windows: [10s, 1m]\n  interval: 1s\n")  # fmt: skip
    return config


def test_collector_refuses_a_bad_sla_file_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _collector_config(tmp_path, DATA / "bad_wrong_unit.yaml")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(config)
    assert caught.value.file == str(DATA / "bad_wrong_unit.yaml")
    assert main(["--config", str(config), "--check"]) == 2
    assert f"{DATA / 'bad_wrong_unit.yaml'}:4: profiles.edge.objectives.rtt_p95.max: rtt_p95 is a time" in capsys.readouterr().err


def test_collector_resolves_the_profiles_path_beside_its_config(tmp_path: Path) -> None:
    (tmp_path / "sla.yaml").write_text(SHIPPED.read_text())
    config, _ = load_collector_config(_collector_config(tmp_path, Path("sla.yaml")))
    assert config.sla.profiles == str((tmp_path / "sla.yaml").resolve())
    assert config.sla.windows == (10.0, 60.0)


def test_collector_names_a_missing_profiles_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_collector_config(_collector_config(tmp_path, tmp_path / "nope.yaml"))
    assert "cannot read" in caught.value.reason


def test_collector_refuses_windows_shorter_than_a_second(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("sla:\n  windows: [500ms]\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(config)
    assert (caught.value.line, caught.value.field) == (2, "sla.windows[0]")


def test_the_file_is_parsed_once_and_again_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "sla.yaml"
    path.write_text(SHIPPED.read_text())
    first = load_sla_profiles(path)
    assert load_sla_profiles(path) is first  # the config check and the judgement share one parse
    path.write_text(SHIPPED.read_text() + "\n# edited\n")
    again = load_sla_profiles(path)
    assert again is not first and again.profiles.keys() == first.profiles.keys()
