# The two commands of the README:
#   make sweep   set up .venv (CPU torch) and run the default sweep of config/sweep.yaml -> results/report.html
#   make test    set up .venv (with the dev tools) and run ruff and the whole test suite
# Variables: TORCH (the torch requirement to install first; CPU build by default), CORES, CONFIG,
# TEST_WORKERS, PYTHON, VENV.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= all
# the sweep file of `make sweep`
CONFIG ?= config/sweep.yaml
# pytest workers (pytest-xdist; a test file stays on one worker, so module fixtures run once)
TEST_WORKERS ?= 2
BIN := $(abspath $(VENV))/bin

.PHONY: setup sweep test lint clean-results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# validate the sweep file before any job; keep going past a failed job and list the failures at the end
sweep: setup
	$(BIN)/masf validate $(CONFIG)
	PATH="$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --keep-going \
		|| { $(BIN)/python workflow/scripts/failed_jobs.py; exit 1; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	PATH="$(BIN):$$PATH" OMP_NUM_THREADS=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

clean-results:
	rm -rf results/data results/runs results/checkpoints results/figures results/metrics.nc results/report.html
