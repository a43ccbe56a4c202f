# One entry point for people and CI. `make demo` and `make test` each do all the set-up a
# fresh machine needs: a virtualenv with the project, and the local servers started if down.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck services asyncapi bench clean lock lock-upgrade image-check

# The virtualenv installs exactly the locked versions, hash-checked (requirements-dev.lock:
# runtime + dev tools; requirements-build.lock: the build backend), then the project itself
# without resolving anything and without fetching a build backend of its own. No bytecode is
# compiled at install (--no-compile: 26 s instead of 40 s here); Python compiles what is
# imported, once, on first use.
$(STAMP): pyproject.toml requirements-dev.lock requirements-build.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile --require-hashes -r requirements-build.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Lock files, compiled from pyproject.toml by uv (pinned in the dev lock itself). `make lock`
# after editing pyproject.toml keeps every pin that still fits and adds or drops what changed;
# `make lock-upgrade` moves everything to the newest versions the ranges allow. The runtime
# lock (the Dockerfile's) is constrained by the dev lock so both pin the same versions.
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command "make lock"
lock: $(STAMP)
	$(LOCK) $(LOCK_ARGS) pyproject.toml --extra dev -o requirements-dev.lock
	$(LOCK) $(LOCK_ARGS) pyproject.toml -c requirements-dev.lock -o requirements.lock
	$(LOCK) $(LOCK_ARGS) --group pyproject.toml:build -o requirements-build.lock

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

services:
	@scripts/ensure-services

demo: $(STAMP) services
	$(BIN)/bss-relay demo

# The suite on TEST_WORKERS pytest-xdist workers (it mostly waits on the servers, so more
# workers than this machine's 2 cores pay: 4 measured fastest of 2 to 5; 5 overloaded the
# timing lanes). `make test TEST_WORKERS=0` runs it serially; README's Development section
# says how parallelism works. pytest's status is make's (5, nothing collected, fails).
TEST_WORKERS ?= 4
test: $(STAMP) services
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

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

# Builds the Dockerfile with rootful podman and smoke-tests the image (minutes; not in CI).
image-check:
	scripts/image-check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bss-relay.db*
