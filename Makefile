# Two commands on a fresh machine (Python 3.11+): `make demo` and `make test`.
# Both create .venv and install the project into it on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench bench-e2e soak tools clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
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
