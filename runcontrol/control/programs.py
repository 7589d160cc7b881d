"""Operators' orders on programs, carried out for the run controller: start, stop, restart, and their figures.

Owns turning an order into supervisor orders and answering once it is done (a
program up, or stopped), without blocking the loop; and each program's figures
as `status` shows them. The payloads are checked by `commands/`. Must not spawn
processes: the supervisor does, through its backends.
"""

import time

from runcontrol import protocol
from runcontrol.errors import Refused
from runcontrol.states import ChildState as S
from runcontrol.supervision.program import describe_exit

SETTLE_EXTRA_S = 5.0


class ProgramDesk:
    """Start, stop and restart programs for the run controller's commands, through its supervisor."""

    def __init__(self, client, supervisor, waiters, experiment):
        self.client = client
        self.supervisor = supervisor
        self.waiters = waiters
        self.experiment = experiment   # a callable: the experiment as last (re)loaded

    def figures(self, clients):
        """Every program's status, with the age of its client's last sign of life (`clients`: the server's list by
        name)."""
        programs = self.supervisor.status()
        now = time.time()
        for figures in programs.values():
            seen = clients.get(figures["client"], {}).get("last_seen")
            figures["heartbeat_age"] = round(now - seen, 3) if seen else None
        return programs

    def start(self, msg, program):
        """Start `program` (None: every program); answer `msg` once each is up."""
        return self._act(msg, program, self.supervisor.start, until_up=True)

    def stop(self, msg, program):
        """Stop `program` (None: every program); answer `msg` once each has stopped."""
        return self._act(msg, program, self.supervisor.stop, until_up=False)

    def restart(self, msg, program):
        """Stop and start `program`; answer `msg` once a new process is up."""
        return self._act(msg, program, self.supervisor.restart, until_up=True, new_process=True)

    def _act(self, msg, program, action, until_up, new_process=False):
        names = self._program_names(program)
        if not names:
            return {}
        programs = [self.supervisor.programs[name] for name in names]
        before = {p.name: p.restarts for p in programs}
        old_pids = {p.name: p.pid for p in programs}  # before acting: a restart must bring a new one
        for name in names:
            action(name)
        if until_up:
            def done(p):
                return p.state is S.RUNNING and (p.pid != old_pids[p.name] or not new_process)
            timeout = max(p.spec.start_timeout_s for p in programs) + SETTLE_EXTRA_S
        else:
            def done(p):
                return p.proc is None
            timeout = max(p.spec.stop_timeout_s for p in programs) + SETTLE_EXTRA_S
        reply = self.client.defer(msg)

        def failed():
            return [p for p in programs if p.restarts > before[p.name] or p.state in (S.FATAL, S.EXITED)] \
                if until_up else []

        def finish():
            bad = failed()
            if bad:
                reply.refuse("; ".join(f"{p.name} did not come up: {describe_exit(p.last_exit)}" for p in bad),
                             protocol.FAILED)
            else:
                reply.resolve({p.name: self.supervisor.describe(p.name) for p in programs})
        self.waiters.add(lambda: all(done(p) for p in programs) or failed(), finish, timeout, finish)
        return reply

    def _program_names(self, name):
        programs = self.supervisor.programs
        if name is None:
            return [n for n, p in programs.items() if not p.retired]
        if name not in programs:
            known = ", ".join(programs) or "none"
            raise Refused(f"no program {name!r} in experiment {self.experiment().name}; programs: {known}",
                          protocol.UNKNOWN_PROGRAM)
        return [name]
