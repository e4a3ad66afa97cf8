"""The central plan with a real collector, responder and probe on loopback.

The route answers each probe its own expansion with a version and an ETag (304 when unchanged), refuses
strangers, revoked probes and probes the plan cannot be made for, and follows edits of plan.yaml (a
broken edit leaves the last good plan in force). Over TLS, a running probe with no targets of its own
picks up a changed plan without a restart, every result says which plan it was measured under, and
none is lost; through a collector outage it measures the plan it saved on disk. The collector shows
each probe's software and plan version and its box's health, and how long a probe has run a plan other
than the one it would be given now.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import closing
from email.message import Message
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from qiancheng.core import __version__
from qiancheng.probes.health import clock_state
from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector, Responder, spool_counters, tls_files, wait_for

TOKENS = {"p1": "token-plan-probe-one-0123456789", "p2": "token-plan-probe-two-0123456789"}

PLAN_V1 = """\
defaults:
  tcp: {{interval: 1s, count: 2, packet_interval: 50ms, timeout: 500ms}}
cities:
  lishui: {{edge: "127.0.0.1:{echo}"}}
  quzhou: {{edge: "127.0.0.1:{echo}"}}
targets:
  - {{name: "edge-{{city}}", address: "{{edge}}", class: edge, kinds: [tcp]}}
"""
PLAN_V2 = PLAN_V1 + """\
  - {{name: "pool-{{city}}", address: "{{edge}}", class: cloud_pool, kinds: [tcp]}}
"""


def _get_plan(collector: Collector, token: str | None, query: str = "?city=lishui&isp=chinatelecom", etag: str = "",
              context: ssl.SSLContext | None = None) -> tuple[int, Message, dict[str, object] | None]:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if etag:
        headers["If-None-Match"] = etag
    request = urllib.request.Request(collector.url + "/api/v1/plan" + query, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, error.headers, json.loads(body) if body else None


def _collector(processes: Processes, tmp_path: Path, plan: str | None, tls: str = "") -> Collector:
    extra = "plan: {file: plan.yaml}\n" if plan is not None else ""
    if plan is not None:
        (tmp_path / "plan.yaml").write_text(plan)
    collector = Collector(processes, tmp_path, TOKENS, tls=tls, extra=extra)
    collector.start()
    return collector


def _results(collector: Collector, probe: str) -> list[tuple[str, str | None, int, int, bool]]:
    """(target, plan version, seq, start_ns, success) of the probe's stored results."""
    if not collector.db.exists():
        return []
    with closing(sqlite3.connect(f"file:{collector.db}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT target_name, json_extract(info, '$.plan'), seq, start_ns, success FROM results"
                          " WHERE probe_id = ? ORDER BY seq", (probe,))  # fmt: skip
        return [(str(t), v, int(s), int(n), bool(ok)) for t, v, s, n, ok in rows]


def test_each_probe_gets_its_own_plan_with_a_version_and_an_etag(processes: Processes, tmp_path: Path) -> None:
    responder = Responder(processes)
    collector = _collector(processes, tmp_path, PLAN_V1.format(echo=responder.echo_port))
    status, headers, body = _get_plan(collector, TOKENS["p1"])
    assert status == 200 and body is not None, body
    version = body["version"]
    assert headers["ETag"] == f'"{version}"' and body["probe_id"] == "p1"
    assert body["targets"] == [{"name": "edge-lishui", "address": f"127.0.0.1:{responder.echo_port}", "class": "edge",
                                "kinds": {"tcp": {"interval": "1s", "count": 2, "packet_interval": "50ms",
                                                  "timeout": "500ms"}}}]  # fmt: skip
    status, headers, body = _get_plan(collector, TOKENS["p1"], etag=f'"{version}"')
    assert (status, body, headers["ETag"]) == (304, None, f'"{version}"')
    # another city, another plan
    status, _, other = _get_plan(collector, TOKENS["p2"], "?city=quzhou&isp=chinamobile")
    assert status == 200 and other is not None and other["version"] != version
    assert [t["name"] for t in other["targets"]] == ["edge-quzhou"]  # type: ignore[union-attr, index]

    for token, expected in ((None, "bearer token required"), ("not-a-token", "invalid token")):
        status, headers, body = _get_plan(collector, token)
        assert (status, body) == (401, {"error": expected}) and "Bearer" in headers["WWW-Authenticate"]
    status, _, body = _get_plan(collector, TOKENS["p1"], "?city=atlantis&isp=chinatelecom")
    assert status == 422 and body == {"error": "needs {edge}, and city 'atlantis' is not in the plan's cities (nor edge in "
                                                "variables)", "field": "plan.targets.0.address"}  # fmt: skip
    assert _get_plan(collector, TOKENS["p1"], "?town=x")[0] == 400

    revoked = subprocess.run([PYTHON, "-m", "qiancheng.collector.main", "--config", str(tmp_path / "collector.yaml"),
                              "probes", "revoke", "p2"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    status, _, body = _get_plan(collector, TOKENS["p2"], "?city=quzhou")
    assert status == 403 and "revoked" in str(body)

    # an edit is served at the next request (the file is looked at once a second); a broken one is not
    time.sleep(1.1)
    (tmp_path / "plan.yaml").write_text(PLAN_V2.format(echo=responder.echo_port))
    wait_for(lambda: _get_plan(collector, TOKENS["p1"])[2]["version"] != version, 10, "the edited plan")  # type: ignore[index]
    status, _, edited = _get_plan(collector, TOKENS["p1"])
    assert edited is not None and [t["name"] for t in edited["targets"]] == ["edge-lishui", "pool-lishui"]  # type: ignore[union-attr, index]
    time.sleep(1.1)
    (tmp_path / "plan.yaml").write_text(PLAN_V2.format(echo=responder.echo_port).replace("{edge}", "{nowhere}"))
    # the file is looked at when a probe asks
    wait_for(lambda: _get_plan(collector, TOKENS["p1"]) and "plan_reload_failed" in processes.log("collector"), 10,
             "the broken edit refused")  # fmt: skip
    assert "needs {nowhere}" in processes.log("collector")
    assert _get_plan(collector, TOKENS["p1"])[2] == edited  # the last good plan stays in force


def test_a_collector_without_a_plan_says_so_to_probes_only(processes: Processes, tmp_path: Path) -> None:
    collector = _collector(processes, tmp_path, None)
    assert _get_plan(collector, None)[0] == 401
    status, _, body = _get_plan(collector, TOKENS["p1"])
    assert status == 404 and "no plan" in str(body)


def _probe(processes: Processes, tmp_path: Path, collector: Collector, ca_file: str,
           name: str = "p1") -> tuple[subprocess.Popen[bytes], Path]:  # fmt: skip
    """A probe with no targets of its own: everything it measures comes from the plan; and where it
    keeps the last good plan (beside its spool)."""
    config = tmp_path / "p1.yaml"
    config.write_text(
        "probe: {id: p1, city: lishui, isp: chinatelecom}\n"
        f"collector: {{url: '{collector.url}', token: '{TOKENS['p1']}', ca_file: '{ca_file}', batch_max_age: 300ms,"
        " backoff_base: 100ms, backoff_cap: 1s, timeout: 2s}\n"
        f"spool: {{path: '{tmp_path / 'p1-spool.db'}'}}\n"
        "plan: {poll_interval: 1s}\n"
    )
    process = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name=name)
    return process, tmp_path / "plan.json"


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def _over_tls(processes: Processes, tmp_path: Path) -> tuple[Responder, Collector, str, ssl.SSLContext, str]:
    """A responder, and a collector over TLS serving PLAN_V1: (responder, collector, CA file, client context,
    p1's plan version)."""
    responder = Responder(processes)
    responder.start()
    tls, ca_file, context = tls_files(tmp_path)
    collector = _collector(processes, tmp_path, PLAN_V1.format(echo=responder.echo_port), tls=tls)
    version = _get_plan(collector, TOKENS["p1"], context=context)[2]["version"]  # type: ignore[index]
    return responder, collector, ca_file, context, str(version)


def test_a_running_probe_follows_a_changed_plan_over_tls_and_loses_nothing(processes: Processes, tmp_path: Path) -> None:
    responder, collector, ca_file, context, v1 = _over_tls(processes, tmp_path)
    probe, saved = _probe(processes, tmp_path, collector, ca_file)
    wait_for(lambda: sum(1 for r in _results(collector, "p1") if r[1] == v1) >= 3, 30, "results under the first plan")
    assert json.loads(saved.read_bytes())["version"] == v1

    (tmp_path / "plan.yaml").write_text(PLAN_V2.format(echo=responder.echo_port))
    wait_for(lambda: {r[0] for r in _results(collector, "p1") if r[1] not in (None, v1)} == {"edge-lishui", "pool-lishui"},
             30, "both targets measured under the new plan")  # fmt: skip
    v2 = _get_plan(collector, TOKENS["p1"], context=context)[2]["version"]  # type: ignore[index]
    log = processes.log("p1")
    assert f"plan_applied version={v1}" in log and f"plan_applied version={v2} previous={v1}" in log, log
    assert json.loads(saved.read_bytes())["version"] == v2
    time.sleep(1.5)
    _stop(probe)

    results = _results(collector, "p1")
    measured, backlog = spool_counters(tmp_path / "p1-spool.db")
    assert (len(results), backlog) == (measured, 0), "every result measured is stored, once"
    assert {r[1] for r in results} == {v1, v2} and all(r[4] for r in results), "no test cut short by the change"
    # under the new plan, edge-lishui kept running: no result of it was measured under v1 after one under v2
    edge = [r for r in results if r[0] == "edge-lishui"]
    first_v2 = next(i for i, r in enumerate(edge) if r[1] == v2)
    assert all(r[1] == v2 for r in edge[first_v2:])


def test_through_a_collector_outage_the_probe_measures_its_saved_plan(processes: Processes, tmp_path: Path) -> None:
    responder, collector, ca_file, context, v1 = _over_tls(processes, tmp_path)
    probe, saved = _probe(processes, tmp_path, collector, ca_file)
    wait_for(lambda: saved.exists() and _results(collector, "p1"), 30, "the plan saved and results stored")
    _stop(probe)
    _stop(collector.process)

    outage_ns = time.time_ns()
    probe, _ = _probe(processes, tmp_path, collector, ca_file, name="p1-again")
    wait_for(lambda: "plan_loaded" in processes.log("p1-again") and "plan_unreachable" in processes.log("p1-again"), 20,
             "the probe starting on its saved plan while the collector is down")  # fmt: skip
    time.sleep(3)
    collector.start()
    back_ns = time.time_ns()
    wait_for(lambda: any(outage_ns < r[3] < back_ns and r[1] == v1 for r in _results(collector, "p1")), 30,
             "results measured during the outage, under the saved plan")  # fmt: skip
    time.sleep(1)
    _stop(probe)
    results = _results(collector, "p1")
    measured, backlog = spool_counters(tmp_path / "p1-spool.db")
    assert (len(results), backlog) == (measured, 0)
    assert sum(1 for r in results if outage_ns < r[3] < back_ns) >= 2


def _samples(collector: Collector, context: ssl.SSLContext, name: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(collector.url + "/metrics", timeout=10, context=context) as answer:
        text = answer.read().decode()
    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]  # fmt: skip


def _listed(collector: Collector, token: str, context: ssl.SSLContext) -> dict[str, object]:
    request = urllib.request.Request(collector.url + "/api/v1/probes?city=lishui", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:
        (probe,) = [p for p in json.loads(answer.read())["probes"] if p["id"] == "p1"]
        return probe  # type: ignore[no-any-return]


def _outdated(collector: Collector, context: ssl.SSLContext) -> float | None:
    values = [value for labels, value in _samples(collector, context, "qiancheng_probe_plan_outdated_seconds")
              if labels["probe"] == "p1"]  # fmt: skip
    return values[0] if values else None


def test_fleet_health_names_version_plan_and_clock_and_times_an_outdated_plan(processes: Processes, tmp_path: Path) -> None:
    responder, collector, ca_file, context, v1 = _over_tls(processes, tmp_path)
    probe, _ = _probe(processes, tmp_path, collector, ca_file)
    wait_for(lambda: _outdated(collector, context) == 0.0, 30, "the probe's plan reported and current")

    one = {"probe": "p1", "city": "lishui", "isp": "chinatelecom"}
    [(info, _)] = [s for s in _samples(collector, context, "qiancheng_probe_info") if s[0]["probe"] == "p1"]
    assert info == {**one, "version": __version__, "plan": v1}
    health = {name: value for name in ("uptime_seconds", "cpus", "load1", "clock_synced", "clock_maxerror_seconds")
              for labels, value in _samples(collector, context, f"qiancheng_probe_{name}") if labels == one}  # fmt: skip
    clock = clock_state()
    assert clock is not None and health["clock_synced"] == float(clock.synced)
    assert 0 < health["uptime_seconds"] < 60 and health["cpus"] == len(os.sched_getaffinity(0)) and health["load1"] >= 0
    listed = _listed(collector, TOKENS["p1"], context)
    assert (listed["version"], listed["plan"], listed["plan_outdated_seconds"], listed["clock_synced"]) == (
        __version__, v1, 0.0, clock.synced)

    # lishui leaves the plan: the collector can give p1 no plan (422), so p1 measures on with the one it has,
    # and the collector counts how long it has been behind
    time.sleep(1.1)
    (tmp_path / "plan.yaml").write_text(PLAN_V1.format(echo=responder.echo_port).replace("  lishui:", "  lishuii:"))
    wait_for(lambda: (_outdated(collector, context) or 0) >= 3, 30, "p1 seen behind the plan for 3 s")
    assert "plan_refused status=422" in processes.log("p1")
    assert float(_listed(collector, TOKENS["p1"], context)["plan_outdated_seconds"]) >= 3  # type: ignore[arg-type]
    behind_ns = time.time_ns()
    wait_for(lambda: any(r[3] > behind_ns and r[1] == v1 for r in _results(collector, "p1")), 20, "results under v1 still")

    # the edit undone: p1 runs the current plan again
    time.sleep(1.1)
    (tmp_path / "plan.yaml").write_text(PLAN_V1.format(echo=responder.echo_port))
    wait_for(lambda: _outdated(collector, context) == 0.0, 20, "p1 current again")
    _stop(probe)
    measured, backlog = spool_counters(tmp_path / "p1-spool.db")
    assert (len(_results(collector, "p1")), backlog) == (measured, 0)
