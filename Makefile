# The two commands: `make demo` and `make test`. Both create .venv when missing and install into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slide2expr-installed
DEMO_OUT ?= demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint docs docs-serve bench bench-gpu clean

# Re-runs skip a venv whose stamp is newer than pyproject.toml.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/slide2expr demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the docs site into site/ (mkdocs build --strict: a broken link or reference fails); `make docs-serve` to browse
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

bench: install
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

# on a machine with a CUDA device: the CUDA tests and the GPU featurize benchmarks (benchmarks/gpu.sh)
bench-gpu: install
	PY=$(PY) bash benchmarks/gpu.sh

clean:
	rm -rf $(DEMO_OUT) .pytest_cache site
