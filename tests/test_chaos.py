"""The short chaos run: damicm under random SIGKILLs and SIGSTOPs for 20 s while a short sequence is taken (a run
at each of three rates; the long run, with 30, is `make chaos`), its run participants in three stages, one of them
deferring each end with progress and SIGKILLed at least once while it does: nothing lost, nobody forgotten, no
transition stuck, no run number twice, every run that ended complete in the run log and the run catalog.

The seed is printed, and taken from $ORBIT_CHAOS_SEED when set, so a failure can be replayed:
`ORBIT_CHAOS_SEED=N make test` or `python -m tests.chaos --seed N --seconds 20 --takes 1`.
"""

import os
import random

import pytest

from tests.chaos import chaos

SECONDS = 20.0
TAKES = 1


@pytest.mark.timeout(420)
def test_nothing_lost_and_nobody_forgotten_when_processes_die_at_random(tmp_path):
    seed = int(os.environ.get("ORBIT_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"chaos seed {seed}: replay with ORBIT_CHAOS_SEED={seed} or python -m tests.chaos --seed {seed} "
          f"--seconds {SECONDS:g} --takes {TAKES}")
    report = chaos(seed, SECONDS, tmp_path, takes=TAKES)
    assert report["problems"] == [], f"seed {seed}: {report}"
    assert report["requests"] > 0 and report["answers"].get("ok", 0) > 0 and sum(report["faults"].values()) > 0
    assert report["killed_deferring"] and report["settled"]
