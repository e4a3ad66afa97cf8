"""Set-up shared by the benchmarks that reuse the tests' libraries (accuracy.py and throughput.py build
the tests' network; fault_counts.py runs the tests' fault harness): import it first. Started by an
interpreter without the project, it runs the benchmark again under the project's own venv; then it puts
the project root on sys.path, for the `tests` package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import qiancheng.probes  # noqa: F401
except ModuleNotFoundError:
    _venv_python = ROOT / ".venv" / "bin" / "python"
    if _venv_python.exists() and Path(sys.executable) != _venv_python:
        os.execv(str(_venv_python), [str(_venv_python), *sys.argv])
    raise
sys.path.insert(0, str(ROOT))
