"""Process supervision: start, watch, restart and stop the programs of an experiment.

Owns each program's state (changed only through `_set`, which checks the
transition table), the restart policy, backoff, restart intensity, hang handling,
start order (dependencies) and stop order (reverse), and the events that report
all of it. Runs programs through a backend (local processes here). Waits on
children through pidfds in one epoll set, never by polling. Must not parse JSON
or touch zmq sockets: the run controller feeds it what the server says and
carries its events.
"""

import collections
import logging
import os
import select
import signal
import time

import psutil

from runcontrol.supervision.backends.local import LocalBackend
from runcontrol.supervision.programlog import ProgramLog
from runcontrol.states import ChildState, check_transition

log = logging.getLogger(__name__)

S = ChildState
START_GRACE_S = 1.0    # a program without a client name counts as up once it lived this long
STABLE_S = 1.0         # a run this long (and as long as the last backoff) resets the backoff
TAIL_IN_EVENT = 10
OLD_PIDS_KEPT = 16


class Program:
    """The supervisor's record of one program: its spec and what happened to it."""

    def __init__(self, spec, program_log):
        self.spec = spec
        self.log = program_log
        self.state = S.STOPPED
        self.proc = None
        self.wanted = False        # start it (again) when its dependencies allow
        self.retired = False       # removed by a reload: forget it once stopped
        self.next_spec = None      # changed by a reload: use it at the next start
        self.registered = False
        self.started_at = None
        self.started_wall = None
        self.restart_times = collections.deque()
        self.restarts = 0
        self.streak = 0            # failures in a row, for the backoff
        self.delay_s = 0.0
        self.timer = None          # (due, action): at most one per program
        self.kill_reason = None    # why we killed it (a hang), so its exit counts as a failure
        self.last_exit = None
        self.old_pids = collections.deque(maxlen=OLD_PIDS_KEPT)
        self.ps = None             # psutil.Process, made only when someone asks for figures

    @property
    def name(self):
        return self.spec.name

    @property
    def pid(self):
        return self.proc.pid if self.proc else None


