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

# Re-install when the project metadata or the pins change. The editable install leaves osctl's own
# modules uncompiled (a wheel install compiles them); compiling them here spares every command about
# 0.1 s of start-up where Python may not write bytecode (PYTHONDONTWRITEBYTECODE).
$(STAMP): $(PY) pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	$(PY) -m compileall -q osctl plugins
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check osctl plugins tests benchmarks

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix osctl plugins tests benchmarks

check: lint test

# The built-in demo: synth -> validate -> bucket -> train -> sample -> eval on 2 CPU cores. Work already
# done is reused (the dataset, the index, a finished training run); DEMO_FRESH=1 starts from scratch.
OSCTL := $(VENV)/bin/osctl
demo: $(STAMP)
	@if [ "$(DEMO_FRESH)" = "1" ]; then rm -rf $(DEMO_DIR); fi
	$(OSCTL) data synth shapes $(DEMO_DIR)/data --videos 400 --images 60
	$(OSCTL) data validate $(DEMO_DIR)/data/data.txt --probe
	$(OSCTL) data bucket $(DEMO_DIR)/data/data.txt --recipe recipes/demo.yaml --set data.data=$(DEMO_DIR)/data/data.txt --set train.output_dir=$(DEMO_DIR)/train
	$(OSCTL) train --recipe recipes/demo.yaml --set data.data=$(DEMO_DIR)/data/data.txt --set train.output_dir=$(DEMO_DIR)/train
	$(OSCTL) sample --checkpoint $(DEMO_DIR)/train --prompts $(DEMO_DIR)/data/held_out_prompts.txt -o $(DEMO_DIR)/samples --grid
	$(OSCTL) eval shapes $(DEMO_DIR)/samples
	@echo "demo: videos and sidecars in $(DEMO_DIR)/samples (grid: $(DEMO_DIR)/samples/grid-*.gif); checkpoints in $(DEMO_DIR)/train"

clean-venv:
	rm -rf $(VENV)
