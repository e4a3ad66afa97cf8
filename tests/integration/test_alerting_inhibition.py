"""The shipped Alertmanager config on a real Alertmanager: routing by severity, grouping, and each
inhibition rule, with alerts posted to its API and notifications caught by a webhook receiver."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import Processes
from tests.integration.alerting import WebhookReceiver, alertmanager_alerts, alertmanager_config, start_alertmanager
from tests.integration.helpers import wait_for


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(timezone.utc)
    body = [{"labels": labels, "annotations": {"summary": labels["alertname"]},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()} for labels in alerts]  # fmt: skip
    request = urllib.request.Request(url + "/api/v2/alerts", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def alert_states(url: str) -> dict[str, list[str]]:
    """alertname + its probe/city/target labels → the alerts inhibiting it (empty: active)."""
    alerts = alertmanager_alerts(url)
    return {
        ",".join(f"{k}={a['labels'][k]}" for k in ("alertname", "probe", "city", "target") if k in a["labels"]):
            a["status"]["inhibitedBy"]
        for a in alerts
    }  # fmt: skip


def test_inhibition_and_routing_of_the_shipped_config(processes: Processes, tmp_path: Path, webhook: WebhookReceiver) -> None:
    url = start_alertmanager(processes, tmp_path, alertmanager_config(webhook, {"critical": "1s", "warning": "2s"}, "2s"))
    edge = {"target": "edge-1", "target_class": "edge"}
    post_alerts(url, [
        # target-wide on edge-1: silences the city-wide alert and every probe's alert on edge-1
        {"alertname": "TargetWideDegradation", "severity": "critical", **edge},
        {"alertname": "CityWideDegradation", "severity": "critical", "city": "lishui", **edge},
        {"alertname": "TargetUnreachable", "severity": "warning", "probe": "p1", "city": "lishui", "isp": "ct", **edge},
        # city-wide on pool-1 in qiandongnan: silences that city's probes on pool-1, not lishui's
        {"alertname": "CityWideDegradation", "severity": "critical", "city": "qiandongnan", "target": "pool-1", "target_class": "cloud_pool"},
        {"alertname": "SLABreach", "severity": "warning", "probe": "p3", "city": "qiandongnan", "isp": "ct", "target": "pool-1",
         "target_class": "cloud_pool", "profile": "regional_cloud"},
        {"alertname": "SLABreach", "severity": "warning", "probe": "p1", "city": "lishui", "isp": "ct", "target": "pool-1",
         "target_class": "cloud_pool", "profile": "regional_cloud"},
        # probe-local on p2: silences p2's own target alerts
        {"alertname": "ProbeLocalDegradation", "severity": "warning", "probe": "p2", "city": "lishui", "isp": "cm"},
        {"alertname": "SLABreach", "severity": "warning", "probe": "p2", "city": "lishui", "isp": "cm", "target": "cdn-1",
         "target_class": "cdn", "profile": "uhd_streaming"},
        # p4 is silent: silences its target alerts and its probe-local alert
        {"alertname": "ProbeSilent", "severity": "warning", "probe": "p4", "city": "qiandongnan", "isp": "cm"},
        {"alertname": "TargetUnreachable", "severity": "warning", "probe": "p4", "city": "qiandongnan", "isp": "cm",
         "target": "cdn-1", "target_class": "cdn"},
        {"alertname": "ProbeLocalDegradation", "severity": "warning", "probe": "p4", "city": "qiandongnan", "isp": "cm"},
    ])  # fmt: skip

    def settled() -> dict[str, list[str]]:
        states = alert_states(url)
        return states if len(states) == 11 else {}

    wait_for(settled, 10, "every posted alert listed by Alertmanager")
    states = alert_states(url)
    inhibited = {name for name, by in states.items() if by}
    assert inhibited == {
        "alertname=CityWideDegradation,city=lishui,target=edge-1",
        "alertname=TargetUnreachable,probe=p1,city=lishui,target=edge-1",
        "alertname=SLABreach,probe=p3,city=qiandongnan,target=pool-1",
        "alertname=SLABreach,probe=p2,city=lishui,target=cdn-1",
        "alertname=TargetUnreachable,probe=p4,city=qiandongnan,target=cdn-1",
        "alertname=ProbeLocalDegradation,probe=p4,city=qiandongnan",
    }

    # the active ones are notified, routed by severity; the inhibited ones never are
    expected = {("/noc-critical", "TargetWideDegradation"), ("/noc-critical", "CityWideDegradation"),
                ("/noc-warning", "SLABreach"), ("/noc-warning", "ProbeLocalDegradation"), ("/noc-warning", "ProbeSilent")}  # fmt: skip
    wait_for(lambda: {(n.path, a["labels"]["alertname"]) for n, a in webhook.received()} >= expected, 15,
             "notifications of every active alert")  # fmt: skip
    time.sleep(2.5)  # one more group interval: nothing inhibited slips through later
    delivered = {(a["labels"]["alertname"], a["labels"].get("probe", ""), a["labels"].get("city", ""), a["labels"].get("target", ""))
                 for _, a in webhook.received()}  # fmt: skip
    assert delivered == {
        ("TargetWideDegradation", "", "", "edge-1"),
        ("CityWideDegradation", "", "qiandongnan", "pool-1"),
        ("SLABreach", "p1", "lishui", "pool-1"),
        ("ProbeLocalDegradation", "p2", "lishui", ""),
        ("ProbeSilent", "p4", "qiandongnan", ""),
    }
    # grouped by alert, city and target: the critical alerts came as separate groups, one alert each
    assert all(len(n.alerts) == 1 for n in webhook.notifications)
    assert {n.path for n in webhook.notifications} == {"/noc-critical", "/noc-warning"}
