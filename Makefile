# Developer shortcuts. The benchmarks write bench/results.json (see README, "Performance").
PYTHON ?= .venv/bin/python

.PHONY: bench bench-quick

bench:
	$(PYTHON) bench/run_all.py

bench-quick:
	$(PYTHON) bench/run_all.py --quick
