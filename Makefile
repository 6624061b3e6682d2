# Two commands for a fresh machine with Python 3.10+ and make:
#   make demo   build the demo data and run the search on it
#   make test   run the test suite
# Both create and fill .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-reliability test-all lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/tlsearch demo-data demo_data
	$(BIN)/tlsearch doctor demo_data
	$(BIN)/tlsearch search demo_data --space quick --study demo --trials 12 --timeout 420

test: $(STAMP)
	$(BIN)/python -m pytest

# The kill/corrupt/flood suite (tests/reliability), CI's reduced count; the full run
# (50 kills, figures written to tests/reliability/RESULTS.md):
#   TLSEARCH_RELIABILITY_FULL=1 make test-reliability
test-reliability: $(STAMP)
	$(BIN)/python -m pytest -m reliability tests/reliability

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" 

lint: $(STAMP)
	$(BIN)/ruff check tlsearch tests benchmarks

clean:
	rm -rf $(VENV) demo_data studies .tlsearch_cache
