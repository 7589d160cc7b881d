"""The supervisor over real child processes, driven in this process (no server: programs without client names)."""

import os
import signal
import sys
import time

import psutil
import pytest

import experiments
from runcontrol.states import ChildState as S
from runcontrol.supervision.supervisor import Supervisor
from tests.helpers import PROGRAMS, wait_until


def program(*args, **fields):
    return {"cmd": [sys.executable, str(PROGRAMS / args[0]), *map(str, args[1:])], **fields}


class ManualClock:
    """The supervisor's clock seam: time moves only when a test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def supervise(tmp_path):
    """supervise({name: program}) -> a started Supervisor collecting its events; stopped at the end."""
    made = []

    def make(programs, start=True, clock=time.monotonic, **top):
        raw = {"name": "sup", "paths": {"logs": "log", "data": "data", "state": "state"},
               "programs": programs, **top}
        events = []
        sup = Supervisor(experiments.from_dict(raw, tmp_path / "sup.json"),
                         emit=lambda kind, **fields: events.append((kind, fields)), clock=clock)
        sup.events = events
        made.append(sup)
        if start:
            sup.start_all()
        return sup
    yield make
    for sup in made:
        sup.stop_all()
        if isinstance(sup.clock, ManualClock):  # time moves as it would, so stop timeouts still come
            drive(sup, lambda: sup.clock.advance(0.05) or sup.all_stopped(), 15)
        drive(sup, sup.all_stopped, 15)
        sup.close()


def drive(sup, predicate, timeout_s=10.0):
    """Run the supervisor's loop until `predicate` holds."""
    def step():
        sup.process(0.05)
        return predicate()
    return wait_until(step, timeout_s, interval_s=0, what=predicate)


def kinds(sup, name):
    return [kind for kind, fields in sup.events if fields.get("program") == name]


def test_program_started_comes_up_and_logs_stamped_lines(supervise, tmp_path):
    sup = supervise({"a": program("crash_after.py", 60)})
    drive(sup, lambda: sup.programs["a"].state is S.RUNNING)
    status = sup.describe("a")
    assert status["pid"] and psutil.pid_exists(status["pid"])
    text = wait_until(lambda: "up, exiting in 60 s" in (tmp_path / "log" / "a.log").read_text()
                      and (tmp_path / "log" / "a.log").read_text())
    line = next(l for l in text.splitlines() if "up, exiting" in l)
    assert line[:4].isdigit() and line[10] == "T" and line.split(" ", 1)[0].endswith("Z")
    env = psutil.Process(status["pid"]).environ()
    assert env["ORBIT_NAME"] == "a"


def test_a_crash_reports_its_exit_code_and_the_last_lines_of_its_log(supervise):
    sup = supervise({"a": program("crash_after.py", 0, 1, backoff={"initial": 0.3})})
    drive(sup, lambda: "program_exited" in kinds(sup, "a"))
    exited = next(f for k, f in sup.events if k == "program_exited")
    assert exited["code"] == 1 and exited["signal"] is None
    assert "exiting now" in exited["tail"][-2]


def crash_loop(sup, clock, name, runs):
    """Kill program `name` once per entry of `runs`, after the clock moved by that run's length.

    Exits happen only when the test kills, so the manual clock alone decides how long each run
    lasted. Returns the delay of each restart (None where none came: FATAL).
    """
    delays = []
    for run_s in runs:
        program = sup.programs[name]
        drive(sup, lambda: program.state is S.FATAL or (program.state is S.STARTING and program.proc is not None))
        if program.state is S.FATAL:
            delays.append(None)
            continue
        clock.advance(run_s)
        sup.process(0)  # a run past the start grace (1 s) came up
        exits = kinds(sup, name).count("program_exited")
        os.kill(program.pid, signal.SIGKILL)
        drive(sup, lambda: kinds(sup, name).count("program_exited") > exits)
        restarting = [f for k, f in sup.events if k == "program_restarting" and f["program"] == name]
        delays.append(restarting[-1]["delay"] if len(restarting) > len(delays) else None)
        if delays[-1]:
            clock.advance(delays[-1])  # the retry comes due
    return delays


