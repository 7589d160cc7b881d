"""The supervision backend interface, held against the local backend; the supervisor with one backend per host."""

import os
import select
import signal
import sys

import psutil
import pytest

import experiments
from runcontrol.states import ChildState as S
from runcontrol.supervision.backends.base import Exited, Output
from runcontrol.supervision.backends.local import LocalBackend
from runcontrol.supervision.supervisor import Supervisor
from tests.helpers import PROGRAMS, wait_until


def spec_of(tmp_path, name, *argv, **fields):
    raw = {"name": "be", "paths": {"logs": "log", "data": "data", "state": "state"},
           "programs": {name: {"cmd": [sys.executable, *map(str, argv)], **fields}}}
    return experiments.from_dict(raw, tmp_path / "be.json").programs[0]


def events_until(backend, predicate, timeout_s=10.0):
    seen = []

    def step():
        select.select([backend.fileno()], [], [], 0.05)
        seen.extend(backend.events())
        return predicate(seen)
    wait_until(step, timeout_s, interval_s=0)
    return seen


@pytest.fixture
def backend():
    made = LocalBackend()
    yield made
    for handle in list(made._running.values()):  # what a failed test left running
        made.kill_now(handle)
    made.close()


def test_output_then_exit_come_as_events(backend, tmp_path):
    handle = backend.spawn(spec_of(tmp_path, "a", PROGRAMS / "crash_after.py", 0, 3), dict(os.environ))
    seen = events_until(backend, lambda s: any(isinstance(e, Exited) for e in s))
    output = b"".join(e.data for e in seen if isinstance(e, Output))
    assert b"up, exiting in 0 s" in output and b"exiting now" in output
    exited = seen[-1]
    assert (exited.handle, exited.code, exited.signal) == (handle, 3, None)


def test_signal_reaches_the_group_and_kill_now_reaps(backend, tmp_path):
    pids = tmp_path / "pids"
    handle = backend.spawn(spec_of(tmp_path, "f", PROGRAMS / "spawn_family.py", pids), dict(os.environ))
    family = wait_until(lambda: pids.exists() and [int(p) for p in pids.read_text().split()])
    os.kill(handle.pid, signal.SIGSTOP)
    backend.signal(handle, signal.SIGTERM)  # a stopped program hears it too (SIGCONT follows)
    seen = events_until(backend, lambda s: any(isinstance(e, Exited) for e in s))
    assert seen[-1].signal == signal.SIGTERM
    for pid in family:
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5)
    sleeper = backend.spawn(spec_of(tmp_path, "s", PROGRAMS / "crash_after.py", 600), dict(os.environ))
    last = backend.kill_now(sleeper)
    assert isinstance(last[-1], Exited) and last[-1].signal == signal.SIGKILL
    assert not psutil.pid_exists(sleeper.pid)


def test_figures_and_leftovers_after_a_crash_of_the_controller(backend, tmp_path):
    handle = backend.spawn(spec_of(tmp_path, "s", PROGRAMS / "crash_after.py", 600), dict(os.environ))
    events_until(backend, lambda s: any(isinstance(e, Output) and b"up" in e.data for e in s))  # Python is up
    cpu, rss = backend.figures(handle)
    assert cpu is not None and rss > 1_000_000
    record = backend.record(handle)
    assert (record["host"], record["pid"]) == ("local", handle.pid)
    reused = {"other": {"host": "local", "pid": os.getpid(), "started": 1.0}}  # a pid taken by another process
    assert backend.stop_leftovers(reused) == [] and psutil.pid_exists(os.getpid())
    assert backend.stop_leftovers({"s": record}) == [f"s (pid {handle.pid})"]
    seen = events_until(backend, lambda s: any(isinstance(e, Exited) for e in s))
    assert seen[-1].signal == signal.SIGKILL


class SecondHost(LocalBackend):
    """Processes of this machine standing in for those of host `daq2`: what matters is who is asked."""

    host = "daq2"

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawn(self, spec, env):
        self.spawned.append(spec.name)
        return super().spawn(spec, env)


def test_the_supervisor_runs_each_program_through_its_hosts_backend(tmp_path):
    raw = {"name": "two", "paths": {"logs": "log", "data": "data", "state": "state"},
           "hosts": {"daq2": {"supervisord": "http://127.0.0.1:9001/RPC2"}},
           "programs": {"here": {"cmd": [sys.executable, str(PROGRAMS / "crash_after.py"), "600"]},
                        "there": {"cmd": [sys.executable, str(PROGRAMS / "crash_after.py"), "600"], "host": "daq2"}}}
    other = SecondHost()
    sup = Supervisor(experiments.from_dict(raw, tmp_path / "two.json"), {"local": LocalBackend(), "daq2": other})
    try:
        sup.start_all()
        wait_until(lambda: sup.process(0.05) or all(p.state is S.RUNNING for p in sup.programs.values()), 10, 0)
        assert other.spawned == ["there"]
        assert sup.describe("there")["host"] == "daq2" and sup.describe("there")["rss"] > 0
        assert set(sup.records()) == {"here", "there"} and sup.records()["there"]["host"] == "daq2"
        sup.stop_all()
        wait_until(lambda: sup.process(0.05) or sup.all_stopped(), 10, 0)
    finally:
        sup.close()
