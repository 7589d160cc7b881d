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
	$(PY) -m pytest -q -n 4 --dist loadgroup

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[fast]'
	$(PY) benchmarks/bench_routing.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_failover.py
	$(PY) benchmarks/bench_supervision.py
	$(PY) benchmarks/bench_probes.py
	$(PY) benchmarks/bench_hosts.py
	$(PY) benchmarks/bench_runs.py
	$(PY) benchmarks/bench_flood.py
	$(PY) benchmarks/bench_legacy.py
	$(PY) benchmarks/bench_datapath.py
	$(PY) benchmarks/bench_history.py
	$(PY) benchmarks/bench_web.py

# make chaos: 60 s of random SIGKILLs and SIGSTOPs on damicm; SEED=N replays one, RUNS=N runs N seeds in a row.
SEED ?=
RUNS ?= 1
chaos: $(STAMP)
	$(PY) -m tests.chaos --seconds 60 --runs $(RUNS) $(if $(SEED),--seed $(SEED))

fuzz: $(STAMP)
	ORBIT_FUZZ_EXAMPLES=5000 $(PY) -m pytest -q tests/test_fuzz.py

clean:
	rm -rf $(VENV) var *.egg-info
