"""The thread that carries out the orders for one host's supervisord, so that a slow or dead host never blocks
the loop: starts, signals, reading its process list, and what it says when it is lost and when it is back.

Everything it learns goes to the loop as events, through `tell`. Must not decide when to start or stop anything.
"""

import logging
import queue
import signal
import threading
import time
import xmlrpc.client

from runcontrol.restarts import Backoff
from runcontrol.supervision.backends.base import Exited, HostChanged, Hung, Output, Started
from runcontrol.supervision.backends.supervisordrpc import (ALIVE, ALREADY_STARTED, BAD_NAME, TIMEOUT_S,
                                                            UNREACHABLE, Unexpected, exited, proxy)

log = logging.getLogger("runcontrol.supervision.backends.supervisord")

POLL_S = 2.0        # how often the worker reads the host's process list when its agent says nothing
RETRY = (0.5, 10.0, 2.0)  # an unreachable host is tried again after 0.5 s, 1 s, 2 s ... at most 10 s apart
TAIL_BYTES = 2048   # of a program's log on its host, read when it exits
REAP_WAIT_S = 1.5   # supervisord's tick is a second


class HostWorker:
    """Orders for `spec`'s supervisord (`order(what, handle, arg)`), carried out one at a time on a thread of
    its own; the process list is read after each, and every `poll_s` anyway.

    `running` holds the programs of ours it last saw running there, `abandoned` those that could not be killed
    while the host was away (stopped when it is back), `problem` why the host cannot be reached ("" when it can).
    """

    def __init__(self, spec, poll_s, tell):
        self.host, self.spec, self.poll_s, self.tell = spec.name, spec, poll_s, tell
        self.problem = ""
        self.running = {}           # name -> RemoteProcess, as last seen
        self.abandoned = set()
        self._orders = queue.Queue()
        self._deferred = {}         # name -> a signal order that waits for the host to be back
        self._supervisord_pid = None
        self._log_read = {}         # name -> how far its log there has been read
        self._taken = {}            # name -> the spec supervisord last read its program for
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name=f"supervisord-{spec.name}")
        self._thread.start()

    def order(self, what, handle=None, arg=None):
        """"start" (arg: the spec), "signal" (arg: the signal), "look" (arg: the agent's hint), "hung" (its hint)."""
        self._orders.put((what, handle, arg))

    def close(self):
        self._stopping.set()
        self._orders.put(None)
        self._thread.join(TIMEOUT_S + 1)

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
                self.tell(Exited(handle, None, None, f"{self.host}'s supervisord: {exc.faultString}{hint}"))
                return
            adopted = True
        info = rpc.supervisor.getProcessInfo(handle.name)
        pid, now, since = info.get("pid"), info.get("now"), info.get("start")
        if not isinstance(pid, int) or not isinstance(now, int) or not isinstance(since, int):
            raise Unexpected(f"getProcessInfo({handle.name!r}) answered {str(info)[:200]}")
        handle.pid = pid or None
        self.running[handle.name] = handle
        if handle.pid:
            self.tell(Started(handle, handle.pid, max(0.0, float(now - since)), adopted))

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
        handle = self.running.get(name) if isinstance(name, str) else None
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
        handle = self.running.get(name) if isinstance(name, str) else None
        if handle is not None and handle.pid == pid and isinstance(reason, str):
            self.tell(Hung(handle, f"{reason} (on {self.host})"))

    def _look(self, rpc):
        """Hand the loop an Exited event for each program of ours that no longer runs there."""
        listed = rpc.supervisor.getAllProcessInfo()
        if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
            raise Unexpected(f"getAllProcessInfo answered {type(listed).__name__}, not a list of processes")
        infos = {info.get("name"): info for info in listed}
        self._restarted(rpc.supervisor.getPID())
        for name, handle in list(self.running.items()):
            info = infos.get(name) or {}
            if info.get("statename") not in ALIVE or info.get("pid") != handle.pid:
                self.running.pop(name, None)
                tail = self._tail(rpc, name)
                if tail:
                    self.tell(Output(handle, tail))
                self.tell(exited(handle, info))

    def _restarted(self, pid):
        """supervisord there was restarted (killed, then started again): the processes of ours it ran are not its
        children any more; it will never report or stop them (its agent stops them when it starts)."""
        before, self._supervisord_pid = self._supervisord_pid, pid
        if before in (None, pid):
            return
        log.warning("host %s: supervisord was restarted (pid %s, now %s)", self.host, before, pid)
        for name, handle in list(self.running.items()):
            self.running.pop(name)
            self.tell(Exited(handle, None, None, f"{self.host}'s supervisord was restarted (pid {before}, now {pid}): "
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
        abandoned, self.abandoned = self.abandoned - set(self.running), set()
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
            self.tell(Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached: {problem}"))
        elif what == "signal" and signum == signal.SIGKILL:  # a program that must end now: left to its host
            self.running.pop(handle.name, None)
            self._deferred.pop(handle.name, None)
            self.abandoned.add(handle.name)
            self.tell(Exited(handle, None, None, f"{self.host}'s supervisord cannot be reached to kill it: "
                                                  f"{problem}", lost=True))
        elif what == "signal":
            self._deferred[handle.name] = order  # carried out when the host is back

    def _set_problem(self, problem):
        if problem != self.problem:
            self.problem = problem
            self.tell(HostChanged(self.host, problem))
