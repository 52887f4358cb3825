# The two commands of the README:
#   make demo   - install and run the daemon on an embedded broker with a demo model and synthetic traffic
#   make test   - install, run the gates (lint, typecheck, imports), then the whole test suite (what CI runs)
# The gates alone: make lint | make typecheck | make imports | make gates (all three)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --disable-pip-version-check -q

.PHONY: install test lint typecheck imports gates demo bench mutate clean

# setup.py and the C source: the editable install compiles the C overlay into the source tree
$(VENV)/.installed: pyproject.toml setup.py $(wildcard daemon/taskclf_daemon/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test,fast]'
	touch $@

install: $(VENV)/.installed

# ruff with the rule set documented in pyproject.toml (a checker only: nothing is reformatted)
lint: install
	$(VENV)/bin/ruff check .

# mypy over every module of the package; --strict flags for the pure core (pyproject.toml)
typecheck: install
	$(VENV)/bin/mypy

# import-linter contracts (pyproject.toml); PYTHONPATH: analyse this checkout's package
imports: install
	PYTHONPATH=daemon $(VENV)/bin/lint-imports --no-cache

gates: lint typecheck imports

test: install gates
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/taskclf-daemon demo $(DEMO_ARGS)

bench: install
	$(PY) scripts/bench_replay.py

# mutmut, pinned in the `mutate` extra; writes docs/mutation-report.md. MUTATE_ARGS e.g.
# "--fresh" (after changing code or tests), "--groups policy codec", "--rerun-survivors", "--report-only"
$(VENV)/.mutate-installed: $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test,fast,mutate]'
	touch $@

mutate: $(VENV)/.mutate-installed
	nice -n 15 $(PY) scripts/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .mutate
