"""Operators' commands on programs, answered by the run controller: status, start, stop, restart, reload.

Owns turning a request into supervisor orders and answering once the order is
done (a program up, or stopped), without blocking the loop. Must not spawn
processes: the supervisor does, through its backends.
"""

import json
import logging
import os
import socket
import time

import experiments
from runcontrol import protocol
from runcontrol.errors import ConfigError, Refused
from runcontrol.states import ChildState as S
from runcontrol.supervision.program import describe_exit

log = logging.getLogger("runcontrol.controller")

LIST_WAIT_S = 2.0
SETTLE_EXTRA_S = 5.0


class ProgramCommands:
    """The `cmd_*` handlers of the run controller that act on programs."""

    def __init__(self, controller):
        self.controller = controller
        self.client = controller.client
        self.supervisor = controller.supervisor
        self.waiters = controller.waiters

    def cmd_status(self, msg):
        """Every program: state, pid, host, uptime, restarts, last exit, CPU %, RSS, registration, heartbeat age;
        the run, the hosts and the standing alarms."""
        reply = self.client.defer(msg)
        listing = self.client.start({"cmd": "_list"})
        self.waiters.add(lambda: listing.answer is not None,
                         lambda: reply.resolve(self.status(listing.answer)),
                         LIST_WAIT_S, lambda: (self.client.abandon(listing), reply.resolve(self.status(None))))
        return reply

    def status(self, listing=None):
        clients = {}
        if listing is not None and listing.ok:
            clients = {c["name"]: c for c in listing.result}
        programs = self.supervisor.status()
        now = time.time()
        for name, figures in programs.items():
            seen = clients.get(figures["client"], {}).get("last_seen")
            figures["heartbeat_age"] = round(now - seen, 3) if seen else None
            figures["config_changed"] = self.controller.configs.changed_in_run(name)
        runs = self.controller.runbook
        return {"experiment": self.controller.spec.name, "state": runs.state, "run": runs.run,
                "current_run": runs.current, "participants": self.controller.runs.participants(),
                "programs": programs, "hosts": self.supervisor.hosts(), "clients": sorted(clients),
                "alarms": self.controller.alarms.book.listing(),
                "controller": {"pid": os.getpid(), "host": socket.gethostname()}}

    def cmd_start(self, msg):
        """Start a program (`program`), or every program when none is named; answers once it is up."""
        return self._act(msg, self.supervisor.start, until_up=True)

    def cmd_stop(self, msg):
        """Stop a program (`program`), or every program when none is named; answers once it has stopped."""
        return self._act(msg, self.supervisor.stop, until_up=False)

    def cmd_restart(self, msg):
        """Stop and start a program (`program`) again; answers once the new one is up."""
        if not msg.get("program"):
            raise Refused("restart needs 'program': the name of a program", protocol.BAD_FIELD)
        return self._act(msg, self.supervisor.restart, until_up=True)

    def cmd_reload(self, msg):
        """Re-read the experiment file and apply the difference (programs, alarms, first settings of programs new
        to it); an invalid file changes nothing."""
        spec = self.controller.spec
        try:
            new = experiments.load(spec.path)
        except ConfigError as exc:
            raise Refused(f"nothing changed: {exc}", protocol.BAD_EXPERIMENT) from None
        if new.name != spec.name:
            raise Refused(f"nothing changed: the file now names experiment {new.name!r}, "
                          f"not {spec.name!r}; restart run.py for that", protocol.BAD_EXPERIMENT)
        diff = self.supervisor.apply(new)
        warnings = list(new.warnings)
        if new.server != spec.server or new.paths != spec.paths:
            warnings.append("server or paths settings changed: they apply when run.py is restarted")
        self.controller.spec = new
        self.controller.alarms.use(new.alarms)
        self.controller.alarms.seed()
        log.info("reloaded %s: %s", new.path, json.dumps(diff))
        return {**diff, "warnings": warnings}

    def _act(self, msg, action, until_up):
        names = self._program_names(msg.get("program"))
        if not names:
            return {}
        programs = [self.supervisor.programs[name] for name in names]
        before = {p.name: p.restarts for p in programs}
        old_pids = {p.name: p.pid for p in programs}  # before acting: a restart must bring a new one
        for name in names:
            action(name)
        if until_up:
            def done(p):
                return p.state is S.RUNNING and (p.pid != old_pids[p.name] or msg["cmd"] != "restart")
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
        if not isinstance(name, str) or name not in programs:
            known = ", ".join(programs) or "none"
            raise Refused(f"no program {name!r} in experiment {self.controller.spec.name}; programs: {known}",
                          protocol.UNKNOWN_PROGRAM)
        return [name]
