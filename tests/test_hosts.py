"""Several hosts on loopback: two real supervisord instances, run from what `run.py --export` writes, driven by
a real run controller; each host's agent registers and tells of exits at once."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

from tests.helpers import ROOT, System, env_for_children, free_port, helper, wait_until, write_experiment
from tests.hosts import Host, add_hosts


def participant(name, folder, host, **fields):
    return helper("participant.py", name, folder / f"{name}.jsonl", client=name, participant=True, host=host,
                  stop_timeout=2, **fields)


@pytest.fixture
def hosts_system(tmp_path, request):
    """A server and run controller here, `db` on host daq2, `board` (which needs db) on daq3, `here` locally;
    more programs as the test's parameter says."""
    path = write_experiment(tmp_path, "hosts", timeout=5.0, programs={
        "db": participant("db", tmp_path, "daq2"),
        "board": participant("board", tmp_path, "daq3", depends_on=["db"]),
        "here": helper("crash_after.py", 600), **getattr(request, "param", {})})
    add_hosts(path, ["daq2", "daq3"])
    hosts = {}
    system = None
    try:
        for name in ("daq2", "daq3"):
            hosts[name] = Host(path, name).start()
        system = System(path)
        system.hosts = hosts
        for name in ("db", "board"):
            system.wait_state(name, "RUNNING", timeout_s=30, registered=True)
        yield system
    finally:
        try:
            if system is not None:
                system.close()
        finally:
            for host in hosts.values():
                host.stop()


def pid_gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


FLAKY = {"flaky": helper("crash_after.py", 0.1, host="daq2", max_restarts=2, restart_window=60,
                         backoff={"initial": 0.1, "max": 0.2})}


@pytest.mark.parametrize("hosts_system", [FLAKY], indirect=True)
def test_programs_on_two_hosts_start_in_order_restart_and_take_part_in_runs(hosts_system, tmp_path):
    s = hosts_system
    started = [e["program"] for t, e in s.events.items if t == "event.program_started"]
    assert started.index("db") < started.index("board")  # dependency order across hosts
    status = s.op.request("run", "status")
    assert (status["programs"]["db"]["host"], status["programs"]["board"]["host"]) == ("daq2", "daq3")
    assert s.hosts["daq2"].info("db")["pid"] == status["programs"]["db"]["pid"]  # under that host's supervisord
    assert {"host.daq2", "host.daq3"} <= set(s.clients())  # the host agents
    wait_until(lambda: (s.program("db")["rss"] or 0) > 0, 20, 0.2, what="db's figures from its host's agent")
    figures = s.op.request("run", "status")["hosts"]["daq2"]
    assert figures["reachable"] and figures["programs"] == ["db", "flaky"] and figures["figures"]["disk_free"] > 0
    assert figures["figures"]["data_path"] == str(s.hosts["daq2"].folder / "data")  # where its programs write
    fatal = s.wait_event("event.program_fatal", program="flaky")  # a remote crash loop ends FATAL, with its alarm
    assert fatal["host"] == "daq2" and "needed 3 restarts within 60 s" in fatal["reason"]
    tail = [line for line in fatal["tail"] if "exiting" in line]
    assert tail[-2:] == ["up, exiting in 0.1 s", "exiting now"]  # the last lines of its log on daq2, once each

    first = s.program("db")["pid"]
    os.kill(first, signal.SIGKILL)
    s.wait_event("event.program_exited", program="db", host="daq2", signal="a signal")
    again = s.wait_state("db", "RUNNING", registered=True, restarts=1)
    assert again["pid"] != first and s.hosts["daq2"].info("db")["pid"] == again["pid"]

    hung = s.program("board")["pid"]
    os.kill(hung, signal.SIGSTOP)  # silent: its heartbeats stop, the server says it is lost
    replaced = s.wait_state("board", "RUNNING", timeout_s=40, registered=True, restarts=1)
    assert replaced["pid"] != hung and pid_gone(hung)

    restarted = s.op.request("run", "restart", program="db", timeout=30)["db"]  # an operator's order, on another host
    assert restarted["state"] == "RUNNING" and restarted["pid"] not in (again["pid"], None)

    ready = s.op.request("run", "prepare_run")
    assert ready["participants"] == ["board", "db"]
    s.op.request("run", "begin_run")
    assert s.op.request("run", "end_run")["state"] == "STOP"

    description = json.loads(s.path.read_text())   # reload: db changed, a program added on daq2
    description["programs"]["db"]["env"] = {"ROUND": "2"}
    description["programs"]["extra"] = helper("crash_after.py", 600, host="daq2")
    s.path.write_text(json.dumps(description))
    s.hosts["daq2"].export()   # what a host runs comes from its folder: exported again after a change there
    diff = s.op.request("run", "reload")
    assert (diff["changed"], diff["added"]) == (["db"], ["extra"])
    again = wait_until(lambda: (p := s.program("db"))["state"] == "RUNNING" and p["registered"]
                       and p["pid"] != restarted["pid"] and p, 30, 0.2, what="db restarted by the reload")
    assert s.hosts["daq2"].info("db")["pid"] == again["pid"]   # restarted there, as changed
    assert psutil.Process(again["pid"]).environ().get("ROUND") == "2"
    extra = s.wait_state("extra", "RUNNING")
    assert extra["host"] == "daq2" and s.hosts["daq2"].info("extra")["pid"] == extra["pid"]

    s.op.close()
    assert s.controller.stop() == 0
    stopped = [e["program"] for t, e in s.events.items if t == "event.program_exited" and e["program"] in
               ("db", "board") and e["pid"] in (again["pid"], replaced["pid"])]
    assert stopped == ["board", "db"]  # dependents first, across hosts
    for host, program in (("daq2", "db"), ("daq3", "board")):
        assert s.hosts[host].info(program)["statename"] == "STOPPED"
    assert pid_gone(again["pid"]) and pid_gone(replaced["pid"])
    s.controller.stop = lambda: 0  # stopped already