class Supervisor:
    """Keeps the programs of an experiment running as their specs say.

    `emit(kind, **fields)` carries events out; `env` is added to every program's
    environment (ORBIT_SERVER, ORBIT_EXPERIMENT). Drive it with `process(timeout)`,
    or watch `fileno()` in another loop and call `process(0)` when it is readable
    and at `next_due()`.
    """

    def __init__(self, experiment, backend=None, emit=None, env=None, clock=time.monotonic):
        """`experiment.server.curve`, when set, gives each program ORBIT_KEY: its client name's secret key."""
        self.experiment = experiment
        self.backend = backend or LocalBackend()
        self.emit = emit or (lambda kind, **fields: None)
        self.env = dict(env or {})
        self.clock = clock
        self.server_up = True
        self.stopping_all = False
        self.programs = {spec.name: self._new_program(spec) for spec in experiment.programs}
        self._epoll = select.epoll()
        self._fds = {}

    def _new_program(self, spec):
        logs = self.experiment.logs
        return Program(spec, ProgramLog(self.experiment.paths.logs / f"{spec.name}.log",
                                        logs.max_bytes, logs.keep))

    # --- what operators and the controller ask -----------------------------------------

    def start_all(self):
        self.stopping_all = False
        for program in self.programs.values():
            program.wanted = True
        self._start_ready()

    def stop_all(self):
        """Stop every program, dependents before what they depend on; see `all_stopped`."""
        self.stopping_all = True
        for program in self.programs.values():
            program.wanted = False
        self._stop_ready()

    def all_stopped(self):
        return all(p.proc is None for p in self.programs.values())

    def start(self, name):
        program = self.get(name)
        program.wanted = True
        if program.state is S.FATAL:
            program.restart_times.clear()
            program.streak = 0
        self._start_ready()
        return program

    def stop(self, name):
        program = self.get(name)
        program.wanted = False
        self._stop(program)
        return program

    def restart(self, name):
        program = self.get(name)
        program.wanted = True
        if program.proc is not None:
            self._stop(program)
        else:
            self.start(name)
        return program

    def get(self, name):
        program = self.programs.get(name)
        if program is None or program.retired:
            raise KeyError(name)
        return program

    def apply(self, experiment):
        """Take a new description: start added programs, stop removed ones, restart changed ones."""
        new = {spec.name: spec for spec in experiment.programs}
        diff = {"added": [], "removed": [], "changed": [], "unchanged": []}
        for name, program in self.programs.items():
            if name not in new:
                diff["removed"].append(name)
                program.retired = True
                program.wanted = False
                self._stop(program)
            elif new[name] != program.spec:
                diff["changed"].append(name)
                program.next_spec = new[name]
                if program.proc is not None:
                    self._stop(program)
                else:
                    self._take_next_spec(program)
            else:
                diff["unchanged"].append(name)
        self.experiment = experiment
        programs = {}
        for spec in experiment.programs:
            program = self.programs.get(spec.name)
            if program is None:
                diff["added"].append(spec.name)
                program = self._new_program(spec)
                program.wanted = not self.stopping_all
            programs[spec.name] = program
        programs.update((n, p) for n, p in self.programs.items() if p.retired and n not in programs)
        self.programs = programs
        self._forget_retired()
        self._start_ready()
        return diff

    def client_registered(self, client, pid=None):
        program = self._by_client(client, pid)
        if program is None:
            return
        program.registered = True
        if program.state is S.STARTING:
            program.timer = None
            self._set(program, S.RUNNING)
            self._start_ready()

    def client_gone(self, client, pid=None, hung=False):
        """The server dropped `client`; `hung` when it fell silent (not a goodbye): kill and restart."""
        program = self._by_client(client, pid)
        if program is None:
            return
        program.registered = False
        if hung and program.state in (S.STARTING, S.RUNNING):
            self._kill_hung(program, f"registered as {client} but silent past the server timeout")

    def _by_client(self, client, pid):
        for program in self.programs.values():
            if program.spec.client == client and program.proc is not None:
                return None if pid in program.old_pids else program
        return None

    # --- the loop --------------------------------------------------------------------------

    def fileno(self):
        return self._epoll.fileno()

    def process(self, timeout=0.0):
        """Handle exits, output and due timers, waiting up to `timeout` s (or until the next timer)."""
        due = self.next_due()
        if due is not None:
            timeout = max(0.0, min(timeout, due - self.clock()))
        for fd, _ in self._epoll.poll(timeout):
            program, kind = self._fds.get(fd, (None, None))
            if program is None:
                continue
            if kind == "output":
                self._read_output(program)
            else:
                self._on_exit(program)
        self._run_timers()

    def next_due(self):
        return min((p.timer[0] for p in self.programs.values() if p.timer), default=None)

    def _run_timers(self):
        now = self.clock()
        for program in list(self.programs.values()):
            if program.timer and program.timer[0] <= now:
                action = program.timer[1]
                program.timer = None
                action(program)

    def close(self):
        """Kill whatever still runs (an orderly stop is `stop_all`), close files."""
        self.stopping_all = True
        for program in list(self.programs.values()):
            program.wanted = False
            if program.proc is not None:
                self.backend.signal(program.proc, signal.SIGKILL)
                program.proc.popen.wait()
                self._on_exit(program)
        for program in self.programs.values():
            program.log.close()
        self._epoll.close()

    # --- starting ------------------------------------------------------------------------------

    def _start_ready(self):
        if self.stopping_all:
            return
        for program in self.programs.values():
            if (program.wanted and program.proc is None and program.timer is None
                    and program.state in (S.STOPPED, S.EXITED, S.FATAL) and self._deps_ready(program)
                    and self._runs_here(program)):
                self._spawn(program)

    def _runs_here(self, program):
        if program.spec.host == self.backend.host:
            return True
        if program.wanted:
            log.warning("%s is for host %s: no backend for other hosts here; not started",
                        program.name, program.spec.host)
            program.wanted = False
            program.last_exit = {"error": f"host {program.spec.host}: programs of other hosts "
                                          "(their supervisord) are not run by this supervisor yet"}
        return False

    def _deps_ready(self, program):
        return all(self.programs[d].state is S.RUNNING for d in program.spec.depends_on if d in self.programs)

    def waiting_for(self, program):
        return [d for d in program.spec.depends_on if d in self.programs and self.programs[d].state is not S.RUNNING]

    def _spawn(self, program):
        spec = program.spec
        self._set(program, S.STARTING)
        name = spec.client or spec.name
        env = {**os.environ, **self.env, **spec.env, "ORBIT_NAME": name}
        curve = self.experiment.server.curve
        if curve is not None:
            env.update(ORBIT_KEY=str(curve.clients / f"{name}.key_secret"), ORBIT_SERVER_KEY=str(curve.server_key))
        try:
            program.proc = self.backend.spawn(spec, env)
        except OSError as exc:
            program.log.note(f"cannot start {' '.join(spec.argv)}: {exc}")
            log.error("%s cannot start: %s", spec.name, exc)
            program.last_exit = {"error": f"cannot start: {exc}", "at": time.time()}
            self.emit("program_exited", program=spec.name, pid=None, host=spec.host, code=None,
                      signal=None, error=f"cannot start: {exc}", tail=[])
            self._after_exit(program, clean=False, uptime=0.0)
            return
        now = self.clock()
        program.started_at, program.started_wall = now, time.time()
        program.registered = False
        program.kill_reason = None
        program.ps = None
        program.log.note(f"started, pid {program.proc.pid}: {' '.join(spec.argv)}")
        self._watch(program)
        if spec.client:
            program.timer = (now + spec.start_timeout_s, self._start_timed_out)
        else:
            program.timer = (now + min(START_GRACE_S, spec.start_timeout_s), self._came_up)
        self.emit("program_started", program=spec.name, pid=program.proc.pid, host=spec.host,
                  restarts=program.restarts)

    def _came_up(self, program):
        if program.state is S.STARTING:
            self._set(program, S.RUNNING)
            self._start_ready()

    def _start_timed_out(self, program):
        if program.state is not S.STARTING:
            return
        if not self.server_up:  # it cannot register while there is no server: give it the time again
            program.timer = (self.clock() + program.spec.start_timeout_s, self._start_timed_out)
            return
        self._kill_hung(program, f"did not register as {program.spec.client} "
                                 f"within {program.spec.start_timeout_s:g} s")

    # --- exits and restarts --------------------------------------------------------------------

    def _watch(self, program):
        proc = program.proc
        for fd, kind in ((proc.pidfd, "exit"), (proc.output, "output")):
            self._fds[fd] = (program, kind)
            self._epoll.register(fd, select.EPOLLIN)

    def _unwatch(self, fd):
        if fd is not None and self._fds.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _read_output(self, program):
        data, ended = program.proc.read_output()
        if data:
            program.log.feed(data)
        if ended:
            self._unwatch(program.proc.output)
            program.proc.close_output()

    def _on_exit(self, program):
        proc = program.proc
        status = proc.exit_status()
        if status is None:
            return
        data, _ = proc.read_output()
        program.log.feed(data)
        self._unwatch(proc.pidfd)
        self._unwatch(proc.output)
        self.backend.finish(proc, self.running_pids())
        code, sig = status
        uptime = self.clock() - program.started_at
        program.proc = None
        program.timer = None
        program.old_pids.append(proc.pid)
        program.registered = False
        how = f"exited with status {code}" if sig is None else f"killed by {sig.name}"
        reason = program.kill_reason
        program.last_exit = {"code": code, "signal": sig.name if sig else None, "at": time.time(),
                             "uptime": round(uptime, 3), "reason": reason}
        program.log.note(how + (f" ({reason})" if reason else ""))
        log.log(logging.INFO if program.state is S.STOPPING else logging.WARNING,
                "%s (pid %d) %s after %.1f s%s", program.name, proc.pid, how, uptime,
                f": {reason}" if reason else "")
        self.emit("program_exited", program=program.name, pid=proc.pid, host=program.spec.host,
                  code=code, signal=sig.name if sig else None, uptime=round(uptime, 3), reason=reason,
                  tail=program.log.last_lines(TAIL_IN_EVENT))
        if program.state is S.STOPPING:
            self._set(program, S.STOPPED)
            self._after_stop(program)
        else:
            self._after_exit(program, clean=code == 0 and reason is None, uptime=uptime)

    def running_pids(self):
        return {p.proc.pid for p in self.programs.values() if p.proc is not None}

    def _after_exit(self, program, clean, uptime):
        spec = program.spec
        was_running = program.state is S.RUNNING
        restart = program.wanted and (spec.restart == "always" or (spec.restart == "on-failure" and not clean))
        if not restart:
            program.wanted = False
            self._set(program, S.EXITED)
            return
        self._set(program, S.EXITED if was_running else S.BACKOFF)
        now = self.clock()
        program.restart_times.append(now)
        while program.restart_times and program.restart_times[0] < now - spec.restart_window_s:
            program.restart_times.popleft()
        if len(program.restart_times) > spec.max_restarts:
            self._give_up(program)
            return
        delay = self._next_delay(program, was_running, uptime)
        program.restarts += 1
        log.info("%s: restart %d in %.3g s", program.name, program.restarts, delay)
        self.emit("program_restarting", program=program.name, host=spec.host, delay=delay,
                  restarts=program.restarts)
        self._restart_dependents(program)
        if delay == 0:
            self._spawn(program)
        else:
            if program.state is S.EXITED:
                self._set(program, S.BACKOFF)
            program.timer = (now + delay, self._retry)

    def _next_delay(self, program, was_running, uptime):
        """No delay after a good run; then initial, initial*factor, ... up to max while it keeps failing."""
        backoff = program.spec.backoff
        if was_running and uptime >= max(STABLE_S, program.delay_s):
            program.streak = 0
        elif not was_running:
            program.streak = max(program.streak, 1)
        delay = 0.0 if program.streak == 0 else min(backoff.initial_s * backoff.factor ** (program.streak - 1),
                                                    backoff.max_s)
        program.streak += 1
        program.delay_s = delay
        return delay

    def _retry(self, program):
        if program.state is S.BACKOFF and program.wanted and not self.stopping_all:
            if self._deps_ready(program):
                self._spawn(program)
            else:
                self._set(program, S.STOPPED)
                self._start_ready()

    def _give_up(self, program):
        spec = program.spec
        program.wanted = False
        text = (f"needed {len(program.restart_times)} restarts within {spec.restart_window_s:g} s "
                f"(at most {spec.max_restarts}): no more restarts")
        program.last_exit = {**(program.last_exit or {}), "fatal": text}
        self._set(program, S.FATAL)
        log.error("%s is FATAL: %s", program.name, text)
        program.log.note(f"FATAL: {text}")
        self.emit("program_fatal", program=program.name, host=spec.host, reason=text,
                  tail=program.log.last_lines(TAIL_IN_EVENT))

    def _restart_dependents(self, program):
        if not program.spec.restart_dependents:
            return
        for other in self.programs.values():
            if program.name in other.spec.depends_on and other.proc is not None:
                log.info("%s restarts with %s (restart_dependents)", other.name, program.name)
                other.wanted = True
                self._stop(other)

    def _kill_hung(self, program, reason):
        log.warning("%s (pid %d) hangs: %s; killing it", program.name, program.proc.pid, reason)
        program.log.note(f"hangs: {reason}; killing it")
        program.kill_reason = reason
        self.backend.signal(program.proc, program.spec.stop_signal)
        program.timer = (self.clock() + program.spec.stop_timeout_s, self._kill)

    # --- stopping ------------------------------------------------------------------------------

    def _stop(self, program):
        if program.state in (S.STARTING, S.RUNNING):
            self._set(program, S.STOPPING)
            program.log.note(f"stopping with SIG{program.spec.stop_signal.name.removeprefix('SIG')}")
            self.backend.signal(program.proc, program.spec.stop_signal)
            program.timer = (self.clock() + program.spec.stop_timeout_s, self._kill)
        elif program.state in (S.BACKOFF, S.EXITED, S.FATAL):
            program.timer = None
            self._set(program, S.STOPPED)
            self._after_stop(program)
        elif program.retired:
            self._forget_retired()

    def _kill(self, program):
        if program.proc is None:
            return
        log.warning("%s (pid %d) still running %.3g s after %s: SIGKILL", program.name, program.proc.pid,
                    program.spec.stop_timeout_s, program.spec.stop_signal.name)
        program.log.note("did not stop in time: SIGKILL")
        self.backend.signal(program.proc, signal.SIGKILL)

    def _after_stop(self, program):
        if program.next_spec is not None:
            self._take_next_spec(program)
        if program.retired:
            self._forget_retired()
        if self.stopping_all:
            self._stop_ready()
        else:
            self._start_ready()

    def _take_next_spec(self, program):
        program.spec, program.next_spec = program.next_spec, None
        program.restart_times.clear()
        program.streak = 0

    def _forget_retired(self):
        for name in [n for n, p in self.programs.items() if p.retired and p.state is S.STOPPED]:
            self.programs.pop(name).log.close()

    def _stop_ready(self):
        for program in reversed(list(self.programs.values())):
            if program.state in (S.STOPPING, S.STOPPED):
                continue
            if not any(program.name in other.spec.depends_on and other.proc is not None
                       for other in self.programs.values()):
                self._stop(program)

    # --- state and figures ---------------------------------------------------------------------

    def _set(self, program, new):
        old = program.state
        program.state = check_transition(old, new)
        log.info("%s %s -> %s", program.name, old.value, new.value)

    def describe(self, name):
        """One program's status, with CPU % (since the last ask) and RSS gathered now."""
        program = self.programs[name]
        spec, now = program.spec, self.clock()
        cpu, rss = self._figures(program)
        return {
            "state": program.state.value, "pid": program.pid, "host": spec.host,
            "uptime": round(now - program.started_at, 3) if program.proc else None,
            "restarts": program.restarts, "last_exit": program.last_exit,
            "client": spec.client, "registered": program.registered if spec.client else None,
            "cpu_percent": cpu, "rss": rss, "waiting_for": self.waiting_for(program),
            "cmd": list(spec.argv),
        }

    def _figures(self, program):
        if program.proc is None:
            return None, None
        try:
            if program.ps is None or program.ps.pid != program.proc.pid:
                program.ps = psutil.Process(program.proc.pid)
                program.ps.cpu_percent(None)
            with program.ps.oneshot():
                return round(program.ps.cpu_percent(None), 1), program.ps.memory_info().rss
        except psutil.Error:
            return None, None

    def status(self):
        return {name: self.describe(name) for name, p in self.programs.items() if not p.retired}
