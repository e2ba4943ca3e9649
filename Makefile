.PHONY: test bench demo
PY ?= python

test:
	$(PY) -m pytest -q

bench:
	$(PY) bench/core_bench.py

demo:
	$(PY) -m relay demo