def host_line(lines, host):
    """The words of `host`'s line in status.py's hosts table: host, state, load, cpu%, mem%, free, progs, problem."""
    return next(line.split() for line in lines if line.split()[:1] == [host])


def size_of(text):
    """Bytes of a size as status.py shows it (45G, 812M...), and the size of one unit of its last digit."""
    unit = 1024 ** "BKMG".index(text[-1])
    return float(text[:-1]) * unit, unit


def assert_plausible_figures(words, folder):
    """A host line's load, CPU, memory and free space, held against this machine's (the hosts of the test are it)."""
    load, cpu, memory, (free, unit) = float(words[2]), int(words[3]), int(words[4]), size_of(words[5])
    assert abs(load - os.getloadavg()[0]) <= 1 + os.getloadavg()[0] / 2, words
    assert 0 <= cpu <= 100 and abs(memory - psutil.virtual_memory().percent) <= 15, words
    assert abs(free - shutil.disk_usage(folder).free) <= max(unit, shutil.disk_usage(folder).free / 10), words


ENDED = {"ended": helper("crash_after.py", 600, host="daq3")}


@pytest.mark.parametrize("hosts_system", [ENDED], indirect=True)
def test_a_lost_host_is_unknown_then_adopts_what_runs_there_restarts_what_ended_and_a_new_controller_adopts(
        hosts_system, tmp_path):
    s = hosts_system
    s.wait_state("ended", "RUNNING")
    wait_until(lambda: (s.op.request("run", "status")["hosts"]["daq2"]["figures"] or {}).get("load"), 20, 0.2,
               what="daq2's figures from its agent")
    before = s.status()
    s.hosts["daq3"].pause()
    try:
        lost = s.wait_event("event.host_unreachable", host="daq3")
        assert lost["programs"] == ["board", "ended"] and lost["error"] == "timed out"   # it holds the connection
        os.kill(before["ended"]["pid"], signal.SIGKILL)   # ends while its host is away
        status = s.op.request("run", "status")
        assert status["programs"]["board"]["state"] == "UNKNOWN" and status["programs"]["db"]["state"] == "RUNNING"
        assert not status["hosts"]["daq3"]["reachable"] and status["hosts"]["daq2"]["reachable"]
        alarm = s.wait_event("event.alarm_raised", alarm="host.daq3.unreachable")   # built in
        assert alarm["severity"] == "alarm" and "host daq3 cannot be reached: timed out" in alarm["message"]
        shown = subprocess.run([sys.executable, "status.py", "--once", "--experiment", str(s.path)], cwd=ROOT,
                               env={**env_for_children(), "COLUMNS": "150", "LINES": "40"}, capture_output=True,
                               text=True, timeout=60)
        lines = shown.stdout.splitlines()
        assert any(line.split()[:3] == ["board", "UNKNOWN", str(before["board"]["pid"])] for line in lines)
        daq2, daq3 = host_line(lines, "daq2"), host_line(lines, "daq3")   # a line per host
        assert (daq2[:2], daq2[6:]) == (["daq2", "up"], ["1/1"]), shown.stdout   # every figure shown
        assert_plausible_figures(daq2, tmp_path)
        assert (daq3[:2], daq3[-3:]) == (["daq3", "LOST"], ["0/2", "timed", "out"]), shown.stdout   # with the error
        assert "host daq3 cannot be reached" in shown.stdout  # the alarm among the events
    finally:
        s.hosts["daq3"].resume()
    s.wait_event("event.host_reachable", host="daq3")
    s.wait_event("event.alarm_cleared", alarm="host.daq3.unreachable")
    back = s.wait_state("board", "RUNNING", registered=True)
    assert (back["pid"], back["restarts"]) == (before["board"]["pid"], 0)  # adopted, not restarted
    again = s.wait_state("ended", "RUNNING", restarts=1)   # what ended there meanwhile is started again
    assert again["pid"] != before["ended"]["pid"] and s.hosts["daq3"].info("ended")["pid"] == again["pid"]
    description = json.loads(s.path.read_text())   # reload without it: it is stopped there
    del description["programs"]["ended"]
    s.path.write_text(json.dumps(description))
    assert s.op.request("run", "reload")["removed"] == ["ended"]
    wait_until(lambda: s.hosts["daq3"].info("ended")["statename"] == "STOPPED", 20, 0.1, what="ended to stop")

    s.replace_controller()
    for name in ("db", "board"):
        adopted = s.wait_state(name, "RUNNING", timeout_s=30, registered=True)
        assert (adopted["pid"], adopted["restarts"]) == (before[name]["pid"], 0)
        assert adopted["uptime"] >= before[name]["uptime"]  # its uptime goes on
    s.wait_event("event.program_started", program="board", adopted=True)

    s.hosts["daq3"].pause()  # the experiment stopped while a host is away: the stop ends, that host's program left
    try:
        s.wait_event("event.host_unreachable", host="daq3")
        s.op.close()
        assert s.controller.stop() == 0
        log = s.controller.log.read_text()
        assert "board: daq3's supervisord cannot be reached to kill it" in log
        assert s.hosts["daq2"].info("db")["statename"] == "STOPPED"
    finally:
        s.hosts["daq3"].resume()
    s.controller.stop = lambda: 0  # stopped already; daq3's supervisord stops board when the test ends


