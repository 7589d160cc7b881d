"""The order in which an experiment's programs start and stop.

Owns which program moves next: a wanted program starts once what it depends on
runs and its host can be reached; everything stops dependents first (reverse
order); a program that restarts takes the programs that declared
`restart_dependents` on it along; a program removed by a reload is forgotten
once it stopped. `Lifecycle` carries each move out and calls `settled` when a
program comes to rest, and the order moves on. Must not start, signal or wait
for a process itself, nor parse JSON or touch the bus.
"""

import logging

from runcontrol.states import ChildState as S

log = logging.getLogger("runcontrol.supervision.supervisor")


class Order:
    """`programs` is the supervisor's (name -> Program, in start order); `hosts` says which can be reached;
    `life` (a Lifecycle) spawns and stops."""

    def __init__(self, programs, hosts, life):
        self.programs = programs
        self.hosts = hosts
        self.life = life
        self.stopping_all = False

    def start_all(self, leave=()):
        """Want every program up but those named in `leave`."""
        self.stopping_all = False
        for program in self.programs.values():
            program.wanted = program.name not in leave
        self.start_ready()

    def stop_all(self):
        self.stopping_all = True
        for program in self.programs.values():
            program.wanted = False
        self.stop_ready()

    def settled(self, program):
        """A program reached a resting state: take the next spec, forget it if retired, move the order on."""
        if program.state is S.STOPPED and program.next_spec is not None:
            program.take_next_spec()
        if program.retired:
            self.forget_retired()
        self.resume()

    def resume(self):
        """Move on in the direction the order goes: starting, or stopping everything."""
        if self.stopping_all:
            self.stop_ready()
        else:
            self.start_ready()

    def start_ready(self):
        if self.stopping_all:
            return
        for program in self.programs.values():
            if (program.wanted and program.proc is None and program.timer is None
                    and program.state in (S.STOPPED, S.EXITED, S.FATAL) and self.deps_ready(program)
                    and self._runs_here(program)):
                self.life.spawn(program)

    def _runs_here(self, program):
        if program.spec.host in self.hosts:
            return True
        if program.wanted:
            log.warning("%s is for host %s: no backend for that host here; not started",
                        program.name, program.spec.host)
            program.wanted = False
            program.last_exit = {"error": f"host {program.spec.host}: programs of other hosts "
                                          "(their supervisord) are not run by this supervisor yet"}
        return False

    def deps_ready(self, program):
        return not self.waiting_for(program)

    def waiting_for(self, program):
        """What a program waits for before it can start: programs it depends on, or its host."""
        waits = [d for d in program.spec.depends_on if d in self.programs and self.programs[d].state is not S.RUNNING]
        if self.hosts.unreachable(program.spec.host):
            waits.append(f"host {program.spec.host}")
        return waits

    def restart_dependents(self, program):
        if not program.spec.restart_dependents:
            return
        for other in self.programs.values():
            if program.name in other.spec.depends_on and other.proc is not None:
                log.info("%s restarts with %s (restart_dependents)", other.name, program.name)
                other.wanted = True
                self.stop(other)

    def stop(self, program):
        if program.proc is None and program.retired and program.state is S.STOPPED:
            self.forget_retired()
        else:
            self.life.stop(program)

    def forget_retired(self):
        for name in [n for n, p in self.programs.items() if p.retired and p.state is S.STOPPED]:
            self.programs.pop(name).log.close()

    def stop_ready(self):
        for program in reversed(list(self.programs.values())):
            if program.state in (S.STOPPING, S.STOPPED):
                continue
            if not any(program.name in other.spec.depends_on and other.proc is not None
                       for other in self.programs.values()):
                self.stop(program)
