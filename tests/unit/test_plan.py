"""The central plan: templates, expansion for a probe (variables, defaults, overrides), the checks at load
with plan.yaml's lines, versions that move only with what a probe measures, and the probe's side (a plan
checked whole, saved atomically, merged with its own targets)."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest
from multidict import MultiDict

from qiancheng.collector.plan.load import load_plan
from qiancheng.collector.plan.model import Member, PlanError
from qiancheng.collector.plan.service import _matches, member_of
from qiancheng.collector.plan.templates import MissingVariable, TemplateSyntaxError, fill, template_fields
from qiancheng.collector.refused import Refused
from qiancheng.collector.registry import Identity
from qiancheng.core.errors import ConfigError
from qiancheng.core.plan_wire import Plan, decode_plan, encode_plan
from qiancheng.core.targets import TargetSpec
from qiancheng.probes.plan_client import plan_jobs, read_saved_plan, save_plan
from tests.conftest import ROOT

SHIPPED = ROOT / "configs" / "plan.yaml"

MINIMAL = """\
defaults:
  icmp: {interval: 30s, count: 10}
cities:
  lishui: {edge: 203.0.113.11}
  quzhou: {edge: 203.0.113.21}
targets:
  - name: edge-{city}
    address: "{edge}"
    class: edge
    kinds: {icmp: {interval: 10s}, http: {url: "http://{edge}:9311/ping"}}
  - name: hub
    address: 198.51.100.1
    class: regional_hub
    kinds: [icmp]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def member(city: str = "lishui", isp: str = "chinatelecom", probe: str = "p1", **labels: str) -> Member:
    return Member(probe, city, isp, tuple(sorted(labels.items())))


# -- templates -----------------------------------------------------------------------------------------


def test_templates_name_bare_variables_and_keep_literal_braces() -> None:
    assert template_fields("edge.{city}.{isp}.example.net") == ["city", "isp"]
    assert fill("edge.{city}.example.net", {"city": "lishui"}) == "edge.lishui.example.net"
    assert fill("{{literal}} {city}", {"city": "x"}) == "{literal} x"
    with pytest.raises(MissingVariable) as missing:
        fill("{edge}", {"city": "x"})
    assert missing.value.name == "edge"


