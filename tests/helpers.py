"""What tests share: waiting on conditions, a real server process, raw sockets, helper programs."""

import fcntl
import json
import os
import shutil
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import zmq

from runcontrol.client.client import Client
from runcontrol.errors import RunControlError
from runcontrol import pidfile, process
from runcontrol import discovery
from tests import ports

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"


def wait_until(predicate, timeout_s=10.0, interval_s=0.02, what=None):
    """Poll `predicate` until it returns something true; return it, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(interval_s)


def pump(clients, predicate, timeout_s=10.0):
    """Poll in-process clients in turn until `predicate` holds (each client is single-threaded)."""
    def step():
        for client in clients:
            client.poll(0.02)
        return predicate()
    return wait_until(step, timeout_s, interval_s=0)


# Every process a test starts carries this in its environment (and so do their children),
# so the orphan check finds them even when they were handed to init.
TEST_TAG = "ORBIT_TEST_TAG"
os.environ[TEST_TAG] = f"{os.getpid()}-{random.randrange(1 << 30)}"  # one per pytest process (xdist worker)
# One for the whole run, workers included (they inherit it): what an interrupted run left is found by it.
RUN_TAG = "ORBIT_TEST_RUN"
os.environ.setdefault(RUN_TAG, f"{os.getpid()}-{random.randrange(1 << 30)}")


def tagged_processes(tag=TEST_TAG):
    """Live processes (not zombies) whose environment carries this test session's tag (or `tag`), except this one."""
    mark = f"{tag}={os.environ[tag]}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if mark not in environ.read().split(b"\0"):
                    continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def env_for_children():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("ORBIT_SERVER", None)
    env.pop("ORBIT_EXPERIMENT", None)
    return env


def free_beacon_port():
    """A UDP port for an experiment's beacons that no other test (and no other suite) uses."""
    return ports.port()


def free_port():
    """A loopback TCP port that nothing listens on now and no other test (or suite) is given."""
    return ports.port()


