"""The run controller as a real process under a real server: programs kept alive, operators' commands."""

import json
import os
import signal

import psutil
import pytest

from runcontrol.errors import Refused
from tests.helpers import helper, wait_until


def test_status_lists_every_program_with_its_figures(system):
    s = system({"echo": helper("echo_client.py", "echo", client="echo"),
                "sleeper": helper("crash_after.py", 600)})
    echo = s.wait_state("echo", "RUNNING", registered=True)
    sleeper = s.wait_state("sleeper", "RUNNING")
    env = psutil.Process(echo["pid"]).environ()
    assert env["ORBIT_NAME"] == "echo" and env["ORBIT_EXPERIMENT"] == str(s.path)
    assert env["ORBIT_SERVER"] == s.server.router
    assert isinstance(echo["heartbeat_age"], float) and echo["heartbeat_age"] >= 0
    assert echo["rss"] > 1_000_000 and echo["host"] == "local" and echo["restarts"] == 0
    assert sleeper["registered"] is None and sleeper["uptime"] > 0
    started = s.wait_event("event.program_started", program="echo", pid=echo["pid"])
    assert started["from"] == "run" and started["host"] == "local"


def test_a_program_starts_only_after_its_dependency_registered(system):
    s = system({"late": helper("crash_after.py", 600, depends_on=["echo"]),
                "echo": helper("echo_client.py", "echo", client="echo")})
    s.wait_state("late", "RUNNING")
    order = [obj["program"] for topic, obj in s.events.items if topic == "event.program_started"]
    assert order == ["echo", "late"]
    joined = s.events.find("event.client_joined", name="echo")
    late = s.events.find("event.program_started", program="late")
    assert joined["ts"] <= late["ts"]


def test_a_hung_client_is_killed_and_restarted(system):
    s = system({"echo": helper("echo_client.py", "echo", client="echo", stop_timeout=1)}, timeout=2.0)
    first = s.wait_state("echo", "RUNNING", registered=True)["pid"]
    os.kill(first, signal.SIGSTOP)
    exited = s.wait_event("event.program_exited", program="echo")
    assert exited["pid"] == first and "silent past the server timeout" in exited["reason"]
    second = s.wait_state("echo", "RUNNING", registered=True)["pid"]
    assert second != first and not psutil.pid_exists(first)


def test_a_program_that_never_registers_is_replaced_after_its_start_timeout_by_default_the_timeout_plus_5_s(system):
    s = system({"ghost": helper("crash_after.py", 600, client="ghost", start_timeout=1, stop_timeout=1),
                "shade": helper("crash_after.py", 600, client="shade", stop_timeout=1)}, timeout=2.0)
    exited = s.wait_event("event.program_exited", program="ghost")
    assert "did not register as ghost within its start_timeout of 1 s" in exited["reason"]
    s.wait_event("event.program_restarting", program="ghost")
    first = s.wait_event("event.program_started", program="shade")["pid"]
    exited = s.wait_event("event.program_exited", program="shade", timeout_s=40)
    assert exited["pid"] == first
    assert "did not register as shade within its start_timeout of 7 s" in exited["reason"]   # the server's 2 s + 5
    s.wait_event("event.program_restarting", program="shade")
    assert s.wait_state("shade", "STARTING", restarts=1)["pid"] not in (None, first)


def test_stop_start_restart_answer_when_done(system):
    s = system({"echo": helper("echo_client.py", "echo", client="echo")})
    first = s.wait_state("echo", "RUNNING", registered=True)["pid"]
    stopped = s.op.request("run", "stop", program="echo", timeout=15)
    assert stopped["echo"]["state"] == "STOPPED" and not psutil.pid_exists(first)
    started = s.op.request("run", "start", program="echo", timeout=15)
    assert started["echo"]["state"] == "RUNNING" and started["echo"]["registered"]
    restarted = s.op.request("run", "restart", program="echo", timeout=15)
    assert restarted["echo"]["pid"] not in (first, started["echo"]["pid"])
    s.op.request("run", "stop", program="echo", timeout=15)
    again = s.op.request("run", "restart", program="echo", timeout=15)  # a stopped program: restart starts it
    assert again["echo"]["state"] == "RUNNING" and again["echo"]["pid"] != restarted["echo"]["pid"]
    assert s.op.request("run", "start", timeout=15)["echo"]["pid"] == again["echo"]["pid"]  # all: already up
    with pytest.raises(Refused) as refused:
        s.op.request("run", "stop", program="nope")
    assert refused.value.code == "unknown_program" and "programs: echo" in str(refused.value)