@pytest.mark.parametrize("text", ["{a.b}", "{0}", "{x!r}", "{x:>3}", "{City}", "{", "}", "{}"])
def test_anything_but_a_bare_variable_is_refused(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        template_fields(text)


# -- the shipped plan -----------------------------------------------------------------------------------


def test_the_shipped_plan_gives_each_city_its_classes() -> None:
    plan = load_plan(SHIPPED, 256)
    made = plan.for_member(member("lishui", "chinatelecom"))
    by_name = {target.name: target for target in made.targets}
    assert {target.target_class for target in made.targets} == {"edge", "cloud_pool", "regional_hub", "national_hub", "cdn", "dns"}
    edge = by_name["edge-lishui"]
    assert (edge.address, edge.labels) == ("203.0.113.11", {"province": "zhejiang"})
    assert isinstance(edge.kinds, dict)
    # defaults, then the template's own
    assert edge.kinds["icmp"] == {"interval": "10s", "count": 20, "packet_interval": "100ms", "timeout": "1s"}
    assert edge.kinds["http"]["url"] == "http://203.0.113.11:9311/ping"
    assert by_name["hub-east"].address == "198.51.100.1"
    assert "dns-chinatelecom" in by_name and "dns-chinamobile" not in by_name
    mobile = {t.name for t in plan.for_member(member("zhangye", "chinamobile")).targets}
    assert {"edge-zhangye", "pool-zhangye", "hub-northwest", "dns-chinamobile"} <= mobile


def test_overrides_by_label_and_city_change_settings_in_order() -> None:
    plan = load_plan(SHIPPED, 256)
    fiber = {t.name: t for t in plan.for_member(member("lishui")).targets}
    cellular = {t.name: t for t in plan.for_member(member("lishui", access="5g-sa")).targets}
    assert fiber["edge-lishui"].kinds["download"]["interval"] == "1h"  # type: ignore[call-overload]
    assert cellular["edge-lishui"].kinds["download"] == {"interval": "6h", "streams": 2, "warmup": "3s", "window": "10s"}  # type: ignore[call-overload]
    far = {t.name: t for t in plan.for_member(member("nyingchi")).targets}
    assert far["national-beijing"].kinds["icmp"]["timeout"] == "2s"  # type: ignore[call-overload]
    assert fiber["national-beijing"].kinds["icmp"]["timeout"] == "1s"  # type: ignore[call-overload]


def test_a_version_moves_only_with_what_the_probe_measures(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    before = load_plan(path, 256)
    lishui, quzhou = before.for_member(member("lishui")).version, before.for_member(member("quzhou")).version
    assert lishui != quzhou and len(lishui) == 16
    assert load_plan(path, 256).for_member(member("lishui")).version == lishui  # stable across loads
    path.write_text(MINIMAL.replace("quzhou: {edge: 203.0.113.21}", "quzhou: {edge: 203.0.113.99}"))
    after = load_plan(path, 256)
    assert after.for_member(member("lishui")).version == lishui
    assert after.for_member(member("quzhou")).version != quzhou


def test_disable_drops_targets_by_pattern_and_overrides_add_targets(tmp_path: Path) -> None:
    text = MINIMAL + """\
overrides:
  - match: {isp: [chinamobile, chinaunicom], labels: {site: olt-3}}
    disable: ["edge-*"]
    targets:
      - {name: "extra-{isp}", address: 192.0.2.1, kinds: [icmp]}
"""
    plan = load_plan(write(tmp_path, text), 256)
    assert [t.name for t in plan.for_member(member(isp="chinamobile", site="olt-3")).targets] == ["hub", "extra-chinamobile"]
    assert [t.name for t in plan.for_member(member(isp="chinamobile")).targets] == ["edge-lishui", "hub"]  # label differs


# -- errors at load: plan.yaml's line and field ---------------------------------------------------------


@pytest.mark.parametrize(("change", "line", "field", "reason"), [
    (("address: \"{edge}\"", "address: \"{pool}\""), 8, "targets[0].address", "for city 'lishui': needs {pool}"),
    (("edge-{city}", "edge-{city.name}"), 7, "targets[0].name", "is not a variable"),
    (("lishui: {edge: 203.0.113.11}", "lishui: {edge: 203.0.113.11, city: x}"), 4, "cities.lishui.city", "the probe's own"),
    (("icmp: {interval: 30s, count: 10}", "icmp: {interval: soon}"), 2, "defaults.icmp.interval", "duration"),
    (("icmp: {interval: 30s, count: 10}", "ping: {}"), 2, "defaults.ping", "unknown kind"),
    (("kinds: [icmp]", "kinds: [icmp, traceroute]"), 14, "targets[1].kinds.traceroute", "unknown kind"),
    (("name: hub", "name: edge-lishui"), 11, "targets[1].name", "also made by targets[0]"),
    (("http: {url: \"http://{edge}:9311/ping\"}", "http: {url: \"ftp://{edge}/\"}"), 10, "targets[0].kinds.http.url",
     "for city 'lishui': URL scheme"),
    (("icmp: {interval: 10s}", "icmp: {interval: 10ms, count: 10}"), 10, "targets[0].kinds.icmp.interval",
     "shorter than the test"),
])  # fmt: skip
def test_a_bad_plan_names_its_line_field_and_reason(tmp_path: Path, change: tuple[str, str], line: int, field: str, reason: str) -> None:
    assert change[0] in MINIMAL
    path = write(tmp_path, MINIMAL.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as error:
        load_plan(path, 256)
    assert (error.value.line, error.value.field) == (line, field), str(error.value)
    assert reason in error.value.reason, str(error.value)
    assert str(error.value).startswith(f"{path}:{line}: {field}: ")


def test_a_plan_larger_than_the_cardinality_limit_is_refused_at_load_and_per_probe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"for city 'lishui': 2 targets .* more than limits.max_targets_per_probe \(1\)"):
        load_plan(write(tmp_path, MINIMAL), 1)
    text = MINIMAL + "overrides:\n  - match: {probe: big}\n    targets:\n" + "".join(
        f"      - {{name: t{i}, address: 192.0.2.{i}, kinds: [icmp]}}\n" for i in range(1, 5))
    with pytest.raises(ConfigError, match="overrides\\[0\\]"):
        load_plan(write(tmp_path, text), 5)
    plan = load_plan(write(tmp_path, text), 6)
    assert len(plan.for_member(member(probe="big")).targets) == 6
    assert len(load_plan(write(tmp_path, text), 6).for_member(member(probe="small")).targets) == 2


def test_a_probe_in_a_city_the_plan_does_not_know_is_told_why(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, MINIMAL), 256)
    with pytest.raises(PlanError) as error:
        plan.for_member(member("atlantis"))
    assert error.value.path == ("targets", 0, "address")
    assert "city 'atlantis' is not in the plan's cities" in error.value.reason
    with pytest.raises(PlanError, match="has no city"):
        plan.for_member(member(""))


# -- the route's reading of a probe ---------------------------------------------------------------------


def test_the_registry_names_an_enrolled_probes_city_else_the_query_does() -> None:
    enrolled = Identity("p1", "lishui", "chinatelecom", False)
    config_probe = Identity("p2", "", "", False)
    query = MultiDict([("city", "quzhou"), ("isp", "chinamobile"), ("label", "access:5g-sa"), ("label", "site:olt-3")])
    assert member_of(enrolled, query) == Member("p1", "lishui", "chinatelecom", (("access", "5g-sa"), ("site", "olt-3")))
    assert member_of(config_probe, query) == Member("p2", "quzhou", "chinamobile", (("access", "5g-sa"), ("site", "olt-3")))
    for bad in ([("town", "x")], [("city", "a"), ("city", "b")], [("label", "nocolon")], [("label", "Bad:x")],
                [("city", "x\n")], [("label", "a:1"), ("label", "a:2")]):  # fmt: skip
        with pytest.raises(Refused) as refused:
            member_of(config_probe, MultiDict(bad))
        assert refused.value.status == 400


def test_if_none_match_takes_lists_weak_tags_and_star() -> None:
    assert _matches('"abc"', '"abc"') and _matches('W/"abc", "x"', '"abc"') and _matches("*", '"abc"')
    assert not _matches('"abd"', '"abc"') and not _matches(None, '"abc"')


# -- the probe's side -----------------------------------------------------------------------------------


def plan_of(*targets: TargetSpec, probe: str = "p1") -> Plan:
    from qiancheng.core.plan_wire import plan_version

    return Plan(probe_id=probe, version=plan_version(list(targets)), targets=list(targets))


def test_a_plan_is_checked_whole_with_the_rules_of_the_probes_own_targets() -> None:
    good = TargetSpec(name="edge", address="203.0.113.11", kinds={"icmp": {"interval": "10s"}})
    jobs = plan_jobs(plan_of(good), "plan")
    assert [(j.key, float(j.settings.interval), j.plan) for j in jobs] == [(("edge", "icmp"), 10.0, plan_of(good).version)]
    bad = TargetSpec(name="web", address="203.0.113.12", kinds=["http"])  # http needs a URL
    with pytest.raises(ConfigError, match=r"from-collector: targets\[1\].address: kind http needs a URL"):
        plan_jobs(plan_of(good, bad), "from-collector")
    with pytest.raises(ConfigError, match="used twice"):
        plan_jobs(plan_of(good, good), "plan")


def test_the_last_good_plan_is_saved_whole_and_read_back_only_for_its_probe(tmp_path: Path) -> None:
    plan = plan_of(TargetSpec(name="edge", address="203.0.113.11", kinds=["icmp"]))
    path = tmp_path / "state" / "plan.json"
    save_plan(path, encode_plan(plan))
    assert not path.with_name("plan.json.tmp").exists()
    saved = read_saved_plan(path, "p1")
    assert saved is not None and saved.plan == plan and [j.key for j in saved.jobs] == [("edge", "icmp")]
    assert read_saved_plan(path, "another-probe") is None
    path.write_bytes(b'{"probe_id": "p1", "version": "0123456789abcdef", "targets": [{"name": "x"}]}')
    assert read_saved_plan(path, "p1") is None  # unusable: logged, the probe waits for the collector
    assert read_saved_plan(tmp_path / "none.json", "p1") is None


def test_the_wire_form_round_trips_and_refuses_a_bad_version() -> None:
    plan = plan_of(TargetSpec(name="edge", address="203.0.113.11", kinds={"icmp": None}, labels={"pool": "a"}))
    assert decode_plan(encode_plan(plan)) == plan
    with pytest.raises(msgspec.ValidationError, match="version"):
        decode_plan(encode_plan(plan).replace(plan.version.encode(), b"not-hex"))


def test_a_probe_config_may_leave_its_targets_to_the_plan(tmp_path: Path) -> None:
    from qiancheng.probes.config import load_probe_config

    config = tmp_path / "probe.yaml"
    base = "probe: {id: p1, city: lishui, isp: chinatelecom}\ncollector: {url: 'http://127.0.0.1:9310', token: t}\n"
    config.write_text(base + "plan: {poll_interval: 2m}\n")
    loaded = load_probe_config(config)
    assert loaded.jobs == () and loaded.plan is not None and float(loaded.plan.poll_interval) == 120.0
    config.write_text(base)
    with pytest.raises(ConfigError, match="no targets: give at least one, or `plan: {}`"):
        load_probe_config(config)
    config.write_text(base + "plan: {poll_interval: 100ms}\n")
    with pytest.raises(ConfigError, match="plan.poll_interval: must be at least 1s"):
        load_probe_config(config)


def test_the_shipped_collector_config_names_the_shipped_plan(tmp_path: Path) -> None:
    from qiancheng.collector.config import load_collector_config

    for name in ("collector.yaml", "plan.yaml", "sla.yaml"):
        shutil.copy(ROOT / "configs" / name, tmp_path / name)
    config, _ = load_collector_config(tmp_path / "collector.yaml")
    assert config.plan is not None and config.plan.file == str((tmp_path / "plan.yaml").resolve())
    (tmp_path / "plan.yaml").write_text(MINIMAL.replace("{edge}", "{nowhere}", 1))
    with pytest.raises(ConfigError) as error:
        load_collector_config(tmp_path / "collector.yaml")
    assert error.value.file == str((tmp_path / "plan.yaml").resolve()) and error.value.line == 8


def test_the_probes_own_target_replaces_the_plans_of_that_name(tmp_path: Path) -> None:
    from qiancheng.probes.agent import Agent
    from qiancheng.probes.config import load_probe_config
    from qiancheng.probes.plan_client import AppliedPlan

    config = tmp_path / "probe.yaml"
    config.write_text("probe: {id: p1, city: lishui, isp: chinatelecom}\ncollector: {url: 'http://127.0.0.1:9310', token: t}\n"
                      "plan: {}\ntargets:\n  - {name: edge, address: 127.0.0.1, kinds: {icmp: {interval: 5s}}}\n")
    agent = Agent(load_probe_config(config))
    plan = plan_of(TargetSpec(name="edge", address="203.0.113.11", kinds=["icmp", "tcp"]),
                   TargetSpec(name="pool", address="203.0.113.12", kinds=["icmp"]))
    agent._plan = AppliedPlan(plan, plan_jobs(plan, "plan"))
    assert [(j.target.name, j.target.address, j.kind, j.plan) for j in agent.jobs()] == [
        ("edge", "127.0.0.1", "icmp", ""), ("pool", "203.0.113.12", "icmp", plan.version)]
