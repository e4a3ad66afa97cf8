"""The example Prometheus config is one Prometheus accepts (promtool check config)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.helpers import require_tool

CONFIG = Path(__file__).parents[2] / "configs" / "prometheus" / "prometheus.yml"


def test_example_scrape_config_passes_promtool() -> None:
    promtool = require_tool("promtool")
    checked = subprocess.run([promtool, "check", "config", "--syntax-only", str(CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
