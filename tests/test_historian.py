"""The historian in a real process: published numbers recorded and answered by `history`, through SIGKILLs and
SIGSTOPs, nothing lost that the server's replay still held; the experiment's retention, minute buckets after it."""

import collections
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest

from runcontrol.client.client import Client
from clients.historystore import Store
from runcontrol import process
from runcontrol.errors import Refused, RequestFailed
from tests.helpers import ROOT, ServerProcess, env_for_children, pump, write_experiment

# The test is a minute of kills: ORBIT_HISTORIAN_KILL_S=60. `make test` runs 24 s (five or six kills).
KILL_TEST_S = float(os.environ.get("ORBIT_HISTORIAN_KILL_S", "24"))
RATE_HZ = 20


def start_historian(path, name="historian", db=None):
    argv = [sys.executable, "-m", "clients.historian", "--experiment", str(path), "--name", name]
    with open(path.parent / f"{name}.log", "ab") as log:
        return subprocess.Popen([*argv, *(["--db", str(db)] if db else [])], cwd=ROOT, env=env_for_children(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stored(db, name="cryo.values.n"):
    """How many times each value of `name` is in the history file."""
    if not db.exists():
        return collections.Counter()
    with closing(sqlite3.connect(db, timeout=10)) as history:
        try:
            rows = history.execute("SELECT value FROM fine JOIN names USING (id) WHERE name = ?", (name,)).fetchall()
        except sqlite3.OperationalError:   # the historian has not made its tables yet
            return collections.Counter()
    return collections.Counter(value for (value,) in rows)


def publish_at_20_hz(cryo, first, seconds, between=lambda: None):
    """Publish cryo.values.n = first, first + 1, ... 20 times a second for `seconds`, calling `between` after
    each; the next n."""
    n, start = first, time.monotonic()
    while time.monotonic() < start + seconds:
        cryo.publish("values", {"n": n})
        n += 1
        due = start + (n - first) / RATE_HZ
        while (left := due - time.monotonic()) > 0:
            cryo.poll(left)
        between()
    return n


def caught_up(cryo, name="historian"):
    """Publish a marker until historian `name` runs and has caught up with the server's replay."""
    def ready():
        cryo.publish("marker", 1)
        try:
            return not cryo.request(name, "status")["catching_up"]
        except RequestFailed:   # not registered yet
            return False
    pump([cryo], ready, 30)


def complete(db, published):
    """What `db` misses of 0 .. published - 1, and what it holds more than once."""
    history = stored(db)
    return sorted(set(range(published)) - set(history)), {v: c for v, c in history.items() if c > 1}


def subscribed(op, cryo):
    """Wait until the historian hears the event stream: a marker published until it is recorded."""
    def heard():
        cryo.publish("marker", 1)
        return history(op, name="cryo.marker").get("cryo.marker")
    pump([op, cryo], heard, 20)


def recorded(op):
    """The temperatures recorded (each bucket's min and max: buckets of 12 ms hold one or two values at most)."""
    buckets = history(op, name="cryo.values.temperature").get("cryo.values.temperature", [])
    return {value for bucket in buckets for value in bucket[1:3]}


def history(op, **ask):
    return op.request("historian", "history", since=-120, points=10000, **ask)  # buckets of 12 ms


def test_published_numbers_are_recorded_answered_and_survive_a_killed_historian(server, experiment_path):
    historian = start_historian(experiment_path)
    try:
        with Client("cryo", server=server.router) as cryo, Client("op", server=server.router) as op:
            cryo.connect(10)
            op.connect(10)
            pump([op, cryo], lambda: "historian" in {c["name"] for c in op.request(None, "_list")}, 30)
            subscribed(op, cryo)
            for i in range(20):
                cryo.publish("values", {"temperature": 140.0 + i, "ok": True, "label": "ccd"}, retain=True)
                cryo.poll(0.05)
            pump([op, cryo], lambda: recorded(op) == {140.0 + i for i in range(20)}, 20)
            assert list(history(op, name="cryo.")) == ["cryo.marker", "cryo.values.temperature"]  # no bool, no text
            with pytest.raises(Refused) as refused:
                op.request("historian", "history", name="cryo.", points=0)
            assert refused.value.code == "bad_field"

            os.kill(historian.pid, signal.SIGKILL)
            historian.wait(10)
            for i in range(20, 30):  # while it is away: taken back from the server's replay when it is again
                cryo.publish("values", {"temperature": 140.0 + i}, retain=True)
                cryo.poll(0.05)
            historian = start_historian(experiment_path)
            pump([op, cryo], lambda: "historian" in {c["name"] for c in op.request(None, "_list")}, 30)
            subscribed(op, cryo)
            for i in range(30, 35):
                cryo.publish("values", {"temperature": 140.0 + i}, retain=True)
                cryo.poll(0.05)
            expected = {140.0 + i for i in range(35)}  # no gap
            pump([op, cryo], lambda: recorded(op) >= expected, 20)
            assert recorded(op) == expected
            table = subprocess.run([sys.executable, "send.py", "--experiment", str(experiment_path), "--csv",
                                    "historian", "history", "name=cryo.values.temperature", "since=-120",
                                    "points=10000"], cwd=ROOT, env=env_for_children(), capture_output=True, text=True,
                                   timeout=60)
            lines = table.stdout.splitlines()
            assert table.returncode == 0 and lines[0] == "name,ts,min,max,mean", table.stderr
            assert {float(line.split(",")[2]) for line in lines[1:]} <= expected and len(lines) > 20
            status = subprocess.run([sys.executable, "send.py", "--experiment", str(experiment_path), "--csv",
                                     "historian", "status"], cwd=ROOT, env=env_for_children(), capture_output=True,
                                    text=True, timeout=60)
            assert status.returncode == 2 and "the answer is not a table" in status.stderr
            terminal = {**env_for_children(), "COLUMNS": "100", "LINES": "30"}
            drawn = subprocess.run([sys.executable, "status.py", "--experiment", str(experiment_path), "--plot",
                                    "cryo.values.temperature", "--since", "120"], cwd=ROOT, env=terminal,
                                   capture_output=True, text=True, timeout=60)
            assert drawn.returncode == 0, drawn.stderr
            assert "cryo.values.temperature" in drawn.stdout and len(drawn.stdout.splitlines()) >= 20
            nothing = subprocess.run([sys.executable, "status.py", "--experiment", str(experiment_path), "--plot",
                                      "cryo.values.pressure"], cwd=ROOT, env=terminal, capture_output=True,
                                     text=True, timeout=60)
            assert nothing.returncode == 1
            assert "no values of cryo.values.pressure in the last 3600 s" in nothing.stderr
    finally:
        process.stop_group(historian, 10)


@pytest.mark.timeout(KILL_TEST_S + 90)
def test_a_historian_killed_every_3_to_5_s_while_numbers_flow_records_every_value_once(server, tmp_path):
    seed = int(os.environ.get("ORBIT_HISTORIAN_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    db = tmp_path / "history.sqlite"
    historian = [start_historian(server.path, db=db)]
    kills = [time.monotonic() + rng.uniform(3, 5)]

    def kill_when_due():
        if time.monotonic() >= kills[-1]:
            process.signal_group(historian[0].pid, signal.SIGKILL)
            historian[0].wait(10)
            historian[0] = start_historian(server.path, db=db)
            kills.append(time.monotonic() + rng.uniform(3, 5))
    try:
        with Client("cryo", server=server.router) as cryo:
            cryo.connect(10)
            published = publish_at_20_hz(cryo, 0, KILL_TEST_S, kill_when_due)
            pump([cryo], lambda: not complete(db, published)[0], 30)
            missing, duplicated = complete(db, published)
            assert (missing, duplicated) == ([], {}), f"seed {seed}, {len(kills) - 1} kills"
            assert len(kills) - 1 >= KILL_TEST_S // 5
    finally:
        process.stop_group(historian[0], 10)


@pytest.mark.timeout(150)
def test_historians_away_for_30_s_stopped_or_killed_have_no_gap(server, tmp_path):
    dbs = {how: tmp_path / f"{how}.sqlite" for how in ("stopped", "killed")}
    historians = {how: start_historian(server.path, f"historian-{how}", db) for how, db in dbs.items()}
    try:
        with Client("cryo", server=server.router) as cryo:
            cryo.connect(10)
            published = publish_at_20_hz(cryo, 0, 2)
            pump([cryo], lambda: all(not complete(db, published)[0] for db in dbs.values()), 30)
            process.signal_group(historians["stopped"].pid, signal.SIGSTOP)
            process.signal_group(historians["killed"].pid, signal.SIGKILL)
            historians["killed"].wait(10)
            published = publish_at_20_hz(cryo, published, 30)
            historians["killed"] = start_historian(server.path, "historian-killed", dbs["killed"])
            process.signal_group(historians["stopped"].pid, signal.SIGCONT)
            published = publish_at_20_hz(cryo, published, 2)
            pump([cryo], lambda: all(not complete(db, published)[0] for db in dbs.values()), 30)
            assert {how: complete(db, published) for how, db in dbs.items()} == \
                {"stopped": ([], {}), "killed": ([], {})}
    finally:
        for proc in historians.values():
            process.stop_group(proc, 10)


def test_a_historian_away_longer_than_the_replay_takes_back_the_retained_values_and_logs_the_gap(tmp_path):
    path = write_experiment(tmp_path, "short-replay", replay={"seconds": 1})
    server = ServerProcess(path).start()
    db = tmp_path / "history.sqlite"
    historian = start_historian(path, db=db)
    try:
        with Client("cryo", server=server.router) as cryo:
            caught_up(cryo)
            cryo.publish("values", {"n": 0})
            pump([cryo], lambda: stored(db), 30)
            process.signal_group(historian.pid, signal.SIGKILL)
            historian.wait(10)
            for n, retain in ((1, False), (2, True), (3, False)):
                cryo.publish("values", {"n": n}, retain=retain)
            pump([cryo], lambda: cryo.request(None, "_replay", since=0)["items"] == [], 10)   # out of the window
            historian = start_historian(path, db=db)
            caught_up(cryo)
            cryo.publish("values", {"n": 4})
            pump([cryo], lambda: 4.0 in stored(db), 30)
            assert stored(db) == {0.0: 1, 2.0: 1, 4.0: 1}   # 2 was retained; 1 and 3 are a gap
            assert "no longer in the server's replay" in (tmp_path / "historian.log").read_text()
    finally:
        process.stop_group(historian, 10)
        server.stop()


def test_a_historian_that_fell_behind_takes_what_the_stream_dropped_for_it_from_the_replay(tmp_path):
    roomy = {"topic_bytes": 64 << 20, "max_bytes": 128 << 20}
    # It stays registered while stopped; the publisher may send as fast as it can.
    path = write_experiment(tmp_path, "behind", timeout=60.0, replay=roomy, client_rate=1e7)
    server = ServerProcess(path).start()
    db = tmp_path / "history.sqlite"
    historian = start_historian(path, db=db)
    try:
        with Client("cryo", server=server.router) as cryo:
            caught_up(cryo)
            process.signal_group(historian.pid, signal.SIGSTOP)
            for n in range(100001):   # more than the server queues for a listener that does not read
                cryo.publish("values", {"n": n})
            cryo.request(None, "_status", timeout=30)   # answered once the server has published them all
            process.signal_group(historian.pid, signal.SIGCONT)
            # Numbers flow on: the first that reaches it shows what is missing.
            pump([cryo], lambda: cryo.publish("marker", 1) or not complete(db, 100001)[0], 60)
            assert complete(db, 100001)[1] == {}
            assert "asking the server's replay for what is between" in (tmp_path / "historian.log").read_text()
    finally:
        process.stop_group(historian, 10)
        server.stop()


def test_a_historian_whose_server_restarts_records_every_value_published_to_either_once(server, tmp_path):
    db = tmp_path / "history.sqlite"
    historian = start_historian(server.path, db=db)
    try:
        with Client("cryo", server=server.router) as cryo:
            caught_up(cryo)
            published = publish_at_20_hz(cryo, 0, 2)
            process.signal_group(historian.pid, signal.SIGSTOP)   # it meets the new server only after a while
            server.pin_ports()
            server.kill()
            server.start()
            published = publish_at_20_hz(cryo, published, 2)
            process.signal_group(historian.pid, signal.SIGCONT)
            published = publish_at_20_hz(cryo, published, 2)
            pump([cryo], lambda: not complete(db, published)[0], 30)
            assert complete(db, published)[1] == {}
    finally:
        process.stop_group(historian, 10)


DAY = 86400.0


def test_a_range_older_than_the_experiments_retention_is_answered_from_minute_buckets(tmp_path):
    path = write_experiment(tmp_path, "retention")
    description = json.loads(path.read_text())
    description["history"] = {"retention_days": 1}
    path.write_text(json.dumps(description))
    now = time.time()
    # Ten minutes of one value a second each: within the retention, past it, past ten times it.
    recent, old, gone = (math.floor((now - ago) / 60) * 60 for ago in (3600, 2 * DAY, 11 * DAY))
    (tmp_path / "state").mkdir()
    store = Store(tmp_path / "state" / "history.sqlite")
    for start in (recent, old, gone):
        for second in range(600):
            store.add("x", start + second, float(second % 60))
    store.close()
    server = ServerProcess(path).start()
    historian = start_historian(path)
    try:
        with Client("op", server=server.router) as op:
            op.connect(10)

            def ten_minutes_from(start):   # asked for a bucket a second
                return op.request("historian", "history", name="x", since=start, until=start + 600, points=600)["x"]
            pump([op], lambda: "historian" in {c["name"] for c in op.request(None, "_list")}, 30)
            assert [b[1:] for b in ten_minutes_from(recent)] == [[float(s % 60)] * 3 for s in range(600)]
            assert [b[1:] for b in ten_minutes_from(old)] == [[0.0, 59.0, 29.5]] * 10   # one bucket a minute
            assert ten_minutes_from(gone) == []
    finally:
        process.stop_group(historian, 10)
        server.stop()