# Each case: the program's backoff and intensity, how long each run lasted, the delays expected.
BACKOFF_CASES = {
    "failed starts back off exponentially up to max": (
        {"backoff": {"initial": 0.1, "factor": 2, "max": 0.4}, "max_restarts": 50},
        [0, 0, 0, 0, 0], [0.1, 0.2, 0.4, 0.4, 0.4]),
    "a good run is replaced at once, then failures back off": (
        {"backoff": {"initial": 0.3, "factor": 2, "max": 5}, "max_restarts": 50},
        [5, 0, 0, 0], [0, 0.3, 0.6, 1.2]),
    "a good run after failures clears the streak": (
        {"backoff": {"initial": 0.5, "factor": 3, "max": 10}, "max_restarts": 50},
        [0, 0, 30, 0], [0.5, 1.5, 0, 0.5]),
    "a factor of 1 keeps the delay": (
        {"backoff": {"initial": 0.2, "factor": 1, "max": 10}, "max_restarts": 50},
        [0, 0, 0], [0.2, 0.2, 0.2]),
}


@pytest.mark.parametrize("case", BACKOFF_CASES)
def test_backoff_follows_the_clock(supervise, case):
    fields, runs, expected = BACKOFF_CASES[case]
    clock = ManualClock()
    sup = supervise({"a": program("crash_after.py", 600, **fields)}, clock=clock)
    assert crash_loop(sup, clock, "a", runs) == expected


# Each case: max_restarts, restart_window, how long each run lasted, whether it ends FATAL.
INTENSITY_CASES = {
    "more than max within the window is FATAL": (2, 30, [0, 0, 0], True),
    "max within the window is allowed": (3, 30, [0, 0, 0], False),
    "restarts spread beyond the window never add up": (2, 10, [0, 6, 6, 6, 6], False),
    "the window is counted at run time, not from the start": (2, 10, [0, 12, 0, 0], True),
}


@pytest.mark.parametrize("case", INTENSITY_CASES)
def test_restart_intensity_follows_the_clock(supervise, case):
    max_restarts, window, runs, fatal = INTENSITY_CASES[case]
    clock = ManualClock()
    sup = supervise({"bad": program("crash_after.py", 600, max_restarts=max_restarts, restart_window=window,
                                    backoff={"initial": 0.01, "factor": 1, "max": 0.01})}, clock=clock)
    crash_loop(sup, clock, "bad", runs)
    drive(sup, lambda: sup.programs["bad"].state in (S.FATAL, S.BACKOFF, S.STARTING, S.RUNNING))
    assert (sup.programs["bad"].state is S.FATAL) is fatal
    if fatal:
        event = next(f for k, f in sup.events if k == "program_fatal")
        assert f"within {window} s (at most {max_restarts})" in event["reason"]


def test_too_many_restarts_make_it_fatal_and_others_go_on(supervise):
    clock = ManualClock()
    sup = supervise({"bad": program("crash_after.py", 600, max_restarts=2, restart_window=30,
                                    backoff={"initial": 0.05, "max": 0.05}),
                     "good": program("crash_after.py", 600)}, clock=clock)
    assert crash_loop(sup, clock, "bad", [0, 0, 0]) == [0.05, 0.05, None]
    assert sup.programs["bad"].state is S.FATAL
    fatal = next(f for k, f in sup.events if k == "program_fatal")
    assert "needed 3 restarts within 30 s (at most 2)" in fatal["reason"]
    assert kinds(sup, "bad").count("program_started") == 3
    good = sup.programs["good"]
    assert good.proc is not None and good.restarts == 0 and "program_exited" not in kinds(sup, "good")
    sup.start("bad")  # an operator's start clears the count
    assert crash_loop(sup, clock, "bad", [0, 0]) == [0.05, 0.05]
    assert sup.programs["bad"].state is not S.FATAL


@pytest.mark.parametrize("policy, code, restarted", [
    ("always", 0, True), ("always", 3, True), ("on-failure", 3, True),
    ("on-failure", 0, False), ("never", 3, False),
])
def test_restart_policy(supervise, policy, code, restarted):
    sup = supervise({"a": program("crash_after.py", 0, code, restart=policy, backoff={"initial": 0.05})})
    drive(sup, lambda: "program_exited" in kinds(sup, "a"))
    if restarted:
        drive(sup, lambda: kinds(sup, "a").count("program_started") >= 2)
    else:
        drive(sup, lambda: sup.programs["a"].state is S.EXITED)
        sup.process(0.3)
        assert kinds(sup, "a").count("program_started") == 1


def test_stop_escalates_to_sigkill_and_reaps_the_whole_family(supervise, tmp_path):
    pids_file = tmp_path / "family"
    sup = supervise({"stubborn": program("ignore_sigterm.py", stop_timeout=0.5),
                     "family": program("spawn_family.py", pids_file)})
    drive(sup, lambda: sup.programs["stubborn"].state is S.RUNNING and pids_file.exists())
    family = [int(p) for p in pids_file.read_text().split()]
    stubborn = sup.programs["stubborn"].pid
    sup.stop_all()
    drive(sup, sup.all_stopped, 10)
    exited = {f["program"]: f for k, f in sup.events if k == "program_exited"}
    assert exited["stubborn"]["signal"] == "SIGKILL"
    assert exited["family"]["signal"] == "SIGTERM"  # it stopped when asked
    log_text = (tmp_path / "log" / "stubborn.log").read_text()
    assert "stopping with SIGTERM" in log_text and "did not stop in time: SIGKILL" in log_text
    for pid in [stubborn, *family]:
        wait_until(lambda: not alive(pid), 5, what=f"pid {pid} gone")


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_dependencies_start_in_order_and_stop_in_reverse(supervise):
    sup = supervise({"c": program("crash_after.py", 60, depends_on=["b"]),
                     "b": program("crash_after.py", 60, depends_on=["a"]),
                     "a": program("crash_after.py", 60)})
    assert [name for name, p in sup.programs.items() if p.proc] == ["a"]
    drive(sup, lambda: sup.programs["c"].state is S.RUNNING, 15)
    started = [f["program"] for k, f in sup.events if k == "program_started"]
    assert started == ["a", "b", "c"]
    sup.stop_all()
    drive(sup, sup.all_stopped)
    assert [f["program"] for k, f in sup.events if k == "program_exited"] == ["c", "b", "a"]


def test_a_command_that_cannot_start_backs_off_with_the_reason(supervise):
    sup = supervise({"ghost": {"cmd": ["/no/such/program"], "backoff": {"initial": 0.05}}})
    exited = next(f for k, f in sup.events if k == "program_exited")
    assert "No such file" in exited["error"]
    assert sup.programs["ghost"].state is S.BACKOFF


def test_a_program_stopped_in_backoff_forgets_its_retry_and_starts_at_once_when_asked(supervise):
    clock = ManualClock()
    sup = supervise({"ghost": {"cmd": ["/no/such/program"], "backoff": {"initial": 5}}}, clock=clock)
    assert sup.programs["ghost"].state is S.BACKOFF and sup.next_due() == clock.now + 5
    sup.stop("ghost")
    assert sup.programs["ghost"].state is S.STOPPED and sup.next_due() is None   # its retry was cancelled
    sup.start("ghost")   # at once: no retry of before is waited for
    assert kinds(sup, "ghost").count("program_exited") == 2 and sup.programs["ghost"].state is S.BACKOFF


