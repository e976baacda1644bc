# Developer shortcuts. The benchmarks write bench/results.json (see README, "Performance").
PYTHON ?= .venv/bin/python
MUTMUT ?= .venv/bin/mutmut

.PHONY: bench bench-quick mutate mutate-fresh mutate-report

bench:
	$(PYTHON) bench/run_all.py

bench-quick:
	$(PYTHON) bench/run_all.py --quick

# Mutation check of the modules where a silent bug costs most (setup.cfg [mutmut]); not run
# by CI: it takes long (see docs/development.md). Results are kept in mutants/, so a second
# run only re-checks the functions that changed; mutate-fresh starts over. MUTANTS picks
# some: make mutate MUTANTS='crm_mailtrack.journal* crm_mailtrack.tracking*'
mutate:
	@test -x $(MUTMUT) || .venv/bin/pip install --quiet -e ".[mutation]"
	$(MUTMUT) run --max-children $${MUTATE_JOBS:-2} $(MUTANTS)
	$(PYTHON) tools/mutation_report.py --table
	$(PYTHON) tools/mutation_report.py --survivors > mutants/report.json
	@echo "JSON with the surviving mutants: mutants/report.json (mutmut show <name> prints one)"

mutate-fresh:
	rm -rf mutants
	$(MAKE) mutate

mutate-report:
	$(PYTHON) tools/mutation_report.py --table