def test_a_fatal_program_is_reported_and_the_rest_goes_on(system):
    s = system({"bad": helper("crash_after.py", 0, 1, max_restarts=1, backoff={"initial": 0.05}),
                "echo": helper("echo_client.py", "echo", client="echo")})
    fatal = s.wait_event("event.program_fatal", program="bad")
    assert "at most 1" in fatal["reason"]
    assert s.wait_state("bad", "FATAL")["pid"] is None
    s.wait_state("echo", "RUNNING", registered=True)
    with pytest.raises(Refused) as refused:
        s.op.request("run", "start", program="bad", timeout=15)
    assert refused.value.code == "failed" and "bad did not come up" in str(refused.value)


def test_reload_applies_the_difference_and_an_invalid_file_changes_nothing(system):
    s = system({"keep": helper("crash_after.py", 600), "change": helper("crash_after.py", 600),
                "drop": helper("crash_after.py", 600)})
    for name in ("keep", "change", "drop"):
        s.wait_state(name, "RUNNING")
    before = s.status()
    description = json.loads(s.path.read_text())
    good = dict(description)
    good["programs"] = {"keep": helper("crash_after.py", 600), "change": helper("crash_after.py", 601),
                        "add": helper("crash_after.py", 600)}
    s.path.write_text(json.dumps({**description, "programs": {"keep": {"cmd": 7}, "x": {"restart": "sometimes"}}}))
    with pytest.raises(Refused) as refused:
        s.op.request("run", "reload")
    text = str(refused.value)
    assert "nothing changed" in text and "programs.keep.cmd" in text and "programs.x" in text
    assert {n: p["pid"] for n, p in s.status().items()} == {n: p["pid"] for n, p in before.items()}
    s.path.write_text(json.dumps(good))
    diff = s.op.request("run", "reload")
    assert (diff["added"], diff["removed"], diff["changed"], diff["unchanged"]) == (
        ["add"], ["drop"], ["change"], ["keep"])
    s.wait_state("add", "RUNNING")
    after = s.wait_state("change", "RUNNING")
    assert after["pid"] != before["change"]["pid"] and "601" in after["cmd"]
    assert s.program("keep")["pid"] == before["keep"]["pid"]
    assert "drop" not in s.status() and not psutil.pid_exists(before["drop"]["pid"])


def test_orphans_of_a_program_are_killed_when_it_dies(system, tmp_path):
    pids = tmp_path / "family"
    s = system({"family": helper("spawn_family.py", pids, "exit", restart="never")})
    wait_until(pids.exists)
    child, daemon = (int(p) for p in pids.read_text().split())
    s.wait_event("event.program_exited", program="family")
    for pid in (child, daemon):
        wait_until(lambda: not psutil.pid_exists(pid), 30, what=f"orphan {pid} to be gone")


def test_a_new_controller_stops_what_a_killed_one_left(system):
    s = system({"echo": helper("echo_client.py", "echo", client="echo")})
    old = s.wait_state("echo", "RUNNING", registered=True)["pid"]
    s.replace_controller()
    wait_until(lambda: not psutil.pid_exists(old), 20, what="the leftover program to be stopped")
    assert s.wait_state("echo", "RUNNING", registered=True)["pid"] != old
    assert "left running: echo" in s.controller.log.read_text()


def test_sigterm_stops_programs_in_reverse_order_and_exits_zero(system):
    s = system({"a": helper("crash_after.py", 600), "b": helper("crash_after.py", 600, depends_on=["a"]),
                "c": helper("ignore_sigterm.py", depends_on=["b"], stop_timeout=0.5)})
    pids = [s.wait_state(name, "RUNNING")["pid"] for name in ("a", "b", "c")]
    assert s.controller.stop() == 0
    order = [obj["program"] for topic, obj in s.events.items if topic == "event.program_exited"]
    assert order == ["c", "b", "a"]
    assert s.events.find("event.program_exited", program="c")["signal"] == "SIGKILL"
    assert not any(psutil.pid_exists(pid) for pid in pids)


def test_a_program_that_hangs_just_before_a_server_restart_is_found_and_replaced(system):
    from runcontrol.errors import RunControlError
    s = system({"echo": helper("echo_client.py", "echo", client="echo")})
    before = s.wait_state("echo", "RUNNING", registered=True)
    s.server.pin_ports()
    os.killpg(before["pid"], signal.SIGSTOP)  # hung, but not yet silent past the server's timeout ...
    s.server.kill()  # ... when the server dies: the new one never knew it
    s.server.start()

    def replaced():
        try:
            echo = s.program("echo")
        except RunControlError:
            return None
        return echo if echo["pid"] != before["pid"] and echo["registered"] else None
    echo = wait_until(replaced, 40, 0.3, what="the hung program replaced after the server restart")
    assert echo["restarts"] == 1
    assert "not registered with the server" in echo["last_exit"]["reason"]
    assert not psutil.pid_exists(before["pid"]) or psutil.Process(before["pid"]).status() == psutil.STATUS_ZOMBIE
