# Tessera: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both install the locked environment first (`make setup`, a no-op when the lock is unchanged).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lock-$(shell cat requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
# dvc.yaml commands run `python`: make it the project environment's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING ?= false

.PHONY: setup demo test test-full lint bench lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.lock-*
	@touch $@

demo: setup
	$(BIN)/tessera demo

test: setup
	$(BIN)/pytest -q

test-full: setup
	$(BIN)/pytest -q -m full

lint: setup
	$(BIN)/ruff check src components lifecycle flows serving cli tests bench docs
	$(BIN)/ruff format --check src components lifecycle flows serving cli tests bench docs
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Re-resolve the lock from pyproject.toml (needs the package registries).
lock:
	rm -rf /tmp/tessera-lock && $(PY) -m venv /tmp/tessera-lock
	/tmp/tessera-lock/bin/pip install --quiet -e '.[dev]'
	/tmp/tessera-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf .tessera runs .pytest_cache .mypy_cache .ruff_cache
