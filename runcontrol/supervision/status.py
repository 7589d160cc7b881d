"""What is said of the programs: the state shown for each, in brief or with its process's figures.

Owns reading the programs' records into the status that operators, alarms and
the views read: UNKNOWN while a program's host cannot be reached, what it waits
for, its uptime, CPU and memory. Must not change a program, nor parse JSON or
touch the bus.
"""

from runcontrol.states import ChildState as S
from runcontrol.supervision.program import describe_exit


class Status:
    """`programs` is the supervisor's (name -> Program, read only); `hosts` says which can be reached and gives
    each host's backend; `waiting_for(program)` what a program waits for; `clock` its uptimes."""

    def __init__(self, programs, hosts, waiting_for, clock):
        self.programs = programs
        self.hosts = hosts
        self.waiting_for = waiting_for
        self.clock = clock

    def shown_state(self, program):
        """The state said of a program: UNKNOWN while its host cannot be reached (unless it is stopped)."""
        unknown = self.hosts.unreachable(program.spec.host) and program.state is not S.STOPPED
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
        cpu, rss = self.hosts.backend(spec.host).figures(program.proc) if program.proc else (None, None)
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
