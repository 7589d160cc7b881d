"""The life of one program's process: spawn, come up, exit, back off, restart, hang, stop with a grace.

Owns what happens to a program between an order and its outcome, through the
backend of the program's host: starting it (STARTING, then RUNNING once it
registers or lived `START_GRACE_S`), its exit (policy, backoff, intensity,
FATAL), killing it when it hangs (its client silent, or its liveness probe
failing), and stopping it with SIGKILL after `stop_timeout`. Each program has
one timer at a time, a handle in the supervisor's timer heap (on its injected
clock). It tells its owner when a program settled (`settled(program)`), so that
the order (`Order`) can start or stop the next ones. Must not decide the order
itself.
"""

import logging
import os
import time

from runcontrol import process
from runcontrol.states import ChildState as S
from runcontrol.supervision.backends.base import Exited, Hung, Output, Started

log = logging.getLogger("runcontrol.supervision.supervisor")

START_GRACE_S = 1.0    # a program without a client name counts as up once it lived this long
TAIL_IN_EVENT = 10


class Lifecycle:
    def __init__(self, backends, emit, timers, settled, deps_ready, restart_dependents):
        self.backends = backends
        self.deps_ready = deps_ready
        self.emit = emit
        self.timers = timers
        self.clock = timers.clock
        self.settled = settled
        self.restart_dependents = restart_dependents
        self.env = {}            # added to every program's environment
        self.curve = None        # the bus's CurveSpec: each program gets its own key
        self.server_up = True

    def backend(self, program):
        return self.backends[program.spec.host]

    def _after(self, program, delay_s, action):
        """`action(program)` in `delay_s` seconds: the program's one timer, in place of any it had."""
        def due():
            program.timer = None
            action(program)
        program.cancel_timer()
        program.timer = self.timers.after(delay_s, due)

    # --- starting -----------------------------------------------------------------------------

    def spawn(self, program):
        spec = program.spec
        program.set(S.STARTING)
        try:
            program.proc = self.backend(program).spawn(spec, self._environment(spec))
        except OSError as exc:
            self._start_failed(program, str(exc))
            return
        program.started_at = self.clock()
        program.registered = False
        program.kill_reason = None
        if spec.client:
            self._after(program, spec.start_timeout_s, self._start_timed_out)
        else:
            self._after(program, min(START_GRACE_S, spec.start_timeout_s), self.came_up)
        if program.proc.pid is not None:
            self._started(program)
        # else its backend tells the pid later (another host's supervisord), with a Started event

    def _started(self, program, adopted=False):
        spec = program.spec
        where = "" if spec.host == "local" else f" on {spec.host}"
        if adopted:
            program.log.note(f"adopted, pid {program.proc.pid}{where}, running for "
                             f"{self.clock() - program.started_at:.0f} s: {' '.join(spec.argv)}")
            log.info("%s: adopted pid %s%s, running already", spec.name, program.proc.pid, where)
        else:
            program.log.note(f"started, pid {program.proc.pid}{where}: {' '.join(spec.argv)}")
        self.emit("program_started", program=spec.name, pid=program.proc.pid, host=spec.host,
                  restarts=program.restarts, **({"adopted": True} if adopted else {}))

    def _lost(self, program, why):
        """A program to be killed whose end cannot be learnt (its host is away): counted as ended there;
        its host's supervisord stops it when it is back."""
        program.log.note(f"left to its host: {why}")
        log.error("%s: %s; counted as ended", program.name, why)
        stopping = program.state is S.STOPPING
        program.old_pids.append(program.pid)
        program.exited(None, None, self.clock() - program.started_at, time.time())
        program.last_exit = {"error": why, "at": time.time(), "reason": program.kill_reason}
        self.emit("program_exited", program=program.name, pid=program.old_pids[-1], host=program.spec.host,
                  code=None, signal=None, error=why, tail=[])
        if stopping:
            program.set(S.STOPPED)
            self.settled(program)
        else:
            self._after_exit(program, clean=False, uptime=0.0)

    def _start_failed(self, program, why):
        spec = program.spec
        program.proc = None
        program.cancel_timer()
        program.log.note(f"cannot start {' '.join(spec.argv)}: {why}")
        log.error("%s cannot start: %s", spec.name, why)
        program.last_exit = {"error": f"cannot start: {why}", "at": time.time()}
        self.emit("program_exited", program=spec.name, pid=None, host=spec.host, code=None,
                  signal=None, error=f"cannot start: {why}", tail=[])
        self._after_exit(program, clean=False, uptime=0.0)

    def _environment(self, spec):
        name = spec.client or spec.name
        env = {**os.environ, **self.env, **spec.env, "ORBIT_NAME": name}
        if self.curve is not None:
            env.update(ORBIT_KEY=str(self.curve.clients / f"{name}.key_secret"),
                       ORBIT_SERVER_KEY=str(self.curve.server_key))
        return env

    def came_up(self, program):
        if program.state is S.STARTING:
            program.cancel_timer()
            program.set(S.RUNNING)
            self.settled(program)

    def _start_timed_out(self, program):
        if program.state is not S.STARTING:
            return
        if not self.server_up:  # it cannot register while there is no server: give it the time again
            self._after(program, program.spec.start_timeout_s, self._start_timed_out)
            return
        self.kill_hung(program, f"did not register as {program.spec.client} "
                                f"within its start_timeout of {program.spec.start_timeout_s:g} s")

    # --- exits and restarts ---------------------------------------------------------------------

    def on_exit(self, program, code, sig):
        proc = program.proc
        uptime = self.clock() - program.started_at
        program.old_pids.append(proc.pid)
        reason = program.kill_reason
        how = program.exited(code, sig, uptime, time.time())
        program.log.note(how + (f" ({reason})" if reason else ""))
        log.log(logging.INFO if program.state is S.STOPPING else logging.WARNING,
                "%s (pid %s) %s after %.1f s%s", program.name, proc.pid, how, uptime,
                f": {reason}" if reason else "")
        self.emit("program_exited", program=program.name, pid=proc.pid, host=program.spec.host,
                  code=code, signal=process.signal_name(sig), uptime=round(uptime, 3), reason=reason,
                  tail=program.log.last_lines(TAIL_IN_EVENT))
        if program.state is S.STOPPING:
            program.set(S.STOPPED)
            self.settled(program)
        else:
            self._after_exit(program, clean=code == 0 and reason is None, uptime=uptime)

    def _after_exit(self, program, clean, uptime):
        was_running = program.state is S.RUNNING
        if not program.wants_restart(clean):
            program.wanted = False
            program.set(S.EXITED)
            return
        program.set(S.EXITED if was_running else S.BACKOFF)
        now = self.clock()
        if program.window.record(now):
            self._give_up(program)
            return
        delay = program.next_delay(was_running, uptime)
        program.restarts += 1
        log.info("%s: restart %d in %.3g s", program.name, program.restarts, delay)
        self.emit("program_restarting", program=program.name, host=program.spec.host, delay=delay,
                  restarts=program.restarts)
        self.restart_dependents(program)
        if delay == 0:
            self.spawn(program)
            return
        if program.state is S.EXITED:
            program.set(S.BACKOFF)
        self._after(program, delay, self._retry)

    def _retry(self, program):
        if program.state is S.BACKOFF and program.wanted:
            if self.deps_ready(program):
                self.spawn(program)
            else:
                program.set(S.STOPPED)
                self.settled(program)  # its owner starts it once its dependencies allow

    def _give_up(self, program):
        text = program.fatal_text()
        program.wanted = False
        program.last_exit = {**(program.last_exit or {}), "fatal": text}
        program.set(S.FATAL)
        log.error("%s is FATAL: %s", program.name, text)
        program.log.note(f"FATAL: {text}")
        self.emit("program_fatal", program=program.name, host=program.spec.host, reason=text,
                  tail=program.log.last_lines(TAIL_IN_EVENT))

    def kill_hung(self, program, reason):
        log.warning("%s (pid %s) hangs: %s; killing it", program.name, program.proc.pid, reason)
        program.log.note(f"hangs: {reason}; killing it")
        program.kill_reason = reason
        self._signal_with_grace(program)

    # --- stopping ---------------------------------------------------------------------------------

    def stop(self, program):
        """Stop a running program with its stop signal, SIGKILL after its stop_timeout; a waiting one at once."""
        if program.state in (S.STARTING, S.RUNNING):
            program.set(S.STOPPING)
            program.log.note(f"stopping with SIG{program.spec.stop_signal.name.removeprefix('SIG')}")
            self._signal_with_grace(program)
        elif program.state in (S.BACKOFF, S.EXITED, S.FATAL):
            program.cancel_timer()
            program.set(S.STOPPED)
            self.settled(program)

    def _signal_with_grace(self, program):
        self.backend(program).signal(program.proc, program.spec.stop_signal)
        self._after(program, program.spec.stop_timeout_s, self._kill)

    def _kill(self, program):
        if program.proc is None:
            return
        log.warning("%s (pid %s) still running %.3g s after %s: SIGKILL", program.name, program.proc.pid,
                    program.spec.stop_timeout_s, program.spec.stop_signal.name)
        program.log.note("did not stop in time: SIGKILL")
        self.backend(program).kill(program.proc)

    def kill_now(self, program):
        """SIGKILL and reap at once (closing down), the exit recorded like any other."""
        program.wanted = False
        for event in self.backend(program).kill_now(program.proc):
            self.on_event(program, event)

    def on_event(self, program, event):
        """An Output or Exited event of the backend, for `program`."""
        if isinstance(event, Output):
            program.log.feed(event.data)
        elif isinstance(event, Started):
            adopted = event.adopted
            program.started_at = self.clock() - event.age_s
            self._started(program, adopted)
            if adopted and not program.spec.client:
                self.came_up(program)
        elif isinstance(event, Hung):
            if program.state in (S.STARTING, S.RUNNING) and program.kill_reason is None:
                self.kill_hung(program, event.reason)
        elif isinstance(event, Exited) and event.lost:
            self._lost(program, event.error)
        elif isinstance(event, Exited) and event.error:
            self._start_failed(program, event.error)
        elif isinstance(event, Exited):
            self.on_exit(program, event.code, event.signal)

