# Carina — developer entry points. Every target bootstraps the virtualenv itself on a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint bench soak catalogue clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,test,lint]'
	@touch $(STAMP)

## run: the whole stack on embedded defaults (NATS, MongoDB-wire, two simulated zones, six services, gateway :8080)
run: $(STAMP)
	$(PY) -m libs.devstack.stack

## test: the suite (unit + integration against real servers + chart validation)
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check libs services tests bench
	$(VENV)/bin/mypy libs/common libs/cli libs/devstack services
	$(VENV)/bin/lint-imports

## bench: benchmarks, printing figures (not asserted)
bench: $(STAMP)
	$(PY) -m bench

## soak: long chaos and load runs (nightly tier)
soak: $(STAMP)
	CARINA_SOAK=1 CARINA_HYPOTHESIS_PROFILE=nightly $(PY) -m pytest -q -p no:cacheprovider -m slow tests

catalogue: $(STAMP)
	$(PY) -m libs.common.catalogue > docs/subjects.md

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
