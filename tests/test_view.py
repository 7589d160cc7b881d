"""The status view: --once and --json against a live damicm, a pause and a transition's holder of a real run
controller, snapshots rendered (a pause, a transition under way, participants left out), and the live view in a
real terminal (tmux)."""

import calendar
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from rich.console import Console

from runcontrol.control.operator import Operator
from runcontrol.control.view import RUN_STYLES, SPARKS, render, snapshot
from tests.helpers import DAMICM_PROGRAMS, ROOT, apt_install, damicm_copy, env_for_children, helper, wait_until


def tool(*args, timeout_s=60):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env_for_children(),
                          capture_output=True, text=True, timeout=timeout_s)


def all_registered(path):
    answer = tool("send.py", "--experiment", path, "run", "status")
    if answer.returncode != 0:
        return None
    programs = json.loads(answer.stdout)["programs"]
    return programs if all(p["registered"] is not False for p in programs.values()) else None


@pytest.fixture
def damicm(tmp_path):
    path = damicm_copy(tmp_path, holds={"vacuum_high": 1})   # raised while the cryostat pumps down at the start
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT, env=env_for_children(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: all_registered(path), 60, 0.5, what="damicm up")
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_status_once_and_json_against_a_live_damicm(damicm):
    as_json = tool("status.py", "--experiment", damicm, "--json")
    assert as_json.returncode == 0, as_json.stderr
    snap = json.loads(as_json.stdout)
    assert set(snap["run"]["programs"]) == DAMICM_PROGRAMS and snap["run"]["state"] == "STOP"
    assert snap["server"]["experiment"] == "damicm"
    assert {"cryo.values", "vacuum.values"} <= set(snap["retained"])
    rates = wait_until(lambda: json.loads(tool("status.py", "--experiment", damicm, "--json").stdout)["retained"]
                       .get("lta1.rates"), 20, 0.5, what="the reader's rates among the monitoring values")
    assert {"packets_per_s", "bytes_per_s", "dropped", "queue"} <= set(rates["data"])
    def alarms():
        return {a["alarm"]: a for a in json.loads(tool("send.py", "--experiment", damicm, "run", "alarms").stdout)
                ["alarms"]}
    wait_until(lambda: alarms().get("vacuum_high", {}).get("state") == "cleared", 30, 0.5, what="the pump-down alarm")
    lines = view_once(damicm)
    assert lines[0].startswith("ALARM   cryostat pressure above 1e-4 mbar  [vacuum_high]") \
        and lines[0].endswith("(cleared)"), lines[0]
    assert tool("send.py", "--experiment", damicm, "run", "ack", "alarm=vacuum_high", "by=shifter").returncode == 0
    assert "vacuum_high" not in alarms()
    lines = view_once(damicm, 80, 28)   # damicm's 16 programs, the header and a few values
    assert lines[0].startswith("damicm  server") and lines[1].startswith("run STOP"), lines[:2]
    volts = next(line for line in lines if line.split()[:1] == ["bias.values.volts"])
    assert set(volts) & set(SPARKS), volts   # the last hour from the historian
    assert all(len(line) <= 80 for line in lines) and len(lines) <= 28
    for name in DAMICM_PROGRAMS:
        assert any(line.split()[:2] == [name, "RUNNING"] for line in lines), name

    def maintenance(*fields):
        return tool("send.py", "--experiment", damicm, "run", "maintenance", *fields, "by=anna").returncode
    assert maintenance("minutes=120", "reason=warming up", 'programs=["cryo"]') == 0
    lines = view_once(damicm, 100, 40)
    assert re.fullmatch(r"MAINTENANCE until (\d{4}-\d\d-\d\d )?\d\d:\d\d UTC \(anna\): warming up; alarms of cryo held "
                        r"back *", lines[0]), lines[0]
    assert event_rows(lines)[0] == ["maintenance", "maintenance by anna for 120 min (cryo): warming up"]
    assert maintenance("end=true") == 0
    lines = view_once(damicm, 100, 40)
    assert lines[0].startswith("damicm  server"), lines[0]
    assert event_rows(lines)[0] == ["maintenance_ended", "maintenance ended by anna"]


def event_rows(lines):
    """The view's event lines, newest first: [kind, detail] each."""
    below = lines[next(i for i, line in enumerate(lines) if line.split() == ["events"]) + 2:]
    return [line.rstrip().split(maxsplit=2)[1:] for line in below if line.strip()]


