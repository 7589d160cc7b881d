"""Process supervision: start, watch, restart and stop the programs of an experiment.

Owns the set of programs, their start order (dependencies) and stop order
(reverse), operators' orders (start, stop, restart, reload), what the server
says of their clients (registered, gone, hung), and their status. One backend
per host name runs the processes; `Lifecycle` carries each program from an order
to its outcome. Exits are events from the backends, never polled. Must not parse
JSON or touch the bus: the run controller feeds it and carries its events.
"""

import logging
import select
import time

from runcontrol.states import ChildState as S
from runcontrol.supervision.backends.base import HostChanged
from runcontrol.supervision.backends.local import LocalBackend
from runcontrol.supervision.lifecycle import Lifecycle
from runcontrol.supervision.program import Program, describe_exit
from runcontrol.supervision.programlog import ProgramLog

log = logging.getLogger(__name__)


class Supervisor:
    """Keeps the programs of an experiment running as their specs say.

    `backends` maps host names to backends (default: this machine's, as `local`);
    `emit(kind, **fields)` carries events out; `env` is added to every program's
    environment (ORBIT_SERVER, ORBIT_EXPERIMENT); `clock` is the seam tests drive.
    Drive it with `process(timeout)`, or watch `fileno()` in another loop and call
    `process(0)` when it is readable and at `next_due()`.
    """

    def __init__(self, experiment, backends=None, emit=None, env=None, clock=time.monotonic):
        self.experiment = experiment
        self.backends = backends or {LocalBackend.host: LocalBackend()}
        self.clock = clock
        self.stopping_all = False
        self.life = Lifecycle(self.backends, emit or (lambda kind, **fields: None), clock,
                              settled=self._settled, deps_ready=self._deps_ready,
                              restart_dependents=self._restart_dependents)
        self.life.env.update(env or {})
        self.life.curve = experiment.server.curve
        self.programs = {spec.name: self._new_program(spec) for spec in experiment.programs}
        self._epoll = select.epoll()
        for backend in self.backends.values():
            if backend.fileno() is not None:
                self._epoll.register(backend.fileno(), select.EPOLLIN)

    @property
    def env(self):
        return self.life.env

    @property
    def server_up(self):
        return self.life.server_up

    @server_up.setter
    def server_up(self, up):
        self.life.server_up = up

    def _new_program(self, spec):
        logs = self.experiment.logs
        return Program(spec, ProgramLog(self.experiment.paths.logs / f"{spec.name}.log", logs.max_bytes, logs.keep))

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
            program.clear_failures()
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
                program.retired, program.wanted = True, False
                self._stop(program)
            elif new[name] != program.spec:
                diff["changed"].append(name)
                program.next_spec = new[name]
                if program.proc is not None:
                    self._stop(program)
                else:
                    program.take_next_spec()
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
        if program is not None:
            self._registered(program)

    def _registered(self, program):
        program.registered = True
        self.life.came_up(program)

    def client_gone(self, client, pid=None, hung=False):
        """The server dropped `client`; `hung` when it fell silent (not a goodbye): kill and restart."""
        program = self._by_client(client, pid)
        if program is None:
            return
        program.registered = False
        if hung and program.state in (S.STARTING, S.RUNNING):
            self.life.kill_hung(program, f"registered as {client} but silent past the server timeout")

    def reconcile(self, registered, grace_s):
        """Hold the programs against the server's registry (`registered`: client name -> pid), one consistent view.

        A program registered there is up (a join event missed is made good); a running one absent from it
        for longer than `grace_s` (a server restart it did not come back from: it hangs) is replaced.
        """
        now = self.clock()
        for program in self.programs.values():
            client = program.spec.client
            if not client or program.proc is None:
                continue
            if registered.get(client, -1) in (program.pid, None):
                program.missing_since = None
                self._registered(program)
            elif program.state is S.RUNNING:
                program.registered = False
                program.missing_since = program.missing_since or now
                if now - program.missing_since > grace_s:
                    program.missing_since = None
                    self.life.kill_hung(program, f"not registered with the server for {grace_s:g} s "
                                                 f"(registered as {client} before)")

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
        if self._epoll.poll(timeout):
            for backend in self.backends.values():
                for event in backend.events():
                    if isinstance(event, HostChanged):
                        self._host_changed(event)
                        continue
                    program = self._by_handle(event.handle)
                    if program is not None:
                        self.life.on_event(program, event)
        self._run_timers()

    def _host_changed(self, event):
        """A host lost (its programs UNKNOWN, none started there until it is back: an alarm) or back."""
        mine = [p.name for p in self.programs.values() if p.spec.host == event.host and not p.retired]
        if event.problem:
            log.error("host %s cannot be reached: %s; its programs are UNKNOWN", event.host, event.problem)
            self.life.emit("host_unreachable", host=event.host, error=event.problem, programs=mine)
        else:
            log.warning("host %s is back: its programs are held against what its supervisord reports", event.host)
            self.life.emit("host_reachable", host=event.host, programs=mine)
            if self.stopping_all:
                self._stop_ready()
            else:
                self._start_ready()

    def look(self, host, hint=None):
        """Someone on `host` (its agent) said a process changed state there (`hint`: what it said)."""
        backend = self.backends.get(host)
        if backend is not None:
            backend.look(hint if isinstance(hint, dict) else None)

    def probe_failed(self, host, hint):
        """The agent on `host` says a program's liveness probe failed (`hint`: program, pid, reason)."""
        backend = self.backends.get(host)
        if backend is not None and isinstance(hint, dict):
            backend.probe_failed(hint)

    def take_figures(self, host, figures):
        backend = self.backends.get(host)
        if backend is not None:
            backend.take_figures(figures)

    def _by_handle(self, handle):
        return next((p for p in self.programs.values() if p.proc is handle), None)

    def next_due(self):
        return min((p.timer[0] for p in self.programs.values() if p.timer), default=None)

    def _run_timers(self):
        now = self.clock()
        for program in list(self.programs.values()):
            if program.timer and program.timer[0] <= now:
                action = program.timer[1]
                program.timer = None
                action(program)

    def reap_orphans(self):
        return sum(backend.reap_orphans() for backend in self.backends.values())

    def records(self):
        """{program: record} of what runs now, for `stop_leftovers` after a crash of the controller."""
        return {p.name: self.backends[p.spec.host].record(p.proc) for p in self.programs.values()
                if p.proc is not None}

    def stop_leftovers(self, records):
        """Stop what a previous run controller left running (its `records()`); what was stopped."""
        by_host = {}
        for name, record in records.items():
            host = record.get("host", LocalBackend.host) if isinstance(record, dict) else LocalBackend.host
            by_host.setdefault(host, {})[name] = record
        for host, mine in by_host.items():  # what we will start there again is adopted, not stopped
            if self.backends.get(host) is not None and self.backends[host].adopts:
                for name in [n for n in mine if n in self.programs and self.programs[n].spec.host == host]:
                    del mine[name]
        return [line for host, mine in by_host.items() if host in self.backends and mine
                for line in self.backends[host].stop_leftovers(mine)]

    def close(self):
        """Kill whatever still runs (an orderly stop is `stop_all`), close files."""
        self.stopping_all = True
        for program in list(self.programs.values()):
            if program.proc is not None:
                self.life.kill_now(program)
        for program in self.programs.values():
            program.log.close()
        for backend in self.backends.values():
            backend.close()
        self._epoll.close()

    # --- order ----------------------------------------------------------------------------------

    def _settled(self, program):
        """A program reached a resting state: take the next spec, forget it if retired, move the order on."""
        if program.state is S.STOPPED and program.next_spec is not None:
            program.take_next_spec()
        if program.retired:
            self._forget_retired()
        if self.stopping_all:
            self._stop_ready()
        else:
            self._start_ready()

    def _start_ready(self):
        if self.stopping_all:
            return
        for program in self.programs.values():
            if (program.wanted and program.proc is None and program.timer is None
                    and program.state in (S.STOPPED, S.EXITED, S.FATAL) and self._deps_ready(program)
                    and self._runs_here(program)):
                self.life.spawn(program)

    def _runs_here(self, program):
        if program.spec.host in self.backends:
            return True
        if program.wanted:
            log.warning("%s is for host %s: no backend for that host here; not started",
                        program.name, program.spec.host)
            program.wanted = False
            program.last_exit = {"error": f"host {program.spec.host}: programs of other hosts "
                                          "(their supervisord) are not run by this supervisor yet"}
        return False

    def _deps_ready(self, program):
        return not self.waiting_for(program)

    def waiting_for(self, program):
        """What a program waits for before it can start: programs it depends on, or its host."""
        waits = [d for d in program.spec.depends_on if d in self.programs and self.programs[d].state is not S.RUNNING]
        backend = self.backends.get(program.spec.host)
        if backend is not None and not backend.reachable:
            waits.append(f"host {program.spec.host}")
        return waits

    def _restart_dependents(self, program):
        if not program.spec.restart_dependents:
            return
        for other in self.programs.values():
            if program.name in other.spec.depends_on and other.proc is not None:
                log.info("%s restarts with %s (restart_dependents)", other.name, program.name)
                other.wanted = True
                self._stop(other)

    def _stop(self, program):
        if program.proc is None and program.retired and program.state is S.STOPPED:
            self._forget_retired()
        else:
            self.life.stop(program)

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

    # --- figures --------------------------------------------------------------------------------

    def shown_state(self, program):
        """The state said of a program: UNKNOWN while its host cannot be reached (unless it is stopped)."""
        backend = self.backends.get(program.spec.host)
        unknown = backend is not None and not backend.reachable and program.state is not S.STOPPED
        return S.UNKNOWN.value if unknown else program.state.value

    def brief(self):
        """Each program's state and last exit, without asking anything of its process."""
        return {name: {"state": self.shown_state(p), "last_exit": describe_exit(p.last_exit) if p.last_exit else None,
                       "host": p.spec.host}
                for name, p in self.programs.items() if not p.retired}

    def describe(self, name):
        """One program's status, with CPU % (since the last ask) and RSS gathered now."""
        program = self.programs[name]
        spec = program.spec
        cpu, rss = self.backends[spec.host].figures(program.proc) if program.proc else (None, None)
        return {
            "state": self.shown_state(program), "pid": program.pid, "host": spec.host,
            "uptime": round(self.clock() - program.started_at, 3) if program.proc else None,
            "restarts": program.restarts, "last_exit": program.last_exit,
            "client": spec.client, "registered": program.registered if spec.client else None,
            "cpu_percent": cpu, "rss": rss, "waiting_for": self.waiting_for(program),
            "cmd": list(spec.argv),
        }

    def status(self):
        return {name: self.describe(name) for name, p in self.programs.items() if not p.retired}

    def hosts(self):
        """Each host but this one: reachable or why not, its agent's last figures, its programs."""
        return {name: {"reachable": backend.reachable, "problem": backend.problem or None,
                       "figures": getattr(backend, "figures_seen", None) or None,
                       "programs": [p.name for p in self.programs.values() if p.spec.host == name and not p.retired]}
                for name, backend in self.backends.items() if name != LocalBackend.host}
