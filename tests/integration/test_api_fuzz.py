"""Property-based fuzzing of every route in the collector's OpenAPI document against a real collector
(schemathesis: examples from the schema, its edge cases, then random requests, valid and not): zero 5xx
answers, and no traceback in the collector's log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Processes
from tests.integration import chaos
from tests.integration.helpers import Collector

PROBE, TOKEN = "fuzz-01", "token-fuzz-0123456789"
EXAMPLES_PER_ROUTE = 200
ROOT = Path(__file__).resolve().parents[2]


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed: make test installs the test dependencies")
    return found


def test_fuzz_every_route_of_the_openapi_document_no_5xx(processes: Processes, tmp_path: Path) -> None:
    shutil.copy(ROOT / "configs" / "sla.yaml", tmp_path / "sla.yaml")
    shutil.copy(ROOT / "configs" / "plan.yaml", tmp_path / "plan.yaml")  # the plan route expands it for whatever is asked
    collector = Collector(processes, tmp_path, tokens={PROBE: TOKEN},
                          extra=chaos.UNLIMITED + "sla: {profiles: sla.yaml, interval: 1s}\nplan: {file: plan.yaml}\n")  # fmt: skip
    collector.start()
    report = tmp_path / "schemathesis.json"
    run = subprocess.run(
        [_schemathesis(), "run", f"{collector.url}/api/v1/openapi.json", "--url", collector.url,
         "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES_PER_ROUTE), "--seed", "2026",
         "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "30",
         "--report", "json", "--report-json-path", str(report)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads(report.read_text())
    cases, failing = summary["test_cases"]["generated"], summary["test_cases"]["with_failures"]
    print(f"\nschemathesis: {summary['operations']['tested']} routes, {cases} cases, {failing} with a 5xx or error")
    assert run.returncode == 0, run.stdout[-4000:]
    assert summary["operations"]["tested"] == summary["operations"]["total"] >= 7
    assert cases >= 7 * 50 and failing == 0 and not summary["errors"]
    assert "Traceback" not in processes.log(collector.name)