def test_the_view_puts_alarms_on_top_and_marks_a_program_whose_settings_changed_in_the_run():
    now = time.time()
    snap = {"taken": now, "server": {"experiment": "demo", "instance": "abc", "uptime": 60, "clients": 2},
            "stats": {}, "clients": [], "retained": {}, "events": [],
            "run": {"state": "RUN", "run": 7, "current_run": {"start": now - 30},
                    "programs": {"amp": {"state": "RUNNING", "config_changed": True},
                                 "cryo": {"state": "RUNNING", "config_changed": False}},
                    "alarms": [{"alarm": "hot", "severity": "alarm", "message": "too hot", "state": "active",
                                "raised": now - 5, "acked": None}]}}
    console = Console(record=True, width=80, height=24)
    console.print(render(snap, 80, 24))
    lines = console.export_text().splitlines()
    assert lines[0].startswith("ALARM   too hot  [hot]  5s ago")
    assert any(line.split()[:2] == ["amp*", "RUNNING"] for line in lines)
    assert any(line.split()[:2] == ["cryo", "RUNNING"] for line in lines)


def test_the_view_shows_open_maintenance_windows_under_the_alarms_and_the_notifiers_events():
    taken = calendar.timegm((2026, 3, 1, 12, 0, 0))
    windows = [{"from": taken - 60, "until": taken + 9000, "reason": "warming up", "by": "anna", "alarms": [],
                "programs": ["cryo"]},
               {"from": taken - 60, "until": taken + 2 * 86400, "reason": "pump service", "by": "bob",
                "alarms": ["vacuum_high", "program.vacuum.*"], "programs": []},
               {"from": taken - 7200, "until": taken - 60, "reason": "over", "by": "eve", "alarms": [], "programs": []}]
    events = [{"kind": "alarm_raised", "ts": taken - 1, "alarm": "notify.delivery", "severity": "alarm",
               "message": "notifications cannot be delivered (send.py run notifications: what failed, and why)"},
              {"kind": "maintenance_ended", "ts": taken - 60, "from": "notifier", "message": "maintenance ended: over"},
              {"kind": "maintenance", "ts": taken - 61, "from": "notifier",
               "message": "maintenance by anna for 150 min (cryo): warming up"}]
    snap = {"taken": taken, "server": {"experiment": "demo", "instance": "abc", "uptime": 60, "clients": 2},
            "stats": {}, "clients": [], "events": events,
            "retained": {"notifier.maintenance": {"data": {"active": 3, "windows": windows}, "ts": taken - 60}},
            "run": {"state": "STOP", "programs": {"cryo": {"state": "RUNNING"}},
                    "alarms": [{"alarm": "hot", "severity": "alarm", "message": "too hot", "state": "active",
                                "raised": taken - 5, "acked": None}]}}
    console = Console(record=True, width=120, height=30)
    console.print(render(snap, 120, 30))
    lines = console.export_text().splitlines()
    assert [line.rstrip() for line in lines[:4]] == [
        "ALARM   too hot  [hot]  5s ago",
        "MAINTENANCE until 14:30 UTC (anna): warming up; alarms of cryo held back",
        "MAINTENANCE until 2026-03-03 12:00 UTC (bob): pump service; vacuum_high, program.vacuum.* held back",
        "demo  server abc up 60s  2 clients  0 msg/s"]
    assert not any("notifier.maintenance" in line for line in lines)   # no monitored number
    (raised, delivery), *rest = event_rows(lines)
    assert raised == "alarm_raised" and delivery.startswith("notify.delivery: notifications cannot be delivered")
    assert rest == [["maintenance_ended", "maintenance ended: over"],
                    ["maintenance", "maintenance by anna for 150 min (cryo): warming up"]]


def shown(snap, width=80, height=24):
    """The lines of `snap` rendered for a terminal of `width` x `height`, and the console (for styles)."""
    console = Console(record=True, width=width, height=height, file=io.StringIO())
    console.print(render(snap, width, height))
    return console.export_text().splitlines(), console


def run_snapshot(taken, run):
    return {"taken": taken, "server": {"experiment": "demo", "instance": "abc", "uptime": 60, "clients": 2},
            "stats": {}, "clients": [], "retained": {}, "events": [],
            "run": {"programs": {"lta1": {"state": "RUNNING"}, "lta3": {"state": "RUNNING"}}, "alarms": [], **run}}


def progress(ts, transition, run, said):
    return {"kind": "run_progress", "ts": ts, "from": "run", "transition": transition, "run": run, "stage": 1,
            "stages": 1, "message": f"{transition} of run {run} held by lta1 {said}"}


