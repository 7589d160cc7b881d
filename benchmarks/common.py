"""What the benchmarks share: a real server process, percentiles, process clean-up, scratch folders.

Every port comes from `free_port()` (the block of loopback ports the test suite's tests/ports.py gives this
process) or from binding port 0; every process a benchmark starts is stopped by `stop_group`, `stop_all` or
`BenchServer.stop`, with whatever it started in turn. The figures are recorded by figures.Report.
"""

import atexit
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runcontrol import discovery, protocol  # noqa: E402
from tests.helpers import free_port  # noqa: E402,F401  (the tests' own: one finder of free ports)

HELPER_S = 900.0   # a helper process that sends traffic gives up after this long, should its benchmark not stop it


def deadline(seconds=HELPER_S):
    return time.monotonic() + seconds


def scratch(prefix):
    """A new folder under the system's temporary folder, removed when the benchmark exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    parent = os.getpid()
    atexit.register(lambda: os.getpid() == parent and shutil.rmtree(folder, ignore_errors=True))
    return folder


def exit_on_sigterm():
    """SIGTERM (a `timeout`, a CI stop) unwinds like an exception, so every finally stops its processes.

    Forked helpers inherit the handler; in them SIGTERM simply ends the process.
    """
    parent = os.getpid()

    def on_sigterm(*_):
        if os.getpid() != parent:
            os._exit(1)
        sys.exit(1)
    signal.signal(signal.SIGTERM, on_sigterm)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class BenchServer:
    """`python -m runcontrol.bus.server` on ephemeral loopback ports, found by its beacon."""

    def __init__(self, heartbeat=5.0, timeout=30.0, name=None, curve=False, **server):
        self.folder = scratch("orbit-bench-")
        self.name = name or f"bench-{os.getpid()}"
        self.port = free_port()   # its beacon's
        self.path = self.folder / f"{self.name}.json"
        self.path.write_text(json.dumps({
            "name": self.name,
            "server": {"router": "tcp://127.0.0.1:0", "events": "tcp://127.0.0.1:0",
                       "beacon": {"port": self.port, "interval": 0.5},
                       "heartbeat": heartbeat, "timeout": timeout, **server},
            "paths": {"logs": "log", "data": "data", "state": "state"}}))
        if curve:  # CURVE keys for the server and (as operator) every client
            description = json.loads(self.path.read_text())
            description["server"]["curve"] = {"server_key": "keys/server.key", "clients": "keys/clients"}
            self.path.write_text(json.dumps(description))
            from runcontrol.bus import keys
            import experiments
            keys.make_all(experiments.load(self.path))
        self.proc = None
        self.router = None
        self.startup_s = None   # Popen -> its first beacon heard

    def start(self):
        listener = discovery.BeaconListener(self.port, experiment=self.name)
        try:
            began = time.perf_counter()
            self.proc = subprocess.Popen([sys.executable, "-m", "runcontrol.bus.server", "--experiment",
                                          str(self.path), "--log-level", "WARNING"],
                                         cwd=ROOT, start_new_session=True)
            beacon = listener.wait(15)
            self.startup_s = time.perf_counter() - began
        finally:
            listener.close()
        if beacon is None:
            self.stop()
            raise RuntimeError("the server did not start")
        self.router = beacon.router
        return self

    def stop(self):
        if self.proc is not None:
            stop_group(self.proc, 10, group=True)


def stop_all(processes):
    """Terminate multiprocessing children still running, then join them (SIGKILL after 10 s)."""
    processes = [p for p in processes if p is not None and p.pid is not None]
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def stop_group(proc, grace_s=20, group=False):
    """Stop a Popen started in its own session: SIGTERM (to it, or with `group` to its whole group), SIGKILL to
    its group after `grace_s`, reaped; then SIGKILL to any process it started that is still there (a program
    it supervised in a session of its own, say)."""
    family = []
    if proc.poll() is None:
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
        try:
            os.killpg(proc.pid, signal.SIGTERM) if group else proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for child in family:
        try:
            child.kill()   # psutil checks the pid still names the process it found: a reused pid is left alone
        except psutil.Error:
            pass


def wait_for(predicate, timeout_s, interval_s=0.05):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(interval_s)


PARTICIPANTS_REGISTER_S = 60.0   # how long a helper's participants may take to be welcomed


def serve_participants(router, names, ready, order_of=None):
    """Serve `names` as run participants on bare sockets (one process, as many sockets as names) until SIGTERM or
    the benchmark's deadline: register each (with its order from `order_of`, if given), put how many were welcomed
    on `ready` (0 when not all within PARTICIPANTS_REGISTER_S), answer pings and acknowledge every `_transition` at once."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # 250 sockets and their mailboxes
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(names) + 64)
    poller = zmq.Poller()
    socks = []
    for name in names:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(router)
        sock.send(orjson.dumps({"cmd": "_hello", "name": name, "id": "h", "pid": os.getpid(),
                                "meta": {"participant": True, **({"order": order_of[name]} if order_of else {})}}))
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    welcome_by = time.monotonic() + PARTICIPANTS_REGISTER_S
    for sock in socks:
        if not sock.poll(max(0, int(1000 * (welcome_by - time.monotonic())))):
            ready.put(0)   # not welcomed in time: the benchmark counts too few and gives up
            return
        sock.recv()   # the welcome
    ready.put(len(socks))
    until = deadline()
    while time.monotonic() < until:
        for sock, _ in poller.poll(1000):
            while True:
                try:
                    msg = orjson.loads(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if msg.get("cmd") == "_ping":
                    sock.send(orjson.dumps({"cmd": "_pong", "re": msg.get("id")}))
                elif msg.get("cmd") == "_transition":
                    sock.send(orjson.dumps({"cmd": "_reply", "re": msg["id"], "to": msg["from"], "ok": True,
                                            "result": {"state": msg["transition"], "run": msg["run"]}}))


class BareAsker:
    """A raw DEALER client of the server that asks every participant at once and waits for every reply."""

    def __init__(self, router, names):
        self.names = names
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(router)
        self.sock.send(orjson.dumps({"cmd": "_hello", "name": f"bench-bare-{os.getpid()}", "id": "h"}))
        self.receive(lambda msg: msg.get("re") == "h", 10)
        self.round = 0

    def ask_all(self, timeout_s=10):
        """Seconds from the first `_transition` sent to the last reply received."""
        self.round += 1
        waiting = {f"{self.round}-{i}" for i in range(len(self.names))}
        started = time.perf_counter()
        for i, name in enumerate(self.names):
            self.sock.send(orjson.dumps({**protocol.make_transition("begin", self.round), "to": name,
                                         "id": f"{self.round}-{i}"}))
        while waiting:
            msg = self.receive(lambda msg: msg.get("cmd") == "_reply", timeout_s)
            if not msg.get("ok"):
                raise RuntimeError(f"a participant refused: {msg}")
            waiting.discard(msg.get("re"))
        return time.perf_counter() - started

    def receive(self, wanted, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            msg = orjson.loads(self.sock.recv())
            if msg.get("cmd") == "_ping":
                self.sock.send(orjson.dumps({"cmd": "_pong", "re": msg.get("id")}))
            elif wanted(msg):
                return msg
        raise RuntimeError(f"no answer within {timeout_s} s")

    def close(self):
        self.sock.send(b'{"cmd":"_bye"}')
        self.sock.close()
        self.ctx.term()