def test_reload_diff_starts_stops_and_restarts_only_what_changed(supervise, tmp_path):
    sup = supervise({"same": program("crash_after.py", 60), "changed": program("crash_after.py", 60),
                     "gone": program("crash_after.py", 60)})
    drive(sup, lambda: all(p.state is S.RUNNING for p in sup.programs.values()))
    same, changed = sup.programs["same"].pid, sup.programs["changed"].pid
    raw = {"name": "sup", "paths": {"logs": "log", "data": "data", "state": "state"},
           "programs": {"same": program("crash_after.py", 60), "changed": program("crash_after.py", 61),
                        "new": program("crash_after.py", 60)}}
    diff = sup.apply(experiments.from_dict(raw, tmp_path / "sup.json"))
    assert diff == {"added": ["new"], "removed": ["gone"], "changed": ["changed"], "unchanged": ["same"]}
    drive(sup, lambda: "gone" not in sup.programs and sup.programs["new"].state is S.RUNNING
          and sup.programs["changed"].state is S.RUNNING)
    assert sup.programs["same"].pid == same
    assert sup.programs["changed"].pid != changed
    assert "61" in sup.programs["changed"].spec.argv


def test_log_rotates_by_size_keeping_n(supervise, tmp_path):
    sup = supervise({"chatty": {"cmd": [sys.executable, "-c",
                                        "import sys\nfor i in range(400): print('x' * 60, i)\n"
                                        "import time; time.sleep(60)"]}},
                    logs={"max_bytes": 4096, "keep": 2})
    logs = tmp_path / "log"
    drive(sup, lambda: (logs / "chatty.log.2").exists() and "399" in (logs / "chatty.log").read_text())
    assert not (logs / "chatty.log.3").exists()
    assert all(path.stat().st_size <= 4096 + 200 for path in logs.glob("chatty.log*"))


@pytest.mark.parametrize("restart_dependents", [False, True])
def test_restart_dependents_only_when_the_experiment_asks(supervise, restart_dependents):
    sup = supervise({"base": program("crash_after.py", 3, restart_dependents=restart_dependents),
                     "user": program("crash_after.py", 600, depends_on=["base"])})
    drive(sup, lambda: sup.programs["user"].state is S.RUNNING)
    user = sup.programs["user"].pid
    drive(sup, lambda: sup.programs["base"].restarts >= 1)
    drive(sup, lambda: sup.programs["user"].state is S.RUNNING and sup.programs["base"].state is S.RUNNING)
    assert (sup.programs["user"].pid != user) is restart_dependents


def test_a_program_of_another_host_is_not_run_here(supervise):
    sup = supervise({"remote": {**program("crash_after.py", 600), "host": "daq2"},
                     "local": program("crash_after.py", 600)},
                    hosts={"daq2": {"supervisord": "http://127.0.0.1:9001/RPC2"}})
    drive(sup, lambda: sup.programs["local"].state is S.RUNNING)
    remote = sup.describe("remote")
    assert remote["state"] == "STOPPED" and remote["pid"] is None
    assert "host daq2" in remote["last_exit"]["error"]


def test_a_program_gets_its_env_and_cwd_and_stops_with_its_own_signal(supervise, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    code = ("import os, signal, sys, time\n"
            "print('cwd', os.getcwd(), 'detector', os.environ.get('DETECTOR'), flush=True)\n"
            "signal.signal(signal.SIGINT, lambda *_: (print('got', 'SIG' + 'INT', flush=True), sys.exit(7)))\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(9))\n"
            "time.sleep(60)\n")
    sup = supervise({"a": {"cmd": [sys.executable, "-c", code], "env": {"DETECTOR": "ccd-3"}, "cwd": str(folder),
                           "stop_signal": "INT", "stop_timeout": 10}})
    log = tmp_path / "log" / "a.log"
    drive(sup, lambda: log.exists() and f"cwd {folder} detector ccd-3" in log.read_text())
    drive(sup, lambda: sup.programs["a"].state is S.RUNNING)
    sup.stop("a")
    drive(sup, lambda: sup.programs["a"].state is S.STOPPED)
    exited = next(f for k, f in sup.events if k == "program_exited")
    assert (exited["code"], exited["signal"]) == (7, None)  # it heard SIGINT, not SIGTERM
    assert "stopping with SIGINT" in log.read_text() and "got SIGINT" in log.read_text()
