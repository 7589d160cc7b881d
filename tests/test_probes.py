"""Liveness probes: programs that are not bus clients, replaced when their probe fails, through real processes.

The supervisor is driven in this process (as in test_supervisor.py) over real children and a real clock;
the same through the run controller and the server (`System`), where the reason reaches `program_exited`
and `status`. On another host's supervisord: tests/test_hosts.py.
"""

import os
import signal
import sys

import psutil
import pytest

import experiments
from runcontrol.states import ChildState as S
from runcontrol.supervision.supervisor import Supervisor
from tests.helpers import PROGRAMS, System, free_port, helper, wait_until, write_experiment

FAST = {"period": 0.3, "failures": 2, "initial_delay": 1}


@pytest.fixture
def supervise(tmp_path):
    made = []

    def make(programs):
        raw = {"name": "probes", "paths": {"logs": "log", "data": "data", "state": "state"}, "programs": programs}
        events = []
        sup = Supervisor(experiments.from_dict(raw, tmp_path / "probes.json"),
                         emit=lambda kind, **fields: events.append((kind, fields)))
        sup.events = events
        made.append(sup)
        sup.start_all()
        return sup
    yield make
    for sup in made:
        sup.stop_all()
        drive(sup, sup.all_stopped, 30)
        sup.close()


def drive(sup, predicate, timeout_s=30.0):
    def step():
        sup.process(0.05)
        return predicate()
    return wait_until(step, timeout_s, interval_s=0, what=predicate)


def asked(tmp_path):
    """How many probes the program saw (an exec probe leaves its mark in a file)."""
    log, marks = tmp_path / "log" / "p.log", tmp_path / "exec-probes"
    return (log.read_text().count("asked") if log.exists() else 0) + \
        (len(marks.read_text().splitlines()) if marks.exists() else 0)


def probed(port, liveness, timeout=1.0):
    return {"cmd": [sys.executable, str(PROGRAMS / "probed.py"), str(port)],
            "liveness": {**FAST, "timeout": timeout, **liveness}}


def sick(tmp_path, pid):
    (tmp_path / "SICK").write_text(str(pid))


HANGS = {
    # kind: (its liveness, how the program is made to hang or fail, what the reason says)
    "tcp": ({"tcp": "127.0.0.1:{port}"}, lambda path, pid: os.kill(pid, signal.SIGUSR1), "Connect call failed"),
    "tcp with send": ({"tcp": "127.0.0.1:{port}", "send": "status\n", "expect": "ok"},
                      lambda path, pid: os.kill(pid, signal.SIGSTOP), "no answer within 1 s"),
    "http, stopped": ({"http": "http://127.0.0.1:{port}/"}, lambda path, pid: os.kill(pid, signal.SIGSTOP),
                      "no answer within 1 s"),
    "http, failing": ({"http": "http://127.0.0.1:{port}/"}, sick, "HTTP 500 Sick"),
    "exec": ({"exec": ["sh", "-c", "echo >> exec-probes; test ! -e SICK || { echo sick since pid $(cat SICK) >&2; exit 3; }"]}, sick,
             "exited with status 3: sick since pid"),
}


@pytest.mark.parametrize("kind", HANGS)
def test_a_program_whose_probe_fails_is_replaced_with_the_reason(supervise, tmp_path, kind):
    liveness, hang, reason = HANGS[kind]
    port = free_port()
    liveness = {k: v.replace("{port}", str(port)) if isinstance(v, str) else v for k, v in liveness.items()}
    sup = supervise({"p": probed(port, liveness, timeout=5.0 if kind == "exec" else 1.0)})
    drive(sup, lambda: sup.programs["p"].state is S.RUNNING)
    pid = sup.programs["p"].pid
    drive(sup, lambda: asked(tmp_path) >= 4)  # probed several times, and left alone while it answers
    assert sup.programs["p"].pid == pid and sup.programs["p"].restarts == 0

    hang(tmp_path, pid)
    exited = drive(sup, lambda: next((f for k, f in sup.events if k == "program_exited" and f["pid"] == pid), None))
    (tmp_path / "SICK").unlink(missing_ok=True)
    assert f"liveness probe {kind.split(',')[0].split(' ')[0]}" in exited["reason"], exited
    assert "failed 2 time(s) in a row" in exited["reason"] and reason in exited["reason"], exited
    drive(sup, lambda: sup.programs["p"].state is S.RUNNING and sup.programs["p"].pid not in (None, pid))
    assert sup.programs["p"].restarts == 1
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert reason in sup.describe("p")["last_exit"]["reason"]


def test_a_probe_of_a_healthy_program_keeps_it(supervise, tmp_path):
    port = free_port()
    sup = supervise({"p": probed(port, {"tcp": f"127.0.0.1:{port}", "send": "status\n", "expect": "ok"})})
    drive(sup, lambda: asked(tmp_path) >= 10)
    assert sup.programs["p"].restarts == 0 and not [k for k, _ in sup.events if k == "program_exited"]


def test_a_stopped_program_is_replaced_through_the_run_controller(tmp_path):
    port = free_port()
    path = write_experiment(tmp_path, "probes", programs={
        "board": helper("probed.py", port, liveness={**FAST, "tcp": f"127.0.0.1:{port}", "send": "status\n",
                                                      "expect": "ok"})})
    system = System(path)
    try:
        pid = system.wait_state("board", "RUNNING")["pid"]
        wait_until(lambda: (tmp_path / "log" / "board.log").read_text().count("asked") >= 2, 30)
        os.kill(pid, signal.SIGSTOP)
        exited = system.wait_event("event.program_exited", program="board", pid=pid)
        assert "liveness probe tcp 127.0.0.1" in exited["reason"] and "no answer within 1 s" in exited["reason"]
        info = system.wait_state("board", "RUNNING", 30)
        assert info["pid"] != pid and info["restarts"] == 1
        assert "liveness probe" in info["last_exit"]["reason"]
    finally:
        system.close()