def test_the_view_shows_a_pause_for_how_long_by_whom_and_why_and_a_transitions_progress_once():
    taken = calendar.timegm((2026, 3, 1, 12, 0, 0))
    anna = {"client": "op-1", "operator": "anna", "alarm": None}
    events = [{"kind": "run_state", "ts": taken - 80, "from": "run", "state": "PAUSED", "run": 12,
               "transition": "pause_run", "message": "Paused run 12: fill the dewar"},
              *(progress(taken - 80.1 - i / 5, "pause_run", 12, f"{80 - 20 * i}%: draining {4 - i} of 5")
                for i in range(3)),
              {"kind": "run_state", "ts": taken - 300, "from": "run", "state": "RUN", "run": 12,
               "transition": "begin_run", "message": "Beginning run 12"},
              *(progress(taken - 900 - i / 5, "end_run", 11, f"{90 - 10 * i}%") for i in range(2))]
    snap = run_snapshot(taken, {"state": "PAUSED", "run": 12, "transition": None, "excluded": {},
                                "current_run": {"run": 12, "start": taken - 300, "comment": "dark current",
                                                "pauses": [{"at": taken - 250, "until": taken - 200, "duration": 50,
                                                            "why": "first", "by": anna},
                                                           {"at": taken - 80, "why": "fill the dewar", "by": anna}]}})
    snap["events"] = events
    lines, console = shown(snap, 100, 30)
    assert lines[1].rstrip() == 'run PAUSED  number 12  paused for 1m 20s by anna: fill the dewar  "dark current"'
    assert lines[2].startswith("programs")   # no transition under way, nobody left out: no line for them
    painted = {segment.text: str(segment.style) for line in console.render_lines(render(snap, 100, 30))
               for segment in line}
    assert painted["PAUSED"] == RUN_STYLES["PAUSED"] != RUN_STYLES["RUN"]
    assert "yellow" in painted["  paused for 1m 20s by anna: fill the dewar"]
    assert event_rows(lines) == [["run_state", "Paused run 12: fill the dewar"],
                                 ["run_progress", "pause_run of run 12 held by lta1 80%: draining 4 of 5"],
                                 ["run_state", "Beginning run 12"],
                                 ["run_progress", "end_run of run 11 held by lta1 90%"]]

    snap["run"]["current_run"]["pauses"][-1]["why"] = "fill the dewar: the level is under 20 % and the pump " * 3
    lines, _ = shown(snap, 80, 24)
    assert lines[1].startswith("run PAUSED  number 12  paused for 1m 20s by anna: fill the dewar: the level")
    assert len(lines[1].rstrip()) == 80 and lines[1].rstrip().endswith("…"), lines[1]   # the why cut, not the rest
    assert "dark current" not in lines[1]   # the pause's why comes before the run's comment

    alarm = {"client": "run", "operator": None, "alarm": "vacuum_high"}
    snap["run"]["current_run"].update(pauses=[{"at": taken - 3960, "why": "alarm vacuum_high: too high", "by": alarm}],
                                      suspended_by="vacuum_high", comment="")
    lines, _ = shown(snap, 80, 24)
    assert lines[1].rstrip() == "run PAUSED  number 12  paused for 1h 06m: alarm vacuum_high: too high"


def test_the_view_says_who_holds_a_transition_under_way_and_who_is_left_out():
    taken = calendar.timegm((2026, 3, 1, 12, 0, 0))
    holding = {"transition": "end_run", "run": 12, "stage": 2, "stages": 3, "waiting": ["lta1", "lta3"],
               "holders": {"lta1": {"fraction": 0.4, "text": "draining 2 of 5", "since": taken - 12}},
               "taking_back": False}
    left_out = {"lta2": {"why": "board 2 keeps timing out", "by": "anna", "at": taken - 900, "stopped": False},
                "lta4": {"why": "", "by": "bob", "at": taken - 800, "stopped": True}}
    snap = run_snapshot(taken, {"state": "RUN", "run": 12, "current_run": {"run": 12, "start": taken - 300},
                                "transition": holding, "excluded": left_out})
    snap["events"] = [*(progress(taken - i, "end_run", 12, f"{40 - i}%") for i in range(30)),
                      *({"kind": "program_restarting", "ts": taken - 100 - i, "program": "lta3", "restarts": 3 - i,
                         "delay": 1} for i in range(3))]
    lines, _ = shown(snap, 100, 30)
    assert [line.rstrip() for line in lines[1:5]] == [
        "run RUN  number 12  for 5m",
        "end_run of run 12: stage 2/3, waiting for lta1 40% draining 2 of 5 (for 12s), lta3",
        "left out: lta2 (board 2 keeps timing out), lta4 (stopped)",
        "programs"]
    assert event_rows(lines) == [["run_progress", "end_run of run 12 held by lta1 40%"],   # not 30 of them
                                 *(["program_restarting", f"lta3 restart {3 - i} after 1 s"] for i in range(3))]

    lines, _ = shown(snap, 80, 24)   # what a participant says is cut, not who holds it, for how long, or who else
    assert lines[2].startswith("end_run of run 12: stage 2/3, waiting for lta1 40% draining")
    assert lines[2].rstrip().endswith("… (for 12s), lta3") and len(lines[2].rstrip()) <= 80, lines[2]
    for height in (24, 13):   # the lines added to the header are counted: nothing falls off the bottom
        lines, _ = shown(snap, 80, height)
        assert len(lines) <= height, lines
    assert [kind for kind, _ in event_rows(lines)] == ["run_progress"]   # the one event line 13 leave

    snap["run"].update(excluded={}, transition={**holding, "transition": "begin_run", "holders": {},
                                                "waiting": ["a", "b", "c", "d", "e", "f"]})
    lines, _ = shown(snap, 80, 24)
    assert lines[2].rstrip() == "begin_run of run 12: stage 2/3, waiting for a, b, c and 3 more"
    assert lines[3].startswith("programs")
    snap["run"]["transition"]["taking_back"] = True
    lines, _ = shown(snap, 80, 24)
    assert lines[2].rstrip() == "begin_run of run 12: stage 2/3 refused: taking back what was done"


def test_the_view_shows_a_real_run_paused_and_the_participant_that_held_the_pause(system, tmp_path):
    s = system({"drain": helper("participant.py", "drain", tmp_path / "drain.jsonl", "--defer", "pause", 6,
                                client="drain", participant=True, transitions={"defer_limit": 60}),
                "lta2": helper("participant.py", "lta2", tmp_path / "lta2.jsonl", client="lta2", participant=True)})
    for name in ("drain", "lta2"):
        s.wait_state(name, "RUNNING", registered=True)
    s.op.request("run", "exclude", program="lta2", why="board 2 keeps timing out", by="anna")
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", comment="dark current")["run"]
    pausing = s.op.start({"to": "run", "cmd": "pause_run", "why": "fill the dewar", "by": "anna"})
    with Operator(str(s.path), name="viewer", timeout=5) as op:
        def holder_shown():
            s.op.poll(0.05)   # the operator client keeps answering its heartbeats
            lines, _ = shown(snapshot(op), 100, 30)
            return lines if lines[2].startswith(f"pause_run of run {run}: stage 1/1, waiting for drain ") else None
        lines = wait_until(holder_shown, 20, 0, what="the view to show drain holding the pause")
    assert re.fullmatch(r"pause_run of run \d+: stage 1/1, waiting for drain \d+% draining \d+ of \d+ \(for \d+s\) *",
                        lines[2]), lines[2]
    assert lines[3].rstrip() == "left out: lta2 (board 2 keeps timing out)"
    assert s.op.wait(pausing, 30).value()["state"] == "PAUSED"
    lines = view_once(s.path, 100, 30)
    assert re.fullmatch(rf'run PAUSED  number {run}  paused for (\d+m )?\d+s by anna: fill the dewar  "dark current" *',
                        lines[1]), lines[1]
    rows = event_rows(lines)
    assert rows[0] == ["run_state", f"Paused run {run}: fill the dewar"], rows
    assert [kind for kind, _ in rows].count("run_progress") == 1, rows


def view_once(path, columns=80, rows=24):
    once = subprocess.run([sys.executable, "status.py", "--experiment", str(path), "--once"], cwd=ROOT,
                          env={**env_for_children(), "COLUMNS": str(columns), "LINES": str(rows)}, capture_output=True,
                          text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    return once.stdout.splitlines()


def install_tmux():
    """tmux from Debian's packages; CI fails where it cannot be had, a desk run skips (and says why)."""
    installed = apt_install(["tmux"], ["tmux"])
    if shutil.which("tmux") is not None:
        return
    reason = f"the live view's terminal tests need tmux, which could not be installed: {installed.stderr[-200:]!r}"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def tmux(tmp_path):
    """A private tmux server (its socket in the test's folder), killed at the end."""
    install_tmux()
    socket = tmp_path / "tmux.sock"

    def run(*args):
        return subprocess.run(["tmux", "-S", str(socket), *args], capture_output=True, text=True, timeout=30)
    yield run
    family = []
    for pane in run("list-panes", "-a", "-F", "#{pane_pid}").stdout.split():
        try:
            shell = psutil.Process(int(pane))
            family += [shell, *shell.children(recursive=True)]
        except psutil.Error:
            continue
    run("kill-server")  # SIGHUP: run.py stops everything as on Ctrl-C
    _, alive = psutil.wait_procs(family, timeout=60)
    for proc in alive:
        proc.kill()
    socket.unlink(missing_ok=True)
    assert not alive, f"left running after the terminal closed: {[p.pid for p in alive]}"


@pytest.mark.timeout(900)   # tmux may wait for apt-get, one installation at a time
def test_live_view_in_a_terminal_shows_a_restart_and_ctrl_c_stops_everything(tmux, tmp_path):
    path = damicm_copy(tmp_path)
    env = " ".join(f"{k}={v}" for k, v in (("PYTHONPATH", ROOT), ("COLUMNS", 80), ("LINES", 30)))
    command = f"cd {ROOT} && {env} {sys.executable} run.py {path}; echo EXIT=$?; sleep 60"
    assert tmux("new-session", "-d", "-s", "view", "-x", "80", "-y", "30", command).returncode == 0

    def screen():
        return tmux("capture-pane", "-p", "-t", "view").stdout
    def states():
        return {line.split()[0]: line.split()[1] for line in screen().splitlines() if len(line.split()) > 1}
    wait_until(lambda: all(states().get(n) == "RUNNING" for n in DAMICM_PROGRAMS) and all_registered(path),
               60, 0.5, what="the view with every program's row RUNNING")
    text = screen()
    assert "run STOP" in text and all(len(line) <= 80 for line in text.splitlines())
    lta1 = all_registered(path)["lta1"]["pid"]
    os.kill(lta1, signal.SIGKILL)
    def restarted():   # its row counts one restart; the event is among the lines 30 leave to events
        text = screen()
        row = next((line.split() for line in text.splitlines() if line.split()[:1] == ["lta1"]), [])
        return len(row) > 4 and row[4] == "1" and "program_restarting" in text
    wait_until(restarted, 60, 0.3, what="the restart in the view")
    instance = screen().split()[2]
    os.kill(int((tmp_path / "var" / "run" / "server.pid").read_text().split()[0]), signal.SIGKILL)
    wait_until(lambda: screen().startswith("damicm  server") and screen().split()[2] != instance, 30, 0.3,
               what="the view to show the restarted server")
    pids = [p["pid"] for p in wait_until(lambda: all_registered(path), 30, 0.5).values()]
    tmux("send-keys", "-t", "view", "C-c")
    wait_until(lambda: "EXIT=0" in screen(), 60, 0.5, what="run.py to stop and exit 0")
    assert "everything stopped" in screen()
    assert not any(psutil.pid_exists(pid) for pid in pids)


@pytest.mark.timeout(900)   # tmux may wait for apt-get, one installation at a time
def test_closing_the_terminal_stops_everything(tmux, tmp_path):
    path = damicm_copy(tmp_path)
    assert tmux("new-session", "-d", "-s", "gone", "-x", "80", "-y", "24",
                f"cd {ROOT} && {sys.executable} run.py {path}").returncode == 0
    programs = wait_until(lambda: all_registered(path), 60, 0.5, what="damicm up")
    pane = psutil.Process(int(tmux("list-panes", "-a", "-F", "#{pane_pid}").stdout.split()[0]))
    family = [pane, *pane.children(recursive=True)]
    tmux("kill-server")  # the window closes: SIGHUP
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, [p.pid for p in alive]
    assert not any(psutil.pid_exists(p["pid"]) for p in programs.values())
    assert "everything stopped" in (tmp_path / "var" / "log" / "orbit.log").read_text()


@pytest.mark.timeout(900)   # tmux may wait for apt-get, one installation at a time
def test_status_py_live_view_follows_a_running_system_and_leaves_on_ctrl_c(tmux, server, echo_program):
    echo_program("echo")
    command = f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} status.py --experiment {server.path}; echo EXIT=$?; sleep 30"
    assert tmux("new-session", "-d", "-s", "status", "-x", "100", "-y", "30", command).returncode == 0

    def screen():
        return tmux("capture-pane", "-p", "-t", "status").stdout

    def row(name):
        return next((line.split() for line in screen().splitlines() if line.split()[:1] == [name]), None)
    wait_until(lambda: (r := row("echo")) and r[1] == "REGISTERED", 30, 0.3, what="echo's row in the live view")
    assert screen().startswith(f"{server.name}  server {server.beacon.instance}")
    echo_program("late")  # the view follows what changes
    wait_until(lambda: (r := row("late")) and r[1] == "REGISTERED", 30, 0.3, what="a newcomer in the live view")
    tmux("send-keys", "-t", "status", "C-c")
    wait_until(lambda: "EXIT=0" in screen(), 20, 0.3, what="status.py to leave with status 0")