def retries(log, host):
    """The delays before each new try of `host`'s supervisord, as the run controller's log says them."""
    return [float(delay) for delay in re.findall(rf"host {host}: trying its supervisord again in ([0-9.]+) s",
                                                 log.read_text())]


def test_a_host_whose_supervisord_was_killed_and_started_again_runs_each_program_once(hosts_system):
    """A killed supervisord leaves its programs behind; started again, its agent stops them and the run
    controller starts them anew there: one of each, under the new supervisord."""
    s = hosts_system
    host = s.hosts["daq3"]
    old = s.program("board")["pid"]
    os.kill(host.proc.pid, signal.SIGKILL)
    host.proc.wait(10)
    lost = s.wait_event("event.host_unreachable", host="daq3")
    assert "Connection refused" in lost["error"]
    assert psutil.Process(old).is_running()  # left behind, still registered as board
    tries = wait_until(lambda: (found := retries(s.controller.log, "daq3"))[2:] and found, 20, 0.1,
                       what="three tries of daq3's supervisord")
    assert tries[:3] == [0.5, 1, 2]  # ever farther apart (up to 10 s)
    host.start()
    new = s.wait_state("board", "RUNNING", timeout_s=40, registered=True)
    assert new["pid"] != old and host.info("board")["pid"] == new["pid"]
    wait_until(lambda: pid_gone(old), 20, what="the agent to stop what the killed supervisord left")
    exited = s.wait_event("event.program_exited", program="board", pid=old)
    assert "daq3's supervisord was restarted" in exited["error"]


PROBED_PORT = free_port()
PROBED = {"probed": helper("probed.py", PROBED_PORT, host="daq2",
                           liveness={"tcp": f"127.0.0.1:{PROBED_PORT}", "send": "status\n", "expect": "ok",
                                     "period": 0.3, "failures": 2, "initial_delay": 1})}


@pytest.mark.parametrize("hosts_system", [PROBED], indirect=True)
def test_a_program_of_another_host_is_probed_there_and_replaced_when_it_hangs(hosts_system):
    """No client name: only its probe, run by the host's agent, can tell that it hangs."""
    s = hosts_system
    first = s.wait_state("probed", "RUNNING", timeout_s=30)["pid"]
    log = s.hosts["daq2"].folder / "log" / "probed.log"
    wait_until(lambda: log.exists() and log.read_text().count("asked") >= 3, 30, what="the agent's probes")
    os.kill(first, signal.SIGSTOP)
    exited = s.wait_event("event.program_exited", program="probed", pid=first, timeout_s=40)
    assert "liveness probe tcp" in exited["reason"] and "(on daq2)" in exited["reason"], exited
    again = s.wait_state("probed", "RUNNING", timeout_s=40, restarts=1)
    assert again["pid"] != first and s.hosts["daq2"].info("probed")["pid"] == again["pid"]
    wait_until(lambda: pid_gone(first), 30, what="the stopped process to be gone")
