"""send.py, the spy and run.py, run as an operator runs them."""

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from runcontrol import process
from runcontrol.control import commands as run_commands
from tests.helpers import (DAMICM_PROGRAMS, ROOT, ServerProcess, damicm_copy, env_for_children, helper,
                           registered_names, wait_until, write_experiment)


def run_tool(*args, timeout_s=60, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env or env_for_children(),
                          capture_output=True, text=True, timeout=timeout_s)


def test_send_json_form_prints_result_exit_0(server, echo):
    result = run_tool("send.py", "--experiment", server.path, '{"to": "echo", "cmd": "echo", "volts": 40}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"volts": 40}


def test_send_word_form_parses_values(server, echo):
    result = run_tool("send.py", "--server", server.router, "echo", "echo", "volts=40", "on=true",
                      "label=ccd 3", "list=[1,2]")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"volts": 40, "on": True, "label": "ccd 3", "list": [1, 2]}


def test_send_server_command(server):
    result = run_tool("send.py", "--server", server.router, "server", "_status")
    assert result.returncode == 0 and json.loads(result.stdout)["experiment"] == server.name


def test_send_error_answer_exit_1(server, echo):
    refused = run_tool("send.py", "--server", server.router, "echo", "refuse")
    assert refused.returncode == 1
    assert "error (out_of_range): 40 V is above the 35 V limit" in refused.stderr
    missing = run_tool("send.py", "--server", server.router, "nobody", "status")
    assert missing.returncode == 1 and "no_such_client" in missing.stderr


@pytest.mark.parametrize("args,message", [
    (['{"to": "echo", "cmd": "echo",, }'], "bad JSON at line 1 column 30 (char 29)"),
    (['[1, 2]'], "must be a JSON object"),
    (['{"to": "echo"}'], 'needs "cmd"'),
    (["echo"], "TO CMD"),
    (["echo", "echo", "novalue"], "'novalue' is not KEY=VALUE"),
    (["echo", "echo", "from=me"], "'from' is reserved"),
])
def test_send_bad_usage_exit_2_says_what(args, message):
    result = run_tool("send.py", "--server", "tcp://127.0.0.1:1", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_send_no_server_exit_3(tmp_path):
    result = run_tool("send.py", "--server", "tcp://127.0.0.1:1", "--connect-timeout", "0.5", "x", "y")
    assert result.returncode == 3
    assert "no server answered within 0.5 s (at tcp://127.0.0.1:1)" in result.stderr


def test_send_no_reply_in_time_exit_3(server, echo):
    os.killpg(echo.pid, signal.SIGSTOP)
    try:
        result = run_tool("send.py", "--server", server.router, "--wait", "0.5", "echo", "echo")
    finally:
        os.killpg(echo.pid, signal.SIGCONT)
    assert result.returncode == 3 and "echo did not answer 'echo' within 0.5 s" in result.stderr


def test_send_no_wait_delivers_one_way(server, echo):
    result = run_tool("send.py", "--server", server.router, "--no-wait", "echo", "note", "seq=7")
    assert result.returncode == 0, result.stderr
    answer = run_tool("send.py", "--server", server.router, "echo", "notes")
    assert json.loads(answer.stdout) == [7]


def test_send_help_lists_server_commands_and_every_command_of_the_run_controllers_table():
    result = run_tool("send.py", "--help")
    assert result.returncode == 0
    for cmd in ("_hello", "_list", "_retained", "_publish"):
        assert cmd in result.stdout
    listed = result.stdout.split("Commands of the run controller")[1]
    for name, module in run_commands.COMMANDS.items():
        assert f"\n{name:<12} {run_commands.summary(module)}\n" in listed, name


def test_spy_prints_and_logs_traffic_and_topic_narrows(server, echo, tmp_path):
    logs = tmp_path / "spylogs"
    everything = subprocess.Popen(
        [sys.executable, "-m", "clients.spy", "--experiment", str(server.path), "--log-dir", str(logs)],
        cwd=ROOT, env=env_for_children(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    events_only = subprocess.Popen(
        [sys.executable, "-m", "clients.spy", "--experiment", str(server.path), "--topic", "event.",
         "--log-dir", str(tmp_path / "other")],
        cwd=ROOT, env=env_for_children(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        wait_until(lambda: len([n for n in registered_names(server.router) if n.startswith("spy-")]) == 2, 15)

        def spy_logged_marker():
            run_tool("send.py", "--server", server.router, "echo", "echo", "tag=spy-marker")
            log = logs / "traffic.log"
            return log.exists() and "spy-marker" in log.read_text()
        wait_until(spy_logged_marker, 30, interval_s=0.2)
        run_tool("send.py", "--server", server.router, "server", "_event", "kind=spy_check")
    finally:
        for proc in (everything, events_only):
            proc.send_signal(signal.SIGTERM)
        out_all = everything.communicate(timeout=10)[0]
        out_events = events_only.communicate(timeout=10)[0]
    line = next(l for l in out_all.splitlines() if "spy-marker" in l and " msg.echo " in l)
    assert line.split(" ")[0].endswith("Z")  # a UTC stamp first
    assert '"from":"send-' in line
    assert "event.client_joined" in out_all
    assert "spy-marker" not in out_events and "event.spy_check" in out_events
    assert "msg.echo" in (logs / "traffic.log").read_text()


def test_run_py_starts_server_controller_and_programs_and_stops_on_sigterm(tmp_path):
    path = write_experiment(tmp_path, "runpy", programs={
        "spy": {"cmd": ["python", "-m", "clients.spy", "--name", "spy"], "client": "spy"},
        "echo": helper("echo_client.py", "echo", client="echo", depends_on=["spy"])})
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT,
                            env=env_for_children(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        pid_files = [tmp_path / "state" / "server.pid", tmp_path / "state" / "controller.pid"]
        wait_until(lambda: all(p.exists() for p in pid_files), 15)

        def registered():
            listing = run_tool("send.py", "--experiment", path, "server", "_list")
            return listing.returncode == 0 and {"spy", "echo", "run"} <= {c["name"] for c in json.loads(listing.stdout)}
        wait_until(registered, 30, interval_s=0.2)
        answer = run_tool("send.py", "--experiment", path, "spy", "nothing")
        assert answer.returncode == 1 and "spy has no command 'nothing'" in answer.stderr
        status = json.loads(run_tool("send.py", "--experiment", path, "run", "status").stdout)
        assert {name: p["state"] for name, p in status["programs"].items()} == {"spy": "RUNNING", "echo": "RUNNING"}
        pids = [p["pid"] for p in status["programs"].values()]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "run controller and its programs stopped (exit status 0)" in out
    assert out.index("echo RUNNING -> STOPPING") < out.index("spy RUNNING -> STOPPING")
    assert "server stopped (exit status 0)" in out and "everything stopped" in out
    assert not any(p.exists() for p in pid_files)
    assert not any(psutil.pid_exists(pid) for pid in pids)


@pytest.mark.parametrize("signum, cause", [(signal.SIGINT, "SIGINT, Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_run_py_stopped_during_a_run_names_the_signal_that_came_in_the_run_log(tmp_path, signum, cause):
    path = write_experiment(tmp_path, "stopcause", programs={
        "p": helper("participant.py", "p", tmp_path / "p.jsonl", client="p", participant=True)})
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT,
                            env=env_for_children(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        def participant_up():
            answer = run_tool("send.py", "--experiment", path, "run", "status")
            return answer.returncode == 0 and json.loads(answer.stdout)["programs"]["p"]["registered"]
        wait_until(participant_up, 30, 0.3, what="the participant registered")
        prepared = run_tool("send.py", "--experiment", path, "run", "prepare_run")
        assert prepared.returncode == 0, prepared.stderr
        run = json.loads(prepared.stdout)["run"]
        began = run_tool("send.py", "--experiment", path, "run", "begin_run")
        assert json.loads(began.stdout)["state"] == "RUN", began.stderr
    finally:
        process.signal_group(proc.pid, signum)   # Ctrl-C: SIGINT to the terminal's foreground group, run.py's
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    record = json.loads((tmp_path / "state" / "runs.jsonl").read_text().splitlines()[-1])
    assert (record["run"], record["result"], record["why"]) == (run, "ended by shutdown",
                                                               f"the experiment was stopped ({cause})")
    assert not (tmp_path / "state" / "stop_cause").exists()   # taken: no later stop can read it


def test_run_py_refuses_invalid_experiment(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "server": {"beacon": {"port": "x"}}, "colour": 1}')
    result = run_tool("run.py", bad)
    assert result.returncode == 2
    assert 'server.beacon.port: "x" is not of type integer' in result.stderr
    assert "unknown key(s)" in result.stderr


def test_status_once_and_json_show_the_live_system(server, echo):
    as_json = run_tool("status.py", "--server", server.router, "--json")
    assert as_json.returncode == 0, as_json.stderr
    snap = json.loads(as_json.stdout)
    assert snap["server"]["experiment"] == server.name
    assert "echo" in [c["name"] for c in snap["clients"]]
    assert snap["events"][0]["kind"] in ("client_joined", "client_left")
    once = run_tool("status.py", "--experiment", server.path, "--once")
    assert once.returncode == 0, once.stderr
    assert server.name in once.stdout and "no run controller registered" in once.stdout
    assert any(line.split()[:2] == ["echo", "REGISTERED"] for line in once.stdout.splitlines())


def test_status_without_server_exit_3():
    result = run_tool("status.py", "--server", "tcp://127.0.0.1:1", "--connect-timeout", "0.5", "--once")
    assert result.returncode == 3 and "no server answered" in result.stderr


def test_run_py_damicm_headless_brings_every_program_up_and_down(tmp_path):
    path = damicm_copy(tmp_path)
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT,
                            env=env_for_children(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        def everything_up():
            answer = run_tool("send.py", "--experiment", path, "run", "status")
            if answer.returncode != 0:
                return None
            programs = json.loads(answer.stdout)["programs"]
            return programs if all(p["state"] == "RUNNING" and p["registered"] is not False
                                   for p in programs.values()) else None
        programs = wait_until(everything_up, 60, interval_s=0.5, what="every damicm program registered")
        assert set(programs) == DAMICM_PROGRAMS
        names = {c["name"] for c in json.loads(run_tool("send.py", "--experiment", path, "server", "_list").stdout)}
        assert set(programs) - {"board1", "board2"} | {"run"} <= names  # the boards are hardware, not clients
        allowed = run_tool("send.py", "--experiment", path, "shell", "run", "command=uptime")
        assert allowed.returncode == 0, allowed.stderr
        ran = json.loads(allowed.stdout)
        assert (ran["command"], ran["code"]) == ("uptime", 0) and "load average" in ran["stdout"]
        refused = run_tool("send.py", "--experiment", path, "shell", "run", "command=reboot")
        assert refused.returncode == 1
        assert ("error (not_allowed): no command 'reboot' in this client's configuration; it has: data_files, "
                "disk_usage, uptime") in refused.stderr
        prepared = run_tool("send.py", "--experiment", path, "run", "prepare_run")
        assert prepared.returncode == 0, prepared.stderr
        run = json.loads(prepared.stdout)["run"]
        began = run_tool("send.py", "--experiment", path, '{"to": "run", "cmd": "begin_run", "comment": "test", '
                         '"params": {"seconds": 0.1}}')
        assert json.loads(began.stdout)["participants"] == ["lta1", "lta2"]
        folder = tmp_path / "var" / "data" / "lta2" / f"run_{run:06d}"
        wait_until(lambda: folder.exists() and list(folder.glob("*.fits")), 30, interval_s=0.2)
        ended = run_tool("send.py", "--experiment", path, "run", "end_run")
        assert json.loads(ended.stdout)["state"] == "STOP"
        pids = [p["pid"] for p in programs.values()]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "everything stopped" in out
    assert out.index("monitor RUNNING -> STOPPING") < out.index("lta1 RUNNING -> STOPPING") \
        < out.index("cryo RUNNING -> STOPPING")
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert "wrote " in (tmp_path / "var" / "log" / "lta2.log").read_text()


def test_send_finds_the_server_by_experiment_name_here_or_in_experiments_and_by_orbit_server(tmp_path):
    name = f"by-name-{os.getpid()}"   # a name no file of the checkout has
    (tmp_path / "experiments").mkdir()
    path = write_experiment(tmp_path / "experiments", name)
    desk = tmp_path / "desk"
    desk.mkdir()
    (desk / f"{name}.json").write_text(path.read_text())   # the same experiment, beside the operator
    server = ServerProcess(path).start()
    try:
        for cwd in (tmp_path, desk):   # experiments/NAME.json, then NAME.json in the working directory
            found = run_tool(ROOT / "send.py", "--experiment", name, "server", "_status", cwd=cwd)
            assert found.returncode == 0, found.stderr
            assert json.loads(found.stdout)["instance"] == server.beacon.instance
        by_env = run_tool("send.py", "server", "_status", env={**env_for_children(), "ORBIT_SERVER": server.router})
        assert by_env.returncode == 0, by_env.stderr
        assert json.loads(by_env.stdout)["router"] == server.router
    finally:
        assert server.stop() == 0


def controller_pid(path):
    answer = run_tool("send.py", "--experiment", path, "run", "status", timeout_s=30)
    return json.loads(answer.stdout)["controller"]["pid"] if answer.returncode == 0 else None


def test_run_py_replaces_a_killed_or_hung_run_controller_and_the_run_goes_on(tmp_path):
    path = write_experiment(tmp_path, "keeper", stale_after=3.0, programs={
        "p": helper("participant.py", "p", tmp_path / "p.jsonl", client="p", participant=True)})
    proc = subprocess.Popen([sys.executable, "run.py", str(path), "--headless"], cwd=ROOT,
                            env=env_for_children(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        first = wait_until(lambda: controller_pid(path), 30, 0.3, what="the run controller")
        wait_until(lambda: participant_registered(path), 30, 0.3, what="p up")
        prepared = run_tool("send.py", "--experiment", path, "run", "prepare_run")
        assert prepared.returncode == 0, prepared.stderr
        run = json.loads(prepared.stdout)["run"]
        began = run_tool("send.py", "--experiment", path, "run", "begin_run", "comment=through it all")
        assert json.loads(began.stdout)["state"] == "RUN", began.stderr
        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: (pid := controller_pid(path)) not in (None, first) and pid, 30, 0.3,
                            what="a new run controller after the kill")
        assert run_state(path) == ("RUN", run)
        os.kill(second, signal.SIGSTOP)  # hung: its pid file goes stale
        third = wait_until(lambda: (pid := controller_pid(path)) not in (None, first, second) and pid, 40, 0.3,
                           what="a new run controller after the hang")
        assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE
        assert run_state(path) == ("RUN", run)
        wait_until(lambda: participant_registered(path), 30, 0.3, what="p up under the third controller")
        ended = run_tool("send.py", "--experiment", path, "run", "end_run")
        assert ended.returncode == 0 and json.loads(ended.stdout)["run"] == run, ended.stderr
        record = json.loads(run_tool("send.py", "--experiment", path, "run", "runs").stdout)[-1]
        assert (record["run"], record["result"], record["comment"]) == (run, "ended", "through it all")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "is hung: pid file" in out and "everything stopped" in out


def participant_registered(path):
    answer = run_tool("send.py", "--experiment", path, "run", "status", timeout_s=30)
    return answer.returncode == 0 and json.loads(answer.stdout)["programs"]["p"]["registered"]


def run_state(path):
    status = json.loads(run_tool("send.py", "--experiment", path, "run", "status").stdout)
    return status["state"], status["run"]
