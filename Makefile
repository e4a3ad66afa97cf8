# qiancheng: `make demo` runs the whole chain on loopback; `make test` installs what the tests need and runs them.

PYTHON ?= python3
VENV := .venv
# A Python that already has qiancheng installed (an activated venv) is used as it is; otherwise the
# project's own venv is made and filled.
PY := $(shell $(PYTHON) -c 'import qiancheng.core, qiancheng.probes, qiancheng.collector' >/dev/null 2>&1 && command -v $(PYTHON) || echo $(VENV)/bin/python)
ifeq ($(PY),$(VENV)/bin/python)
BASE_ENV := $(VENV)/.installed
TEST_ENV := $(VENV)/.installed-test
endif

.PHONY: demo test unit integration lint bench check clean help dashboards-preview

help:
	@echo "make demo   collector (SQLite) + responder + probe on loopback, live table (DEMO_SECONDS=N to stop after N s)"
	@echo "make test   install test dependencies (pip and Debian packages) and run the whole suite"
	@echo "make unit | integration | lint | bench"
	@echo "make dashboards-preview   PNG of each Grafana dashboard from a short loopback run, in build/dashboards-preview/"

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(BASE_ENV)
	$(PY) tools/demo.py

# the test network's timing-sensitive accuracy tests first, on a machine the other suites have not yet
# stirred (thousands of connections, fsyncs, killed processes)
test: $(TEST_ENV) lint
	bash tests/install-deps.sh
	$(PY) -m pytest -q -p no:cacheprovider tests/netlab tests/unit tests/integration

unit: $(TEST_ENV)
	$(PY) -m pytest -q tests/unit

integration: $(TEST_ENV)
	$(PY) -m pytest -q tests/integration

# mypy sees the package as installed: qiancheng/{core,probes,collector} as links to the source folders.
lint: $(TEST_ENV)
	mkdir -p build/typecheck/qiancheng
	ln -sfn ../../../core build/typecheck/qiancheng/core
	ln -sfn ../../../probes build/typecheck/qiancheng/probes
	ln -sfn ../../../collector build/typecheck/qiancheng/collector
	cd build/typecheck && MYPYPATH=. $(abspath $(PY)) -m mypy --config-file ../../pyproject.toml --namespace-packages --explicit-package-bases -p qiancheng
	cd build/typecheck && MYPYPATH=. $(abspath $(PY)) -m mypy --config-file ../../pyproject.toml ../../tools/demo.py

# bench/fleet.py (a 1000-city fleet, ~15 min, Prometheus alone peaks near 12 GB) is run by hand
bench: $(BASE_ENV)
	$(PY) bench/ingest.py
	$(PY) bench/wire_decode.py
	$(PY) bench/exposition.py
	$(PY) bench/accuracy.py
	$(PY) bench/throughput.py
	$(PY) bench/path.py
	$(PY) bench/icmp_scale.py
	$(PY) bench/http.py
	$(PY) bench/small_box.py
	$(PY) bench/capacity.py
	$(PY) bench/udpst_load.py

# a collector, a responder, probes in two cities and Prometheus on loopback for 90 s, then one PNG per dashboard
dashboards-preview: $(BASE_ENV)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check 'matplotlib>=3.8'
	$(PY) dashboards/preview.py --out build/dashboards-preview

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache demo-data
