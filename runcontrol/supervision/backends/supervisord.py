"""Another host's supervisord, over its XML-RPC interface: reaching it with its credentials, asking whether it
answers (`run.py --check`), and the backend that runs that host's programs through it.

Must not decide when to start or stop anything: the supervisor does.
"""

import collections
import http.client
import logging
import os
import queue
import signal
import socket
import threading
import time
import urllib.parse
import xmlrpc.client

from runcontrol import process
from runcontrol.errors import ConfigError
from runcontrol.supervision.backends.base import Backend, Exited

log = logging.getLogger(__name__)


class Unexpected(Exception):
    """The host's supervisord answered something that is not what its interface promises."""


# What a call to a host's supervisord may end in when the host is away, refuses, or answers nonsense.
UNREACHABLE = (OSError, xmlrpc.client.Error, http.client.HTTPException, ConfigError, Unexpected, KeyError,
               TypeError, ValueError)

TIMEOUT_S = 5.0


class TimeoutTransport(xmlrpc.client.Transport):
    """An XML-RPC transport that gives up after `timeout_s`: a dead host must never hang the caller."""

    def __init__(self, timeout_s):
        super().__init__()
        self.timeout_s = timeout_s

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self.timeout_s
        return connection


def proxy(host, timeout_s=TIMEOUT_S):
    """An XML-RPC proxy of `host`'s supervisord (a HostSpec), with its credentials."""
    url = urllib.parse.urlsplit(host.supervisord)
    if host.username:
        try:
            password = host.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"hosts.{host.name}.password_file: cannot read {host.password_file}: "
                              f"{exc.strerror}") from None
        netloc = f"{urllib.parse.quote(host.username)}:{urllib.parse.quote(password)}@{url.netloc}"
        url = url._replace(netloc=netloc)
    return xmlrpc.client.ServerProxy(urllib.parse.urlunsplit(url), transport=TimeoutTransport(timeout_s))


def check(host, timeout_s=2.0):
    """None when `host`'s supervisord answers and runs, else what is wrong, in words."""
    try:
        state = proxy(host, timeout_s).supervisor.getState()
    except ConfigError as exc:
        return str(exc)
    except xmlrpc.client.ProtocolError as exc:
        return f"refused: {exc.errcode} {exc.errmsg}" + (" (username or password?)" if exc.errcode == 401 else "")
    except xmlrpc.client.Fault as exc:
        return f"answered with a fault: {exc.faultString}"
    except (OSError, socket.timeout, http.client.HTTPException) as exc:
        return f"does not answer: {exc}"
    if state.get("statename") != "RUNNING":
        return f"answers, but is {state.get('statename')}"
    return None


POLL_S = 0.5        # how often the worker reads the host's process list (exits are learnt from it)
SAY_EVERY_S = 10.0  # an unreachable host is said at most this often


class RemoteProcess:
    """A program running under another host's supervisord: its name there and, once known, its pid."""

    __slots__ = ("name", "pid")

    def __init__(self, name):
        self.name, self.pid = name, None


class SupervisordBackend(Backend):
    """Programs of another host, run by its supervisord (its configuration from `run.py --export`).

    Orders go to supervisord from a worker thread, so a slow or dead host never blocks the
    controller's loop; exits are learnt from its process list every POLL_S and handed to the
    loop as events through a pipe. What a program writes stays in its log on that host.
    """

    def __init__(self, host, poll_s=POLL_S):
        self.host, self.spec, self.poll_s = host.name, host, poll_s
        self._orders = queue.Queue()
        self._found = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._running = {}          # name -> RemoteProcess, as the worker last saw it
        self._stopping = threading.Event()
        self._said_at = 0.0
        self._thread = threading.Thread(target=self._work, daemon=True, name=f"supervisord-{host.name}")
        self._thread.start()

    # --- what the supervisor asks (from the loop's thread) --------------------------------------

    def spawn(self, spec, env):
        """Ask the host's supervisord to start `spec.name`; its environment is the exported one, not `env`."""
        handle = RemoteProcess(spec.name)
        self._running[spec.name] = handle
        self._orders.put(("start", handle, None))
        return handle

    def signal(self, handle, signum):
        self._orders.put(("signal", handle, signum))

    def kill(self, handle):
        self._orders.put(("signal", handle, signal.SIGKILL))

    def kill_now(self, handle):
        self._running.pop(handle.name, None)
        try:
            rpc = proxy(self.spec)
            try:
                rpc.supervisor.signalProcess(handle.name, "KILL")
            except xmlrpc.client.Fault:
                pass  # not running any more
            return [self._exited(handle, rpc.supervisor.getProcessInfo(handle.name))]
        except UNREACHABLE as exc:
            return [Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached to kill it: {exc}")]

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
        self._stopping.set()
        self._orders.put(None)
        self._thread.join(TIMEOUT_S + 1)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # --- the worker thread --------------------------------------------------------------------

    def _work(self):
        rpc = None
        while not self._stopping.is_set():
            try:
                order = self._orders.get(timeout=self.poll_s)
            except queue.Empty:
                order = None
            if order is None and self._stopping.is_set():
                return
            try:
                rpc = rpc or proxy(self.spec)
                if order is not None:
                    self._carry_out(rpc, *order)
                self._look(rpc)
            except UNREACHABLE as exc:
                rpc = None
                self._unreachable(exc, order)

    def _carry_out(self, rpc, what, handle, signum):
        try:
            if what == "start":
                try:
                    rpc.supervisor.startProcess(handle.name, True)
                except xmlrpc.client.Fault as exc:
                    self._gone(handle, Exited(handle, None, None, f"{self.host}'s supervisord: {exc.faultString}"))
                    return
                handle.pid = rpc.supervisor.getProcessInfo(handle.name).get("pid")
            elif signum == signal.SIGKILL:
                rpc.supervisor.signalProcess(handle.name, "KILL")
            else:  # its stop signal: supervisord stops the whole group, SIGKILL after the exported grace
                rpc.supervisor.stopProcess(handle.name, False)
        except xmlrpc.client.Fault as exc:
            log.warning("%s on %s: %s %s: %s", what, self.host, handle.name, "refused", exc.faultString)

    def _look(self, rpc):
        """Hand the loop an Exited event for each program of ours that no longer runs there."""
        listed = rpc.supervisor.getAllProcessInfo()
        if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
            raise Unexpected(f"getAllProcessInfo answered {type(listed).__name__}, not a list of processes")
        infos = {info.get("name"): info for info in listed}
        for name, handle in list(self._running.items()):
            if handle.pid is None:
                continue  # its start order has not been carried out yet
            info = infos.get(name)
            if info is None or info.get("statename") not in ("RUNNING", "STARTING", "STOPPING") \
                    or info.get("pid") != handle.pid:
                self._gone(handle, self._exited(handle, info or {}))

    def _gone(self, handle, event):
        self._running.pop(handle.name, None)
        self._found.append(event)
        self._wake()

    @staticmethod
    def _exited(handle, info):
        status = info.get("exitstatus")
        if isinstance(status, int) and status >= 0:
            return Exited(handle, status, None)
        # supervisord says -1 for a process killed by a signal, and not which one
        return Exited(handle, None, process.UNNAMED_SIGNAL)

    def _unreachable(self, exc, order):
        now = time.monotonic()
        if now - self._said_at >= SAY_EVERY_S:
            self._said_at = now
            log.warning("host %s: supervisord at %s cannot be reached: %s", self.host, self.spec.supervisord, exc)
        if order is not None and order[0] == "start":
            self._gone(order[1], Exited(order[1], None, None, f"{self.host}'s supervisord cannot be reached: {exc}"))

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass
