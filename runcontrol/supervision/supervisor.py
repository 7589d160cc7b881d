"""Process supervision: start, watch, restart and stop the programs of an experiment.

Owns the set of programs (a reload adds, changes and retires them), operators'
orders (start, stop, restart, reload), what the server says of their clients
(registered, gone, hung), and the loop that joins its parts: the backends'
events and the programs' timers (one timer heap). `Order` decides which program
moves next, `Lifecycle` carries each program from an order to its outcome,
`Hosts` holds one backend per host name, `Status` says what each program is.
Exits are events from the backends, never polled. Must not parse JSON or touch
the bus: the run controller feeds it and carries its events.
"""

import time

from runcontrol.states import ChildState as S
from runcontrol.supervision.backends.base import HostChanged
from runcontrol.supervision.backends.local import LocalBackend
from runcontrol.supervision.hosts import Hosts
from runcontrol.supervision.lifecycle import Lifecycle
from runcontrol.supervision.order import Order
from runcontrol.supervision.program import Program
from runcontrol.supervision.programlog import ProgramLog
from runcontrol.supervision.status import Status
from runcontrol.timers import Timers


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
        self.clock = clock
        self.timers = Timers(clock)
        emit = emit or (lambda kind, **fields: None)
        self.programs = {}    # in start order; one dict for good: its parts hold it
        self._hosts = Hosts(backends or {LocalBackend.host: LocalBackend()}, self.programs, emit)
        self.life = Lifecycle(self._hosts.backends, emit, self.timers, settled=lambda p: self.order.settled(p),
                              deps_ready=lambda p: self.order.deps_ready(p),
                              restart_dependents=lambda p: self.order.restart_dependents(p))
        self.life.env.update(env or {})
        self.life.curve = experiment.server.curve
        self.order = Order(self.programs, self._hosts, self.life)
        self._status = Status(self.programs, self._hosts, self.order.waiting_for, clock)
        self.programs.update((spec.name, self._new_program(spec)) for spec in experiment.programs)

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

    def start_all(self, leave=()):
        """Start every program but those named in `leave` (stopped on purpose: they stay stopped)."""
        self.order.start_all(leave)

    def stop_all(self):
        """Stop every program, dependents before what they depend on; see `all_stopped`."""
        self.order.stop_all()

    def all_stopped(self):
        return all(p.proc is None for p in self.programs.values())

    def start(self, name):
        program = self.get(name)
        program.wanted = True
        if program.state is S.FATAL:
            program.clear_failures()
        self.order.start_ready()
        return program

    def stop(self, name):
        program = self.get(name)
        program.wanted = False
        self.order.stop(program)
        return program

    def restart(self, name):
        program = self.get(name)
        program.wanted = True
        if program.proc is not None:
            self.order.stop(program)
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
        for name, program in list(self.programs.items()):
            if name not in new:
                diff["removed"].append(name)
                program.retired, program.wanted = True, False
                self.order.stop(program)
            elif new[name] != program.spec:
                diff["changed"].append(name)
                program.next_spec = new[name]
                if program.proc is not None:
                    self.order.stop(program)
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
                program.wanted = not self.order.stopping_all
            programs[spec.name] = program
        programs.update((n, p) for n, p in self.programs.items() if p.retired and n not in programs)
        self.programs.clear()   # the same dict, in the new order: the parts hold it
        self.programs.update(programs)
        self.order.forget_retired()
        self.order.start_ready()
        return diff

    # --- what the server says of the programs' clients ---------------------------------

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
        return self._hosts.fileno()

    def next_due(self):
        """When the next program timer is due (on the clock), or None."""
        return self.timers.next_due()

    def process(self, timeout=0.0):
        """Handle exits, output and due timers, waiting up to `timeout` s (or until the next timer)."""
        for event in self._hosts.events(self.timers.wait_s(timeout)):
            if isinstance(event, HostChanged):
                self._hosts.changed(event)
                if not event.problem:
                    self.order.resume()
                continue
            program = next((p for p in self.programs.values() if p.proc is event.handle), None)
            if program is not None:
                self.life.on_event(program, event)
        self.timers.run_due()

    def close(self):
        """Kill whatever still runs (an orderly stop is `stop_all`), close files."""
        self.order.stopping_all = True
        for program in list(self.programs.values()):
            if program.proc is not None:
                self.life.kill_now(program)
        for program in self.programs.values():
            program.log.close()
        self._hosts.close()

    # --- what the hosts tell, and what runs there -------------------------------------------------

    def look(self, host, hint=None):
        """Someone on `host` (its agent) said a process changed state there (`hint`: what it said)."""
        self._hosts.look(host, hint)

    def probe_failed(self, host, hint):
        """The agent on `host` says a program's liveness probe failed (`hint`: program, pid, reason)."""
        self._hosts.probe_failed(host, hint)

    def take_figures(self, host, figures):
        self._hosts.take_figures(host, figures)

    def reap_orphans(self):
        return self._hosts.reap_orphans()

    def records(self):
        """{program: record} of what runs now, for `stop_leftovers` after a crash of the controller."""
        return self._hosts.records()

    def stop_leftovers(self, records):
        """Stop what a previous run controller left running (its `records()`); what was stopped."""
        return self._hosts.stop_leftovers(records)

    # --- what is said of the programs and hosts ---------------------------------------------------

    def brief(self):
        """Each program's state and last exit, without asking anything of its process."""
        return self._status.brief()

    def describe(self, name):
        """One program's status, with CPU % (since the last ask) and RSS gathered now."""
        return self._status.describe(name)

    def status(self):
        return self._status.status()

    def hosts(self):
        """Each host but this one: reachable or why not, its agent's last figures, its programs."""
        return self._hosts.describe()