def apt_install(packages, commands):
    """Install Debian `packages` unless every one of `commands` is found; one apt-get at a time across the test
    workers (they share dpkg's lock). None when nothing had to be installed, else apt-get's CompletedProcess."""
    with open("/tmp/orbit-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(shutil.which(c) for c in commands):
            return None
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"]
        return subprocess.run([*command, *packages], capture_output=True, timeout=600,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def write_experiment(folder, name, router="tcp://127.0.0.1:0", events="tcp://127.0.0.1:0",
                     beacon_port=None, heartbeat=0.5, timeout=3.0, programs=None, alarms=None, notify=None,
                     catalog=None, **server):
    path = Path(folder) / f"{name}.json"
    description = {
        "name": name,
        "server": {"router": router, "events": events,
                   "beacon": {"port": beacon_port or free_beacon_port(), "interval": 0.5},
                   "heartbeat": heartbeat, "timeout": timeout, **server},
        "paths": {"logs": "log", "data": "data", "state": "state"},
        "programs": programs or {},
        **({"alarms": alarms} if alarms else {}),
        **({"notify": notify} if notify else {}),
        **({"catalog": catalog} if catalog else {}),
    }
    path.write_text(json.dumps(description), encoding="utf-8")
    return path


def helper(script, *args, **fields):
    """A program entry of an experiment running tests/programs/<script>."""
    return {"cmd": ["python", str(PROGRAMS / script), *map(str, args)], **fields}


class ControllerProcess:
    """A real `python -m runcontrol.control.controller` for an experiment file; its log beside the file."""

    def __init__(self, experiment_path):
        self.path = Path(experiment_path)
        self.log = self.path.parent / "controller.log"
        self.proc = None

    def start(self):
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runcontrol.control.controller", "--experiment", str(self.path)],
                cwd=ROOT, env=env_for_children(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self

    def stop(self, timeout_s=30.0):
        """SIGTERM (it stops its programs first); returns the exit status."""
        code, killed = process.stop_group(self.proc, timeout_s)
        assert not killed, f"run controller ignored SIGTERM: {self.log.read_text()[-2000:]}"
        return code

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class ServerProcess:
    """A real `python -m runcontrol.bus.server` for one experiment file, found by its beacon."""

    def __init__(self, experiment_path):
        self.path = Path(experiment_path)
        self.description = json.loads(self.path.read_text())
        self.name = self.description["name"]
        self.beacon_port = self.description["server"]["beacon"]["port"]
        self.pidfile = self.path.parent / "state" / "server.pid"
        self.proc = None
        self.beacon = None
        self.log = self.path.parent / f"{self.name}.server.log"

    def start(self, timeout_s=15.0):
        listener = discovery.BeaconListener(self.beacon_port, experiment=self.name)
        try:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(self.path)],
                    cwd=ROOT, env=env_for_children(), stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
            deadline = time.monotonic() + timeout_s
            while True:
                beacon = listener.wait(0.2)
                if beacon is not None and beacon.pid == self.proc.pid:
                    self.beacon = beacon
                    return self
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")
        finally:
            listener.close()

    @property
    def router(self):
        return self.beacon.router

    @property
    def events(self):
        return self.beacon.events

    def pin_ports(self):
        """Make the next start bind the same addresses as this one."""
        self.description["server"]["router"] = self.router
        self.description["server"]["events"] = self.events
        self.path.write_text(json.dumps(self.description))

    def signal(self, signum):
        process.signal_group(self.proc.pid, signum)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s=10.0):
        """SIGTERM; the exit status (0 for an orderly stop). Fails when it had to be killed."""
        if self.proc is None:
            return None
        code, killed = process.stop_group(self.proc, timeout_s)
        assert not killed, f"server ignored SIGTERM: {self.log.read_text()[-2000:]}"
        return code

    def pid_in_file(self):
        return pidfile.read(self.pidfile)


class RawClient:
    """A foreign client speaking the wire protocol over a bare DEALER socket."""

    def __init__(self, router, ctx=None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(router)
        self.seq = 0

    def send(self, msg):
        self.sock.send(msg if isinstance(msg, bytes) else json.dumps(msg).encode())

    def send_frames(self, frames):
        self.sock.send_multipart(frames)

    def recv(self, timeout_s=5.0):
        if not self.sock.poll(timeout_s * 1000):
            raise AssertionError(f"no message within {timeout_s} s")
        return json.loads(self.sock.recv())

    def recv_until(self, predicate, timeout_s=5.0):
        """The first message matching `predicate` (skipping heartbeat pings)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching message in time")
            msg = self.recv(remaining)
            if msg.get("cmd") == "_ping" and "id" not in msg:
                self.send({"cmd": "_pong"})
            if predicate(msg):
                return msg

    def request(self, msg, timeout_s=5.0):
        self.seq += 1
        msg = {**msg, "id": f"raw-{self.seq}"}
        self.send(msg)
        return self.recv_until(lambda m: m.get("re") == msg["id"], timeout_s)

    def until_pong(self, timeout_s=10.0):
        """Every message that arrives before the answer to a ping sent now (the server answers in order)."""
        self.seq += 1
        marker = f"raw-pong-{self.seq}"
        self.send({"cmd": "_ping", "id": marker})
        seen = []
        while True:
            msg = self.recv(timeout_s)
            if msg.get("cmd") == "_pong" and msg.get("re") == marker:
                return seen
            seen.append(msg)

    def hello(self, name, **extra):
        return self.request({"cmd": "_hello", "name": name, "pid": os.getpid(), **extra})

    def close(self):
        self.sock.close(linger=0)


class EventWatcher:
    """Collects event-stream messages in a background thread."""

    def __init__(self, events_address, prefix=""):
        self.items = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(events_address, prefix), daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self, address, prefix):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        sub.connect(address)
        self._ready.set()
        while not self._stop.is_set():
            if sub.poll(50):
                topic, data = sub.recv_multipart()
                self.items.append((topic.decode(), json.loads(data)))
        sub.close()
        ctx.term()

    def sync(self, router, timeout_s=10.0):
        """Wait until the subscription is live: announce a marker event until it comes through."""
        probe = RawClient(router)
        try:
            probe.hello(f"sync-{os.getpid()}-{time.monotonic_ns() % 10**9}")
            wait_until(lambda: probe.send({"cmd": "_event", "kind": "sync"}) or self.find("event.sync"),
                       timeout_s, interval_s=0.1, what="the event stream")
        finally:
            probe.send({"cmd": "_bye"})
            probe.close()
        return self

    def find(self, topic, **fields):
        for t, obj in list(self.items):
            if t == topic and all(obj.get(k) == v for k, v in fields.items()):
                return obj
        return None

    def wait_for(self, topic, timeout_s=10.0, **fields):
        return wait_until(lambda: self.find(topic, **fields), timeout_s, what=f"{topic} {fields}")

    def close(self):
        self._stop.set()
        self._thread.join(5)


def start_program(name, *args, log=None, env=None, cwd=None):
    """Start a helper program of tests/programs in its own session; output to `log` (a path)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen([sys.executable, str(PROGRAMS / name), *map(str, args)],
                                cwd=cwd or ROOT, env=env or env_for_children(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log:
            out.close()


def stop_process(proc, timeout_s=10.0):
    """SIGTERM to its group, SIGKILL after `timeout_s`; its exit status."""
    return process.stop_group(proc, timeout_s)[0]


def registered_names(router):
    """Names registered with the server at `router`, asked by a short-lived raw client."""
    raw = RawClient(router)
    try:
        raw.hello(f"probe-{os.getpid()}-{time.monotonic_ns() % 10**9}")
        return [c["name"] for c in raw.request({"cmd": "_list"})["result"]]
    finally:
        raw.send({"cmd": "_bye"})
        raw.close()


class Watchdog:
    """`python -m watchdog` keeping `python -m runcontrol.bus.server` for one experiment file."""

    def __init__(self, server, *options, command=None):
        self.pidfile = server.pidfile
        self.server = server
        self.log = server.path.parent / "watchdog.log"
        command = command or [sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(server.path),
                              "--pidfile", str(self.pidfile)]
        self.argv = [sys.executable, "-m", "watchdog", "--pidfile", str(self.pidfile), *options, "--", *command]
        self.proc = None

    def start(self):
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env_for_children(), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def output(self):
        return self.log.read_text()

    def server_pid(self):
        pid = pidfile.read(self.pidfile)
        return pid if pid and psutil.pid_exists(pid) else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


class System:
    """A server, a run controller over `programs`, an event watcher and an operator client."""

    def __init__(self, path):
        self.path = path
        self.server = ServerProcess(path).start()
        self.events = EventWatcher(self.server.events, "event.").sync(self.server.router)
        self.controller = ControllerProcess(path).start()
        self.op = Client("op", experiment=str(path))
        self.op.connect(10)
        wait_until(lambda: self.op.request(None, "_status") and "run" in self.clients(), 20, 0.1,
                   what="the run controller to register")

    def wait_event(self, topic, timeout_s=20.0, **fields):
        """Wait for an event while the operator client keeps answering its heartbeats."""
        return wait_until(lambda: self.op.poll(0.05) * 0 or self.events.find(topic, **fields), timeout_s, 0,
                          what=f"{topic} {fields}")

    def clients(self):
        return [c["name"] for c in self.op.request(None, "_list")]

    def replace_controller(self, meanwhile=None):
        """SIGKILL the run controller and start another (`meanwhile()` called between); wait until it answers."""
        self.controller.kill()
        if meanwhile is not None:
            meanwhile()
        self.controller = ControllerProcess(self.path).start()

        def answers():
            try:
                return self.op.request("run", "status", timeout=2)["controller"]["pid"] == self.controller.proc.pid
            except RunControlError:
                return False
        wait_until(answers, 30, 0.2, what="the new run controller")

    def status(self):
        return self.op.request("run", "status", timeout=10)["programs"]

    def program(self, name):
        return self.status()[name]

    def wait_state(self, name, state, timeout_s=20.0, **more):
        def check():
            info = self.program(name)
            return info if info["state"] == state and all(info.get(k) == v for k, v in more.items()) else None
        return wait_until(check, timeout_s, 0.1, what=f"{name} {state} {more}")

    def close(self):
        try:
            self.op.close()
            assert self.controller.stop() == 0
        finally:
            self.events.close()
            self.server.stop()


DAMICM_PROGRAMS = {"spy", "cryo", "vacuum", "bias", "board1", "board2", "lta1", "lta2", "monitor", "historian",
                   "logbook", "sequencer", "notifier", "shell", "web"}


def damicm_copy(folder, holds=None):
    """damicm.json with ports of its own (the server's, the boards' control ports, the web page's) and its files
    under `folder`;
    `holds`: alarm name -> a shorter hold time."""
    description = json.loads((ROOT / "damicm.json").read_text())
    for name, hold in (holds or {}).items():
        description["alarms"][name]["for"] = hold
    description["server"].update(router="tcp://127.0.0.1:0", events="tcp://127.0.0.1:0")
    description["server"]["beacon"]["port"] = free_beacon_port()
    boards = {}
    for program in description["programs"].values():
        program["cwd"] = str(ROOT)
        program["cmd"] = [boards.setdefault(arg, f"127.0.0.1:{free_port()}")
                          if arg.startswith(("127.0.0.1:71", "127.0.0.1:80")) else arg for arg in program["cmd"]]
        if "tcp" in program.get("liveness", {}):
            program["liveness"]["tcp"] = boards[program["liveness"]["tcp"]]
    path = folder / "damicm.json"
    path.write_text(json.dumps(description))
    shutil.copytree(ROOT / "sequences", folder / "sequences", dirs_exist_ok=True)   # found beside the file
    return path


class WebSite:
    """Plain HTTP to the web program at `url`."""

    def __init__(self, url, tls=None):
        self.url, self.tls = url, tls   # tls: an ssl.SSLContext for https

    def call(self, method, path, body=None, cookie=None, headers=None, raw=None):
        """(status, decoded JSON or text, headers) of one request; a 4xx or 5xx is an answer, not an exception."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            **({"Content-Type": "application/json"} if data is not None else {}),
            **({"Cookie": f"orbit_session={cookie}"} if cookie else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.tls) as response:
                return response.status, decode_http(response), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, decode_http(exc), exc.headers
        except urllib.error.URLError as exc:   # not listening (yet)
            return 0, {"error": str(exc)}, {}

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, {} if body is None and "raw" not in kw else body, **kw)

    def login(self, name, password):
        status, answer, headers = self.post("/api/login", {"name": name, "password": password})
        assert status == 200, answer
        return headers["Set-Cookie"].split("orbit_session=")[1].split(";")[0]

    def programs(self):
        status, snap, _ = self.get("/api/status")
        return snap["run"]["programs"] if status == 200 and snap.get("run") else {}


def decode_http(response):
    text = response.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text
