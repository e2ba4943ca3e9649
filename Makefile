# Two commands on a fresh machine (Python 3.11+): `make demo` and `make test`.
# Both create .venv and install the project into it on first use.
# `make demo` installs the runtime dependencies only; `make test` and `make lint` add the test
# and lint extras (client libraries, pytest, mypy, ruff, import-linter).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP_RUN := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench bench-e2e soak tools clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PIP) -e .
	touch $(STAMP_RUN)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) -e '.[test,lint]'
	touch $(STAMP) $(STAMP_RUN)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The layer contract and cycle check (import-linter, contracts in pyproject.toml), types, style.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m mypy relay
	$(PY) -m ruff check relay tests bench
	$(PY) -m ruff format --check relay tests bench

demo: $(STAMP_RUN)
	$(PY) -m relay demo

bench: $(STAMP)
	$(PY) bench/core_bench.py

tools:
	bash .ci/install-tools

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

bench-e2e: $(STAMP)
	$(PY) bench/e2e.py --quick

soak: $(STAMP)
	$(PY) bench/soak.py
