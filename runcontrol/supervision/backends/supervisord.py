"""Another host's supervisord as a backend: the programs of that host, run through its XML-RPC interface
(reaching it: supervisordrpc.py; the thread that carries out the orders: hostworker.py).

Must not decide when to start or stop anything: the supervisor does.
"""

import collections
import logging
import os
import signal
import xmlrpc.client

from runcontrol.supervision.backends.base import Backend, Exited
from runcontrol.supervision.backends.hostworker import POLL_S, HostWorker
from runcontrol.supervision.backends.supervisordrpc import UNREACHABLE, exited, proxy

log = logging.getLogger(__name__)


class RemoteProcess:
    """A program running under another host's supervisord: its name there and, once known, its pid."""

    __slots__ = ("name", "pid")

    def __init__(self, name):
        self.name, self.pid = name, None


class SupervisordBackend(Backend):
    """Programs of another host, run by its supervisord (its configuration from `run.py --export`).

    Orders go to supervisord from a worker thread, so a slow or dead host never blocks the
    controller's loop; what happens there (a start, an exit, the host lost or back) is handed to
    the loop as events through a pipe. Exits are learnt from the process list, read at once when
    the host's agent says a process changed state (`look`) and every POLL_S anyway. A start of a
    program that already runs there adopts it. What a program writes stays in its log on that
    host; its last lines come with its exit. At its first start, and at the start of a program a reload
    changed, what the host's supervisord.conf says now (exported again) is read anew, as `supervisorctl update`
    would.
    """

    adopts = True

    def __init__(self, host, poll_s=POLL_S):
        self.host, self.spec, self.poll_s = host.name, host, poll_s
        self.figures_seen = {}      # the host agent's last figures
        self._found = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._worker = HostWorker(host, poll_s, self._tell)

    @property
    def problem(self):
        return self._worker.problem

    # --- what the supervisor asks (from the loop's thread) --------------------------------------

    def spawn(self, spec, env):
        """Ask the host's supervisord to start `spec.name`; its environment is the exported one, not `env`.
        Its pid comes later, as a Started event."""
        handle = RemoteProcess(spec.name)
        self._worker.order("start", handle, spec)
        return handle

    def signal(self, handle, signum):
        self._worker.order("signal", handle, signum)

    def kill(self, handle):
        self._worker.order("signal", handle, signal.SIGKILL)

    def kill_now(self, handle):
        self._worker.running.pop(handle.name, None)
        if self.problem:
            self._worker.abandoned.add(handle.name)
            return [Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached to kill it: "
                                               f"{self.problem}", lost=True)]
        try:
            rpc = proxy(self.spec)
            try:
                rpc.supervisor.signalProcess(handle.name, "KILL")
            except xmlrpc.client.Fault:
                pass  # not running any more
            return [exited(handle, rpc.supervisor.getProcessInfo(handle.name))]
        except UNREACHABLE as exc:
            return [Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached to kill it: {exc}",
                           lost=True)]

    def look(self, hint=None):
        self._worker.order("look", None, hint)

    def probe_failed(self, hint):
        self._worker.order("hung", None, hint)

    def take_figures(self, figures):
        if isinstance(figures, dict):
            self.figures_seen = figures

    def figures(self, handle):
        mine = self.figures_seen.get("programs")
        mine = mine.get(handle.name) if isinstance(mine, dict) else None
        if not isinstance(mine, dict) or mine.get("pid") != handle.pid:
            return None, None
        return mine.get("cpu_percent"), mine.get("rss")

    def fileno(self):
        return self._wake_r

    def events(self):
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        found = []
        while self._found:
            found.append(self._found.popleft())
        return found

    def record(self, handle):
        return {"host": self.host, "name": handle.name, "pid": handle.pid}

    def stop_leftovers(self, records):
        stopped = []
        for name, record in records.items():
            try:
                rpc = proxy(self.spec)
                if rpc.supervisor.getProcessInfo(name).get("pid") == record.get("pid"):
                    rpc.supervisor.stopProcess(name, True)
                    stopped.append(f"{name} (pid {record.get('pid')} on {self.host})")
            except UNREACHABLE as exc:
                log.warning("cannot stop %s on %s: %s", name, self.host, exc)
        return stopped

    def close(self):
        self._worker.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _tell(self, event):
        self._found.append(event)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass
