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
from runcontrol.restarts import Backoff
from runcontrol.supervision.backends.base import Backend, Exited, HostChanged, Hung, Output, Started

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


POLL_S = 2.0        # how often the worker reads the host's process list when its agent says nothing
RETRY = (0.5, 10.0, 2.0)  # an unreachable host is tried again after 0.5 s, 1 s, 2 s ... at most 10 s apart
TAIL_BYTES = 2048   # of a program's log on its host, read when it exits
ALREADY_STARTED = 60  # supervisord's fault codes: a start of a program that runs, a name it does not know
BAD_NAME = 10
ALIVE = ("RUNNING", "STARTING", "STOPPING")
REAP_WAIT_S = 1.5   # supervisord's tick is a second


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
        self.problem = ""
        self.figures_seen = {}      # the host agent's last figures
        self._orders = queue.Queue()
        self._found = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._running = {}          # name -> RemoteProcess, as the worker last saw it
        self._deferred = {}         # name -> a signal order that waits for the host to be back
        self._abandoned = set()     # programs we could not kill while the host was away: stopped when it is back
        self._supervisord_pid = None
        self._log_read = {}         # name -> how far its log there has been read
        self._taken = {}            # name -> the spec supervisord last read its program for
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name=f"supervisord-{host.name}")
        self._thread.start()

    # --- what the supervisor asks (from the loop's thread) --------------------------------------

    def spawn(self, spec, env):
        """Ask the host's supervisord to start `spec.name`; its environment is the exported one, not `env`.
        Its pid comes later, as a Started event."""
        handle = RemoteProcess(spec.name)
        self._orders.put(("start", handle, spec))
        return handle

    def signal(self, handle, signum):
        self._orders.put(("signal", handle, signum))

    def kill(self, handle):
        self._orders.put(("signal", handle, signal.SIGKILL))

    def kill_now(self, handle):
        self._running.pop(handle.name, None)
        if self.problem:
            self._abandoned.add(handle.name)
            return [Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached to kill it: "
                                               f"{self.problem}", lost=True)]
        try:
            rpc = proxy(self.spec)
            try:
                rpc.supervisor.signalProcess(handle.name, "KILL")
            except xmlrpc.client.Fault:
                pass  # not running any more
            return [self._exited(handle, rpc.supervisor.getProcessInfo(handle.name))]
        except UNREACHABLE as exc:
            return [Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached to kill it: {exc}",
                           lost=True)]

    def look(self, hint=None):
        self._orders.put(("look", None, hint))

    def probe_failed(self, hint):
        self._orders.put(("hung", None, hint))

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
        self._stopping.set()
        self._orders.put(None)
        self._thread.join(TIMEOUT_S + 1)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # --- the worker thread --------------------------------------------------------------------

    def _work(self):
        rpc = None
        retry = Backoff(*RETRY)
        while not self._stopping.is_set():
            wait_s = self.poll_s
            if self.problem:
                wait_s = retry.next_delay(False, came_up=False)
                log.info("host %s: trying its supervisord again in %.2g s", self.host, wait_s)
            try:
                order = self._orders.get(timeout=wait_s)
            except queue.Empty:
                order = None
            if order is None and self._stopping.is_set():
                return
            try:
                rpc = rpc or proxy(self.spec)
                if self.problem:
                    self._back(rpc)
                if order is not None:
                    self._carry_out(rpc, *order)
                self._look(rpc)
                retry.reset()
            except UNREACHABLE as exc:
                rpc = None
                self._unreachable(exc, order)
            except Exception:  # a bug here must not leave the host's programs without their worker
                log.exception("host %s: the worker failed on %s; it goes on", self.host, order)

    def _carry_out(self, rpc, what, handle, arg):
        """One order; `arg`: the spec of a start, the signal of a signal, the agent's hint of a look or a hang."""
        try:
            if what == "start":
                self._start(rpc, handle, arg)
            elif what == "signal" and arg == signal.SIGKILL:
                rpc.supervisor.signalProcess(handle.name, "KILL")
            elif what == "signal":  # its stop signal: supervisord stops the whole group, SIGKILL after the grace
                rpc.supervisor.stopProcess(handle.name, False)
            elif what == "look" and arg:
                self._await_reaped(rpc, arg)
            elif what == "hung":
                self._hung(arg)
        except xmlrpc.client.Fault as exc:
            log.warning("%s %s on %s: refused: %s", what, handle.name, self.host, exc.faultString)

    def _start(self, rpc, handle, spec):
        if not self._taken or self._taken.get(handle.name, spec) != spec:   # a first start here, or a reload
            self._take_exported(rpc)
        self._taken[handle.name] = spec
        adopted = False
        try:
            rpc.supervisor.startProcess(handle.name, True)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != ALREADY_STARTED:
                hint = " (not in its supervisord.conf: export the host again, python run.py EXPERIMENT --export " \
                       f"{self.host} DIR)" if exc.faultCode == BAD_NAME else ""
                self._tell(Exited(handle, None, None, f"{self.host}'s supervisord: {exc.faultString}{hint}"))
                return
            adopted = True
        info = rpc.supervisor.getProcessInfo(handle.name)
        pid, now, since = info.get("pid"), info.get("now"), info.get("start")
        if not isinstance(pid, int) or not isinstance(now, int) or not isinstance(since, int):
            raise Unexpected(f"getProcessInfo({handle.name!r}) answered {str(info)[:200]}")
        handle.pid = pid or None
        self._running[handle.name] = handle
        if handle.pid:
            self._tell(Started(handle, handle.pid, max(0.0, float(now - since)), adopted))

    def _take_exported(self, rpc):
        """supervisord reads its configuration only when asked: the programs exported again since (changed) or for
        the first time (added) are taken from it, as `supervisorctl update` would; one that runs is left as it is
        (it is adopted, and takes its new form at its next start)."""
        try:
            added, changed, _ = rpc.supervisor.reloadConfig()[0]
        except xmlrpc.client.Fault as exc:
            log.warning("host %s: its programs run as its supervisord read them before: %s", self.host,
                        exc.faultString)
            return
        for name in [*added, *changed]:
            try:
                if name in changed:
                    rpc.supervisor.removeProcessGroup(name)
                rpc.supervisor.addProcessGroup(name)
                log.info("host %s: %s taken anew from its supervisord.conf", self.host, name)
            except xmlrpc.client.Fault as exc:
                log.info("host %s: %s stays as read before (%s)", self.host, name, exc.faultString)

    def _await_reaped(self, rpc, hint):
        """The agent saw a process of ours end: ask until supervisord says so too. It learns of an exit only
        at its next tick (up to a second), and each request to it brings that tick on at once."""
        pid, name = hint.get("pid"), hint.get("program")
        handle = self._running.get(name) if isinstance(name, str) else None
        if hint.get("state") != "EXITED" or handle is None or handle.pid != pid:
            return
        deadline = time.monotonic() + REAP_WAIT_S
        while time.monotonic() < deadline:
            info = rpc.supervisor.getProcessInfo(name)
            if info.get("statename") not in ALIVE or info.get("pid") != pid:
                return
            time.sleep(0.002)

    def _hung(self, hint):
        """The agent's probe of a program failed: a Hung event if that pid is still the program's."""
        name, pid, reason = hint.get("program"), hint.get("pid"), hint.get("reason")
        handle = self._running.get(name) if isinstance(name, str) else None
        if handle is not None and handle.pid == pid and isinstance(reason, str):
            self._tell(Hung(handle, f"{reason} (on {self.host})"))

    def _look(self, rpc):
        """Hand the loop an Exited event for each program of ours that no longer runs there."""
        listed = rpc.supervisor.getAllProcessInfo()
        if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
            raise Unexpected(f"getAllProcessInfo answered {type(listed).__name__}, not a list of processes")
        infos = {info.get("name"): info for info in listed}
        self._restarted(rpc.supervisor.getPID())
        for name, handle in list(self._running.items()):
            info = infos.get(name) or {}
            if info.get("statename") not in ALIVE or info.get("pid") != handle.pid:
                self._running.pop(name, None)
                tail = self._tail(rpc, name)
                if tail:
                    self._tell(Output(handle, tail))
                self._tell(self._exited(handle, info))

    def _restarted(self, pid):
        """supervisord there was restarted (killed, then started again): the processes of ours it ran are not its
        children any more; it will never report or stop them (its agent stops them when it starts)."""
        before, self._supervisord_pid = self._supervisord_pid, pid
        if before in (None, pid):
            return
        log.warning("host %s: supervisord was restarted (pid %s, now %s)", self.host, before, pid)
        for name, handle in list(self._running.items()):
            self._running.pop(name)
            self._tell(Exited(handle, None, None, f"{self.host}'s supervisord was restarted (pid {before}, now {pid}): "
                                                  f"it no longer runs pid {handle.pid}", lost=True))

    def _tail(self, rpc, name):
        """What the program wrote to its log on its host since we last read it (at most TAIL_BYTES, whole lines)."""
        try:
            text, offset, overflow = rpc.supervisor.tailProcessStdoutLog(name, self._log_read.get(name, 0),
                                                                         TAIL_BYTES)
        except (xmlrpc.client.Fault, ValueError, TypeError):
            return b""
        if isinstance(offset, int):
            self._log_read[name] = offset
        if overflow and "\n" in text:
            text = text.split("\n", 1)[1]
        return text.encode("utf-8", "replace")

    def _back(self, rpc):
        """The host answers again: its programs are held against what its supervisord reports (by `_look`),
        the orders that waited go out."""
        rpc.supervisor.getState()
        log.warning("host %s: supervisord at %s answers again", self.host, self.spec.supervisord)
        self._set_problem("")
        deferred, self._deferred = self._deferred, {}
        for order in deferred.values():
            self._carry_out(rpc, *order)
        abandoned, self._abandoned = self._abandoned - set(self._running), set()
        for name in abandoned:
            try:
                rpc.supervisor.stopProcess(name, True)
                log.warning("host %s: stopped %s, left there while the host was away", self.host, name)
            except xmlrpc.client.Fault:
                pass  # it ended meanwhile

    def _unreachable(self, exc, order):
        problem = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        if not self.problem:
            log.warning("host %s: supervisord at %s cannot be reached: %s", self.host, self.spec.supervisord, problem)
        self._set_problem(problem)
        if order is None:
            return
        what, handle, signum = order
        if what == "start":
            self._tell(Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached: {problem}"))
        elif what == "signal" and signum == signal.SIGKILL:  # the end of a program that must end now: it is left to its host
            self._running.pop(handle.name, None)
            self._deferred.pop(handle.name, None)
            self._abandoned.add(handle.name)
            self._tell(Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached to kill it: "
                                                  f"{problem}", lost=True))
        elif what == "signal":
            self._deferred[handle.name] = order  # carried out when the host is back

    def _set_problem(self, problem):
        if problem != self.problem:
            self.problem = problem
            self._tell(HostChanged(self.host, problem))

    @staticmethod
    def _exited(handle, info):
        status = info.get("exitstatus")
        if isinstance(status, int) and status >= 0:
            return Exited(handle, status, None)
        # supervisord says -1 for a process killed by a signal, and not which one
        return Exited(handle, None, process.UNNAMED_SIGNAL)

    def _tell(self, event):
        self._found.append(event)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass
