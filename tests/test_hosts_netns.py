"""Several real hosts: the server and run controller in one network namespace, a real supervisord in each of two
others, joined by a bridge; the bus with CURVE; clients find the server by its beacon on the bridge's broadcast
address. Skipped with the reason where namespaces cannot be made (the loopback variant, test_hosts.py, always runs)."""

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from runcontrol import process
from tests import netns
from tests.helpers import ROOT, env_for_children, helper, wait_until

WHY_NOT = netns.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
PASSWORD = "n3tw0rk"
ASK = """import json, sys, xmlrpc.client
proxy = xmlrpc.client.ServerProxy(sys.argv[1])
print(json.dumps(getattr(proxy.supervisor, sys.argv[2])(*sys.argv[3:])))"""


class Site:
    """The experiment `net` on three namespaces: ctl (server, run controller), daq2 and daq3 (supervisord)."""

    def __init__(self, folder):
        self.folder = folder
        self.net = netns.Network(["ctl", "daq2", "daq3"])
        self.procs = {}
        self.path = folder / "net.json"
        (folder / "keys").mkdir()
        (folder / "keys" / "host.pass").write_text(PASSWORD + "\n")
        ctl = self.net.address["ctl"]
        self.urls = {h: f"http://{self.net.address[h]}:9001/RPC2" for h in ("daq2", "daq3")}
        self.path.write_text(json.dumps({
            "name": "net", "paths": {"logs": "log", "data": "data", "state": "state"},
            "server": {"router": f"tcp://{ctl}:9820", "events": f"tcp://{ctl}:9821",
                       "beacon": {"address": self.net.broadcast, "port": 7886, "interval": 0.5},
                       "heartbeat": 0.5, "timeout": 5.0,
                       "curve": {"server_key": "keys/server.key", "clients": "keys/clients"}},
            "hosts": {h: {"supervisord": url, "username": "orbit", "password_file": "keys/host.pass"}
                      for h, url in self.urls.items()},
            "programs": {
                "db": helper("participant.py", "db", folder / "db.jsonl", client="db", participant=True, host="daq2",
                             stop_timeout=2),
                "board": helper("participant.py", "board", folder / "board.jsonl", client="board", participant=True,
                                host="daq3", depends_on=["db"], stop_timeout=2)}}))
        self.tool(["-m", "runcontrol.bus.keys", str(self.path)])
        for host in ("daq2", "daq3"):
            self.tool(["run.py", str(self.path), "--export", host, str(folder / host)])

    def tool(self, args, where=None):
        argv = [sys.executable, *args]
        done = subprocess.run(self.net.run(where, argv) if where else argv, cwd=ROOT, env=env_for_children(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, name, where, args, cwd=ROOT):
        with open(self.folder / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(self.net.run(where, [sys.executable, *args]), cwd=cwd,
                                                env=env_for_children(), stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        return self.procs[name]

    def start_supervisord(self, host):
        self.start(f"supervisord-{host}", host, ["-m", "supervisor.supervisord", "-n", "-c",
                                                  str(self.folder / host / "supervisord.conf")], self.folder / host)
        wait_until(lambda: self.rpc_ok(host), 30, 0.2, what=f"{host}'s supervisord")

    def rpc(self, host, method, *args):
        url = self.urls[host].replace("http://", f"http://orbit:{PASSWORD}@")
        return json.loads(self.tool(["-c", ASK, url, method, *args], "ctl"))

    def rpc_ok(self, host):
        try:
            return self.rpc(host, "getState")["statename"] == "RUNNING"
        except AssertionError:
            return False

    def send(self, *args):
        return json.loads(self.tool(["send.py", "--experiment", str(self.path), *args], "ctl"))

    def status(self):
        return self.send("run", "status")

    def wait_state(self, name, state, timeout_s=40, **more):
        def check():
            try:
                info = self.status()["programs"][name]
            except AssertionError:
                return None
            return info if info["state"] == state and all(info.get(k) == v for k, v in more.items()) else None
        return wait_until(check, timeout_s, 0.3, what=f"{name} {state} {more}")

    def events(self, kind):
        return [e for e in self.send("server", "_logs", "n=500") if e.get("kind") == kind]

    def start_controller(self):
        return self.start("controller", "ctl", ["-m", "runcontrol.control.controller", "--experiment", str(self.path)])

    def left_in_namespaces(self):
        return {name: subprocess.run(["ip", "netns", "pids", space], capture_output=True, text=True).stdout.split()
                for name, space in self.net.spaces.items()}

    def close(self):
        try:
            for proc in reversed(list(self.procs.values())):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGCONT)
                    process.stop_group(proc, 20)
            for pids in self.left_in_namespaces().values():  # nothing may outlive the test
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        finally:
            self.net.close()


@pytest.fixture
def site(tmp_path):
    made = Site(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_two_real_hosts_on_a_bridge_driven_by_one_run_controller(site):
    for host in ("daq2", "daq3"):
        site.start_supervisord(host)
    site.start("server", "ctl", ["-m", "runcontrol.bus.server", "--experiment", str(site.path)])
    site.start_controller()
    db = site.wait_state("db", "RUNNING", 60, registered=True)
    board = site.wait_state("board", "RUNNING", 60, registered=True)
    started = [e["program"] for e in reversed(site.events("program_started"))]  # _logs gives the newest first
    assert started.index("db") < started.index("board")
    assert site.rpc("daq2", "getProcessInfo", "db")["pid"] == db["pid"]
    names = {c["name"] for c in site.send("server", "_list")}
    assert {"host.daq2", "host.daq3", "db", "board", "run"} <= names

    os.kill(db["pid"], signal.SIGKILL)
    db = site.wait_state("db", "RUNNING", registered=True, restarts=1)
    os.kill(board["pid"], signal.SIGSTOP)
    hung = board["pid"]
    board = site.wait_state("board", "RUNNING", 60, registered=True, restarts=1)
    assert board["pid"] != hung

    assert site.send("run", "prepare_run")["participants"] == ["board", "db"]
    site.send("run", "begin_run")
    assert site.send("run", "end_run")["state"] == "STOP"

    supervisord3 = site.procs["supervisord-daq3"]
    supervisord3.send_signal(signal.SIGSTOP)  # daq3's supervisord stops answering
    try:
        site.wait_state("board", "UNKNOWN")
        assert site.status()["programs"]["db"]["state"] == "RUNNING"
        alarm = site.events("host_unreachable")[0]
        assert (alarm["host"], alarm["error"], alarm["programs"]) == ("daq3", "timed out", ["board"])
    finally:
        supervisord3.send_signal(signal.SIGCONT)
    back = site.wait_state("board", "RUNNING", registered=True)
    assert (back["pid"], back["restarts"]) == (board["pid"], 1)  # adopted

    site.procs["controller"].kill()
    site.procs["controller"].wait(10)
    site.start_controller()
    for name, before in (("db", db), ("board", board)):
        again = site.wait_state(name, "RUNNING", 60, registered=True)
        assert (again["pid"], again["restarts"]) == (before["pid"], 0)  # the successor adopts, restarts nothing

    code, killed = process.stop_group(site.procs["controller"], 30)
    assert (code, killed) == (0, False)
    assert site.rpc("daq2", "getProcessInfo", "db")["statename"] == "STOPPED"
    assert site.rpc("daq3", "getProcessInfo", "board")["statename"] == "STOPPED"
    for name in ("supervisord-daq2", "supervisord-daq3", "server"):
        assert process.stop_group(site.procs[name], 20)[1] is False
    assert site.left_in_namespaces() == {"ctl": [], "daq2": [], "daq3": []}
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in (db["pid"], board["pid"]))
