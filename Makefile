# One entry point for people and CI. `make demo` and `make test` each do all the set-up a
# fresh machine needs: a virtualenv with the project, and the local servers started if down.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck services asyncapi bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

services:
	@scripts/ensure-services

demo: $(STAMP) services
	$(BIN)/bss-relay demo

test: $(STAMP) services
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

asyncapi: $(STAMP)
	$(BIN)/bss-relay asyncapi > docs/asyncapi.yaml

bench: $(STAMP) services
	$(BIN)/bss-relay bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bss-relay.db*
