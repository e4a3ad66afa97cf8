"""The shipped rules pass promtool (check and unit tests), the Alertmanager config passes amtool, and every
alert carries what the NOC needs: severity, summary, description, a runbook section that exists, and unit
tests that make it fire and keep it quiet."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.integration.helpers import require_tool

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "configs" / "prometheus"
RULES = PROMETHEUS / "qiancheng.rules.yml"
RULE_TESTS = PROMETHEUS / "qiancheng.rules.test.yml"
ALERTMANAGER = ROOT / "configs" / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"


def run(*command: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS: 25 rules found" in run(require_tool("promtool"), "check", "rules", str(RULES))


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert "SUCCESS" in run(require_tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=PROMETHEUS)


def test_prometheus_config_loads_the_rules() -> None:
    out = run(require_tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in out


def test_amtool_checks_the_alertmanager_config() -> None:
    out = run(require_tool("amtool"), "check-config", str(ALERTMANAGER))
    assert "4 inhibit rules" in out


def test_every_alert_has_severity_summary_description_and_an_existing_runbook_section() -> None:
    anchors = {"#" + re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    names = set()
    for rule in alerts():
        names.add(rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        link = annotations["runbook_url"]
        assert link.startswith("docs/runbook.md#") and link.removeprefix("docs/runbook.md") in anchors, link
    assert names == {"ProbeSilent", "TargetUnreachable", "SLABreach", "ProbeLocalDegradation", "CityWideDegradation",
                     "TargetWideDegradation", "ProbePlanOutdated", "ProbeClockUnsynchronised"}  # fmt: skip


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test.get("alert_rule_test", [])]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} never fires in a test"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} has no quiet case"


def test_inhibition_names_only_alerts_that_exist() -> None:
    names = {rule["alert"] for rule in alerts()}
    config = yaml.safe_load(ALERTMANAGER.read_text())
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            value = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            assert value is not None, matcher
            assert set(value[1].split("|")) <= names, matcher


def test_rules_read_only_documented_metrics() -> None:
    documented = set(re.findall(r"`(qiancheng_[a-z0-9_]+)`", METRICS_DOC.read_text()))
    # names of recorded series carry colons (city_target:qiancheng_loss_ratio:rate5m): not exposed metrics
    used = {name.removesuffix("_bucket") for name in re.findall(r"(?<![:\w])(qiancheng_[a-z0-9_]+)\b(?!:)", RULES.read_text())}
    assert used >= {"qiancheng_sla_breach", "qiancheng_tests_total", "qiancheng_rtt_seconds"}
    assert not used - documented, f"rules read metrics docs/metrics.md does not list: {sorted(used - documented)}"
