"""The historian in a real process: published numbers recorded and answered by `history`, through a SIGKILL."""

import os
import signal
import subprocess
import sys

import pytest

from clients.client import Client
from runcontrol import process
from runcontrol.errors import Refused
from tests.helpers import ROOT, env_for_children, pump


def start_historian(path):
    with open(path.parent / "historian.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "clients.historian", "--experiment", str(path)], cwd=ROOT,
                                env=env_for_children(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


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
            for i in range(20, 30):  # while it is away: only the last, retained by the server, can come back
                cryo.publish("values", {"temperature": 140.0 + i}, retain=True)
                cryo.poll(0.05)
            historian = start_historian(experiment_path)
            pump([op, cryo], lambda: "historian" in {c["name"] for c in op.request(None, "_list")}, 30)
            subscribed(op, cryo)
            for i in range(30, 35):
                cryo.publish("values", {"temperature": 140.0 + i}, retain=True)
                cryo.poll(0.05)
            expected = {140.0 + i for i in (*range(20), 29, *range(30, 35))}  # 20 to 28 never seen: a gap
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
