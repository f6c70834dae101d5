# Bootstraps .venv by itself on a fresh machine.
# TORCH_SPEC is pinned first so pip never picks a multi-GB CUDA build; override with
#   make test TORCH_SPEC="torch==2.5.1"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The library finds data only through explicit paths or these variables: the project's copies.
export PYRO_NF_MNIST ?= $(abspath ../shared/data)
export PYRO_NF_POSTERIORDB ?= $(abspath ../shared/posteriordb)

.PHONY: test test-fast test-arviz1 venv-arviz1 demo lint bench bench-quick bench-layers bench-mnist bench-validate bench-venv venv docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench
# zuko is only a benchmark comparison; the torch pin is kept as a constraint so it cannot move.
$(BENCH_STAMP): $(STAMP)
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

DOCS_STAMP := $(VENV)/.installed-docs
# mkdocs and mkdocstrings for the site; the torch pin is kept as a constraint so it cannot move.
$(DOCS_STAMP): $(STAMP)
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# The user pages and the API reference (mkdocs.yml), into site/; any warning fails the build.
docs: $(DOCS_STAMP)
	$(PY) -m mkdocs build --strict

# The tests run in one process per core (pytest-xdist); an idle one takes tests from a busy one.
XDIST ?= -n auto --dist worksteal

test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The fast tier (under a minute on 2 cores): every test but those marked slow, in their files
# or by tests/slow_tests.txt (measured). `make test` runs both tiers.
test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The second lane: the whole suite on Python 3.12, where pip resolves ArviZ 1.x (DataTree,
# arviz-base/-stats/-plots). Finds pyenv's 3.12 or python3.12 on PATH; override with
# PY312=..., or pass ARVIZ1_PYTEST_ARGS='-m "not slow"' for its fast tier only.
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
                     $(shell command -v python3.12 2>/dev/null))
VENV312 ?= .venv312
ARVIZ1_PYTEST_ARGS ?=

test-arviz1:
	@test -n "$(PY312)" || { echo "make test-arviz1: no python3.12 found; pass PY312=/path/to/python3.12"; exit 1; }
	$(MAKE) test PYTHON=$(PY312) VENV=$(VENV312) PYTEST_ARGS='$(ARVIZ1_PYTEST_ARGS)'

# The second lane's environment alone (CI builds it while the first lane's tests run).
venv-arviz1:
	@test -n "$(PY312)" || { echo "make venv-arviz1: no python3.12 found; pass PY312=/path/to/python3.12"; exit 1; }
	$(MAKE) venv PYTHON=$(PY312) VENV=$(VENV312)


demo: $(STAMP)
	$(VENV)/bin/pyro-nf demo --out pyro-nf-demo

# ruff, and the layers' import contract (pyproject.toml [tool.importlinter], docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Every benchmark runs as a module from the repository root: $(PY) -m benchmarks.NAME --help.
bench-layers: $(STAMP)
	$(PY) -m benchmarks.layers --out benchmarks/results/layers.md

# The full suite (up to about an hour on 2 cores); each script prints its progress.
bench: bench-layers $(BENCH_STAMP)
	$(PY) -m benchmarks.guides --out benchmarks/results/guides.md
	$(PY) -m benchmarks.autoflow_accuracy --out benchmarks/results/autoflow_accuracy.md
	$(PY) -m benchmarks.accuracy --out benchmarks/results/accuracy.md
	$(PY) -m benchmarks.calibration --from-accuracy benchmarks/results/accuracy.json \
		--out benchmarks/results/calibration.md
	$(PY) -m benchmarks.speed --out benchmarks/results/speed.md
	$(PY) -m benchmarks.overhead --out benchmarks/results/overhead.md
	$(PY) -m benchmarks.time_to_accuracy --out benchmarks/results/time_to_accuracy.md
	$(PY) -m benchmarks.scaling --out benchmarks/results/scaling.md
	$(PY) -m benchmarks.energies --out benchmarks/results/energies.md
	$(PY) -m benchmarks.distributed --out benchmarks/results/distributed.md
	$(PY) -m benchmarks.big_data --out benchmarks/results/big_data.md

# The one-off validation of the posteriordb translations with NUTS (about 40 minutes).
bench-validate: $(STAMP)
	$(PY) -m benchmarks.posteriordb.validate --out benchmarks/results/posteriordb_validation.md

# The VAE-with-flows table on binarized MNIST (four trainings, about an hour on one core),
# and -log p(x) against the flow length (13 trainings, two at a time: about an hour).
bench-mnist: $(STAMP)
	$(PY) -m benchmarks.mnist --out benchmarks/results/mnist.md
	$(PY) -m benchmarks.mnist --sweep --jobs 2 --epochs 10 --warmup 2 --iw 100 \
		--out benchmarks/results/mnist_sweep.md

# A reduced run of the same code paths, under 5 minutes; writes to out/bench-quick, not results/.
bench-quick: $(BENCH_STAMP)
	mkdir -p out/bench-quick
	$(PY) -m benchmarks.accuracy --quick --out out/bench-quick/accuracy.md
	$(PY) -m benchmarks.calibration --quick --out out/bench-quick/calibration.md
	$(PY) -m benchmarks.speed --quick --out out/bench-quick/speed.md
	$(PY) -m benchmarks.overhead --quick --out out/bench-quick/overhead.md
	$(PY) -m benchmarks.time_to_accuracy --quick --out out/bench-quick/time_to_accuracy.md
	$(PY) -m benchmarks.scaling --quick --out out/bench-quick/scaling.md
	$(PY) -m benchmarks.energies --quick --out out/bench-quick/energies.md
	$(PY) -m benchmarks.distributed --quick --out out/bench-quick/distributed.md
	$(PY) -m benchmarks.big_data --quick --out out/bench-quick/big_data.md

clean:
	rm -rf $(VENV) .pytest_cache
