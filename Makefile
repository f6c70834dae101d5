# Bootstraps .venv by itself on a fresh machine.
# TORCH_SPEC is pinned first so pip never picks a multi-GB CUDA build; override with
#   make test TORCH_SPEC="torch==2.5.1"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench bench-layers venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/pyro-nf demo --out pyro-nf-demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-layers: $(STAMP)
	$(PY) benchmarks/layers.py --out benchmarks/results/layers.md

bench: bench-layers $(STAMP)
	$(PY) benchmarks/guides.py --out benchmarks/results/guides.md
	$(PY) benchmarks/autoflow_accuracy.py --out benchmarks/results/autoflow_accuracy.md

clean:
	rm -rf $(VENV) .pytest_cache
