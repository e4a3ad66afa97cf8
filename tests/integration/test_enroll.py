"""Enrollment end to end, over TLS on loopback, with real collector, responder and probe processes.

Three commands make a box a probe: `qiancheng-collector enroll` prints a one-time code, `qiancheng-probe
enroll` trades it for an id and a token (token file 0600, a config with `plan: {}`), `qiancheng-probe
run` measures the collector's plan for its city. A code works once and until its time; a wrong, used or
expired one is refused with the reason (exit 2, and a line in the collector's log); an unreachable
collector is exit 1 with the code unspent. The registry places an enrolled probe: its batches are
stored under the registry's city and ISP. Revoking it refuses its next push; a new code re-enrolls the
id on a new box.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

from qiancheng.core.result import Result, Target
from qiancheng.core.wire import Batch, encode_batch
from tests.conftest import PYTHON, Processes, free_port
from tests.integration.helpers import Collector, Responder, tls_files, wait_for
from tests.integration.test_plan import PLAN_V1

CONFIG_PROBE = {"config-probe-01": "token-config-probe-0123456789"}


def _collector_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "qiancheng.collector.main", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def _probe_enroll(collector_url: str, code: str, box: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "qiancheng.probes.cli", "enroll", "--collector", collector_url, "--code", code,
                           "--config", str(box / "probe.yaml"), "--token-file", str(box / "probe.token"),
                           "--spool", str(box / "spool.db"), *extra], capture_output=True, text=True, timeout=60)  # fmt: skip


def _stored(collector: Collector, probe: str) -> list[tuple[str, str, str, str | None]]:
    """(city, isp, target, plan version) of the probe's stored results."""
    if not collector.db.exists():
        return []
    with closing(sqlite3.connect(f"file:{collector.db}?mode=ro", uri=True)) as db:
        return [(str(c), str(i), str(t), v) for c, i, t, v in db.execute(
            "SELECT city, isp, target_name, json_extract(info, '$.plan') FROM results WHERE probe_id = ?", (probe,))]


def _push(collector: Collector, token: str, probe: str, city: str, context: object) -> int:
    result = Result(kind="icmp", target=Target(name="edge-lishui", address="198.18.0.1"), start_ns=time.time_ns() - 10**9,
                    duration_seconds=0.1, success=True, seq=time.time_ns() // 1000,
                    figures={"packets_sent": 1.0, "packets_received": 1.0})  # fmt: skip
    batch = Batch(probe_id=probe, batch_id=f"enroll-test-{time.time_ns()}", results=[result], city=city, isp="somewhere")
    request = urllib.request.Request(collector.url + "/api/v1/results", data=encode_batch(batch), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:  # type: ignore[arg-type]
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_box_enrolls_in_three_commands_and_measures_its_citys_plan(processes: Processes, tmp_path: Path) -> None:
    responder = Responder(processes)
    responder.start()
    tls, ca_file, context = tls_files(tmp_path)
    (tmp_path / "plan.yaml").write_text(PLAN_V1.format(echo=responder.echo_port))
    collector = Collector(processes, tmp_path, CONFIG_PROBE, tls=tls, extra="plan: {file: plan.yaml}\n")
    collector.start()
    config = tmp_path / "collector.yaml"
    box = tmp_path / "box"
    box.mkdir()

    # 1. on the collector
    made = _collector_command(config, "enroll", "--city", "lishui", "--isp", "chinatelecom", "--id", "lishui-ct-01")
    assert made.returncode == 0, made.stderr
    code = made.stdout.strip()
    assert len(code) == 24 and code.count("-") == 4 and "qiancheng-probe enroll --collector https://" in made.stderr
    # 2. on the box
    enrolled = _probe_enroll(collector.url, code, box, "--ca-file", ca_file)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "enrolled as probe lishui-ct-01 (lishui, chinatelecom)" in enrolled.stdout
    token_file = box / "probe.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 40 and token not in (box / "probe.yaml").read_text()
    assert "plan: {}" in (box / "probe.yaml").read_text()
    # 3. on the box: it measures its city's plan, with no target of its own
    processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(box / "probe.yaml"), name="box")
    wait_for(lambda: any(r[2] == "edge-lishui" and r[3] for r in _stored(collector, "lishui-ct-01")), 30,
             "the enrolled probe's results under the plan")  # fmt: skip
    listed = _collector_command(config, "probes", "list", "--json")
    rows = {row["id"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert (rows["lishui-ct-01"]["source"], rows["lishui-ct-01"]["state"], rows["lishui-ct-01"]["city"]) == ("enrolled", "active", "lishui")

    # the code worked once; wrong and expired codes are refused with the reason
    again = _probe_enroll(collector.url, code, tmp_path, "--ca-file", ca_file)
    assert again.returncode == 2 and "refused (409): this code was used at" in again.stderr, again.stderr
    wrong = _probe_enroll(collector.url, "AAAA-BBBB-CCCC-DDDD-EEEE", tmp_path, "--ca-file", ca_file)
    assert wrong.returncode == 2 and "refused (403): unknown enrollment code" in wrong.stderr, wrong.stderr
    short = _collector_command(config, "enroll", "--city", "quzhou", "--isp", "chinamobile", "--ttl", "1s")
    assert short.returncode == 0, short.stderr
    time.sleep(1.2)
    expired = _probe_enroll(collector.url, short.stdout.strip(), tmp_path, "--ca-file", ca_file)
    assert expired.returncode == 2 and "refused (410): this code expired at" in expired.stderr, expired.stderr
    log = processes.log("collector")
    assert log.count("enroll_refused") == 3 and "probe_enrolled probe=lishui-ct-01" in log
    # an enrolled box is where the registry says, whatever its batches claim
    assert _push(collector, token, "lishui-ct-01", "atlantis", context) == 200
    assert {(city, isp) for city, isp, _, _ in _stored(collector, "lishui-ct-01")} == {("lishui", "chinatelecom")}
    assert "batch_place_corrected probe=lishui-ct-01" in processes.log("collector")

    # revoked: refused at its next push; a new code re-enrolls the id on a new box
    assert _collector_command(config, "probes", "revoke", "lishui-ct-01").returncode == 0
    assert _push(collector, token, "lishui-ct-01", "lishui", context) == 403
    active = _collector_command(config, "enroll", "--city", "lishui", "--isp", "chinatelecom", "--id", "config-probe-01")
    assert active.returncode == 2 and "in the config's probes: list" in active.stderr
    renewed = _collector_command(config, "enroll", "--city", "lishui", "--isp", "chinatelecom", "--id", "lishui-ct-01")
    assert renewed.returncode == 0, renewed.stderr
    new_box = tmp_path / "new-box"
    new_box.mkdir()
    assert _probe_enroll(collector.url, renewed.stdout.strip(), new_box, "--ca-file", ca_file).returncode == 0
    new_token = (new_box / "probe.token").read_text().strip()
    assert new_token != token and _push(collector, new_token, "lishui-ct-01", "lishui", context) == 200
    assert _push(collector, token, "lishui-ct-01", "lishui", context) == 401


def test_enroll_says_what_stops_it_before_spending_the_code(processes: Processes, tmp_path: Path) -> None:
    tls, ca_file, _ = tls_files(tmp_path)
    collector = Collector(processes, tmp_path, CONFIG_PROBE, tls=tls)
    collector.start()
    made = _collector_command(tmp_path / "collector.yaml", "enroll", "--city", "lishui", "--isp", "chinatelecom")
    code = made.stdout.strip()
    assert made.returncode == 0 and "probe lishui-chinatelecom-" in made.stderr
    box = tmp_path / "box"
    box.mkdir()
    (box / "probe.yaml").write_text("# a box already set up\n")
    taken = _probe_enroll(collector.url, code, box, "--ca-file", ca_file)
    assert taken.returncode == 2 and "exists: this box looks enrolled already" in taken.stderr
    untrusted = _probe_enroll(collector.url, code, box, "--force", "--ca-file", str(tmp_path / "nowhere.pem"))
    assert untrusted.returncode == 2 and "--ca-file: cannot load" in untrusted.stderr
    down = _probe_enroll(f"https://127.0.0.1:{free_port()}", code, box, "--force", "--ca-file", ca_file)
    assert down.returncode == 1 and "the code is not spent" in down.stderr
    plain = _probe_enroll(f"http://127.0.0.1:{collector.port}", code, box, "--force", "--ca-file", ca_file)
    assert plain.returncode == 2 and "applies to an https:// collector only" in plain.stderr
    # none of that spent the code
    done = _probe_enroll(collector.url, code, box, "--force", "--ca-file", ca_file)
    assert done.returncode == 0, done.stderr
    bad_args = _collector_command(tmp_path / "collector.yaml", "enroll", "--city", "丽水", "--isp", "电信")
    assert bad_args.returncode == 2 and "give one with --id" in bad_args.stderr
    assert _collector_command(tmp_path / "collector.yaml", "enroll", "--city", "a", "--isp", "b", "--ttl", "90d").returncode == 2
