# cvpipe: `make demo` runs the whole pipeline offline on synthetic data; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install chromium plots-offline demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/cvpipe demo

# The lineage tests render the HTML report in headless Chromium (Debian's package; needs root to install).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# `dvc plots show` offline: vega, vega-lite and vega-embed (the versions DVC's page loads from a CDN) fetched once
# from npm and inlined in a page template under build/ (git-ignored); DVC's local, uncommitted config points to it.
# `dvc plots show` offline: vega, vega-lite and vega-embed (the versions DVC names) fetched from npm once and
# inlined into an HTML template under build/; plots-offline also points this checkout's DVC at it.
PLOTS_TEMPLATE := build/plots-offline/template.html

$(PLOTS_TEMPLATE): tools/plots_offline.py $(STAMP)
	$(BIN)/python tools/plots_offline.py build/plots-offline

plots-offline: $(PLOTS_TEMPLATE)
	$(BIN)/dvc config --local plots.html_template ../$(PLOTS_TEMPLATE)

# Two pytest workers (pytest-xdist), one test file each at a time so that module fixtures (a DVC workspace,
# a Prefect server) are built once: most tests wait on subprocesses, so two workers fit two cores.
TEST_WORKERS ?= 2

test: install chromium $(PLOTS_TEMPLATE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every CPU benchmark (< 15 min on 2 cores): one table, results in bench/results/, see docs/performance.md.
bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf demo .pytest_cache .ruff_cache
