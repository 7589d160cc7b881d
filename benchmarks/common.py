"""What the benchmarks share: a real server process, percentiles, process clean-up."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runcontrol.bus import discovery  # noqa: E402
from tests.helpers import free_port  # noqa: E402,F401  (the tests' own: one finder of free ports)


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
    """`python -m runcontrol.server` on ephemeral loopback ports, found by its beacon."""

    def __init__(self, heartbeat=5.0, timeout=30.0, name=None, curve=False, **server):
        self.folder = Path(tempfile.mkdtemp(prefix="orbit-bench-"))
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

    def start(self):
        listener = discovery.BeaconListener(self.port, experiment=self.name)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "runcontrol.bus.server", "--experiment",
                                          str(self.path), "--log-level", "WARNING"],
                                         cwd=ROOT, start_new_session=True)
            beacon = listener.wait(15)
        finally:
            listener.close()
        if beacon is None:
            self.stop()
            raise RuntimeError("the server did not start")
        self.router = beacon.router
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def stop_all(processes):
    """Terminate multiprocessing children still running, then join them."""
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def stop_group(proc, grace_s=20):
    """SIGTERM to a Popen started in its own session, SIGKILL to its group after `grace_s`; reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate, timeout_s, interval_s=0.05):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(interval_s)
