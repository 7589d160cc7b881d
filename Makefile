# make run: set up and launch the damicm experiment; make test: the suite; make bench: benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXPERIMENT ?= damicm

.PHONY: run test bench fuzz chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) run.py $(EXPERIMENT)

test: $(STAMP)
	$(PY) -m pytest -q -n 8 --dist loadgroup

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[fast]'
	$(PY) benchmarks/runner.py $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

# make chaos: 60 s of random SIGKILLs and SIGSTOPs on damicm; SEED=N replays one, RUNS=N runs N seeds in a row.
SEED ?=
RUNS ?= 1
chaos: $(STAMP)
	$(PY) -m tests.chaos --seconds 60 --runs $(RUNS) $(if $(SEED),--seed $(SEED))

fuzz: $(STAMP)
	ORBIT_FUZZ_EXAMPLES=5000 $(PY) -m pytest -q tests/test_fuzz.py

clean:
	rm -rf $(VENV) var *.egg-info
