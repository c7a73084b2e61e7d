# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv when missing and
# install what they need; every pip call passes the constraints file (torch==2.13.0, the CPU build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.osctl-installed
PYTEST_ARGS ?=
DEMO_DIR ?= demo_out

.PHONY: test demo lint fmt install check clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip

# Re-install when the project metadata or the pins change.
$(STAMP): $(PY) pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check osctl plugins tests benchmarks

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix osctl plugins tests benchmarks

check: lint test

# Until the built-in shapes demo lands, the demo runs the smallest real end-to-end job that exists.
demo: $(STAMP)
	$(VENV)/bin/osctl plugins list
	$(VENV)/bin/osctl recipe validate recipes/480p.yaml

clean-venv:
	rm -rf $(VENV)
