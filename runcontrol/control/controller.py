"""The run controller: the client named `run` that keeps the experiment's programs up.

Joins the supervisor (which spawns and restarts), the server's events (who
registered, who fell silent) and operators' requests (`status`, `start`, `stop`,
`restart`, `reload`). Carries the supervisor's events to the server as `_event`.
Must not spawn processes itself.

  python -m runcontrol.controller --experiment FILE [--pidfile PATH]
"""

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time

import psutil

import experiments
from clients.client import Client
from runcontrol import logsetup, pidfile, protocol
from runcontrol.control import runbook as runs
from runcontrol.errors import ConfigError, Refused, RunControlError
from runcontrol.supervision.backends.local import LocalBackend
from runcontrol.states import ChildState as S
from runcontrol.supervision.supervisor import Supervisor

log = logging.getLogger("runcontrol.controller")

NAME = "run"
CONNECT_WAIT_S = 30.0
LIST_WAIT_S = 2.0
TOUCH_EVERY_S = 1.0
LOOP_MAX_S = 1.0
SETTLE_EXTRA_S = 5.0
TRANSITION_TIMEOUT_S = 10.0
MAX_TRANSITION_TIMEOUT_S = 600.0


class Waiter:
    """A deferred answer that completes when `ready()` holds, or at `deadline` with `expire()`."""

    __slots__ = ("ready", "finish", "deadline", "expire")

    def __init__(self, ready, finish, deadline, expire):
        self.ready, self.finish, self.deadline, self.expire = ready, finish, deadline, expire


class Controller(Client):
    def __init__(self, experiment, pidfile_path=None, backend=None, **client_kwargs):
        super().__init__(NAME, experiment=str(experiment.path), meta={"role": "run controller"},
                         **client_kwargs)
        self.spec = experiment
        self.pidfile_path = pidfile_path
        self.state_path = experiment.paths.state / "programs.json"
        self.supervisor = Supervisor(experiment, backend or LocalBackend(subreaper=True),
                                     emit=self._on_supervisor_event,
                                     env={"ORBIT_EXPERIMENT": str(experiment.path)})
        self.watch(self.supervisor.fileno(), lambda: self.supervisor.process(0))
        self.subscribe("event.", self._on_server_event)
        self.runs = runs.RunBook(experiment.paths.state)
        self.run_clients = set()   # clients that said meta.run in their _hello
        self._transition_busy = None
        self._waiters = []
        self._seen_instance = None
        self._touched = 0.0
        self._stop_requested = None

    # --- operators' commands ------------------------------------------------------------

    def cmd_status(self, msg):
        """Every program: state, pid, host, uptime, restarts, last exit, CPU %, RSS, registration, heartbeat age."""
        reply = self.defer(msg)
        listing = self.start({"cmd": "_list"})
        self._await(lambda: listing.answer is not None,
                    lambda: reply.resolve(self.status(listing.answer)),
                    LIST_WAIT_S, lambda: (self.abandon(listing), reply.resolve(self.status(None))))
        return reply

    def status(self, listing=None):
        clients = {}
        if listing is not None and listing.ok:
            clients = {c["name"]: c for c in listing.result}
        programs = self.supervisor.status()
        now = time.time()
        for figures in programs.values():
            seen = clients.get(figures["client"], {}).get("last_seen")
            figures["heartbeat_age"] = round(now - seen, 3) if seen else None
        return {"experiment": self.spec.name, "state": self.runs.state, "run": self.runs.run,
                "current_run": self.runs.current, "participants": self.participants(), "programs": programs,
                "clients": sorted(clients), "controller": {"pid": os.getpid(), "host": socket.gethostname()}}

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
        """Re-read the experiment file and apply the difference; an invalid file changes nothing."""
        try:
            new = experiments.load(self.spec.path)
        except ConfigError as exc:
            raise Refused(f"nothing changed: {exc}", protocol.BAD_EXPERIMENT) from None
        if new.name != self.spec.name:
            raise Refused(f"nothing changed: the file now names experiment {new.name!r}, "
                          f"not {self.spec.name!r}; restart run.py for that", protocol.BAD_EXPERIMENT)
        diff = self.supervisor.apply(new)
        warnings = list(new.warnings)
        if new.server != self.spec.server or new.paths != self.spec.paths:
            warnings.append("server or paths settings changed: they apply when run.py is restarted")
        self.spec = new
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
        reply = self.defer(msg)

        def failed():
            return [p for p in programs if p.restarts > before[p.name] or p.state in (S.FATAL, S.EXITED)] \
                if until_up else []

        def finish():
            result = {p.name: self.supervisor.describe(p.name) for p in programs}
            bad = failed()
            if bad:
                reply.refuse("; ".join(f"{p.name} did not come up: {describe_exit(p.last_exit)}" for p in bad),
                             protocol.FAILED)
            else:
                reply.resolve(result)
        self._await(lambda: all(done(p) for p in programs) or failed(), finish, timeout, finish)
        return reply

    def _program_names(self, name):
        if name is None:
            return [n for n, p in self.supervisor.programs.items() if not p.retired]
        if not isinstance(name, str) or name not in self.supervisor.programs:
            known = ", ".join(self.supervisor.programs) or "none"
            raise Refused(f"no program {name!r} in experiment {self.spec.name}; programs: {known}",
                          protocol.UNKNOWN_PROGRAM)
        return [name]

    # --- runs ---------------------------------------------------------------------------------

    def cmd_prepare_run(self, msg):
        """STOP -> READY: hand out the next run number; every participant prepares."""
        return self._transition(msg, "prepare_run")

    def cmd_begin_run(self, msg):
        """READY -> RUN, with an optional `comment` and run parameters (`params`)."""
        return self._transition(msg, "begin_run")

    def cmd_end_run(self, msg):
        """RUN -> STOP: every participant ends the run."""
        return self._transition(msg, "end_run")

    def cmd_abort_run(self, msg):
        """RUN or READY -> STOP whatever the participants answer, for when things went wrong."""
        return self._transition(msg, "abort_run")

    def cmd_runs(self, msg):
        """The run log: the latest record of each run (`n`: how many, newest last; default 20)."""
        n = msg.get("n", 20)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise Refused("'n' must be a whole number >= 0", protocol.BAD_FIELD)
        return self.runs.records()[-n:] if n else []

    def participants(self):
        names = {p.spec.client for p in self.supervisor.programs.values()
                 if p.spec.run and p.spec.client and not p.retired}
        return sorted(names | self.run_clients)

    def _transition(self, msg, action):
        state = self.runs.state
        if self._transition_busy:
            raise Refused(f"{self._transition_busy} is in progress; try again when it has answered", "busy")
        if state not in runs.ALLOWED_FROM[action]:
            raise Refused(f"{action} needs state {' or '.join(runs.ALLOWED_FROM[action])}; the state is {state} "
                          f"({runs.HINTS[state]})", "bad_state")
        timeout = msg.get("timeout", TRANSITION_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= MAX_TRANSITION_TIMEOUT_S:
            raise Refused(f"'timeout' must be seconds, more than 0 and at most {MAX_TRANSITION_TIMEOUT_S:g}",
                          protocol.BAD_FIELD)
        fields = self._run_fields(msg, action)
        if action == "prepare_run":
            fields["run"] = self.runs.next_number()  # on disk before any participant hears of it
        participants = self.participants()
        payload = {"transition": runs.WIRE[action], **fields}
        if action == "abort_run":
            payload["abort"] = True
        answers = {}
        pendings = {name: self.start({"to": name, "cmd": "_transition", **payload},
                                     on_answer=lambda answer, n=name: answers.__setitem__(n, answer))
                    for name in participants}
        self._transition_busy = action
        reply = self.defer(msg)
        log.info("%s: run %s, asking %s", action, fields["run"], ", ".join(participants) or "no participant")

        def finish():
            self._transition_busy = None
            for name, pending in pendings.items():
                if name not in answers:
                    self.abandon(pending)
            self._conclude(reply, action, fields, participants, answers)
        self._await(lambda: len(answers) == len(participants), finish, timeout, finish)
        return reply

    def _run_fields(self, msg, action):
        if action == "prepare_run":
            return {"run": None}
        fields = dict(self.runs.current)
        if action == "begin_run":
            comment, params = msg.get("comment", ""), msg.get("params", {})
            if not isinstance(comment, str) or not isinstance(params, dict):
                raise Refused("'comment' must be a string and 'params' an object", protocol.BAD_FIELD)
            fields.update(comment=comment, params=params)
        return fields

    def _conclude(self, reply, action, fields, participants, answers):
        problems = {name: describe_problem(answers.get(name)) for name in participants
                    if name not in answers or not answers[name].ok}
        run = fields["run"]
        if problems and action != "abort_run":
            why = "; ".join(f"{name} {problem}" for name, problem in problems.items())
            log.warning("%s of run %s failed: %s", action, run, why)
            if action == "prepare_run":
                self.runs.log({"run": run, "result": "failed", "why": f"prepare: {why}"})
            if action == "begin_run":
                self._undo_begin(fields, [n for n in participants if n not in problems])
            reply.refuse(f"{action} of run {run} failed, the state stays {self.runs.state}: {why}", protocol.FAILED)
            return
        self._enter(action, fields, participants, problems)
        reply.resolve({"state": self.runs.state, "run": run, "participants": participants,
                       "problems": problems, **({"comment": fields.get("comment")} if action == "begin_run" else {})})

    def _undo_begin(self, fields, accepted):
        for name in accepted:
            self.send(name, "_transition", transition="end", run=fields["run"], abort=True)

    def _enter(self, action, fields, participants, problems):
        now = time.time()
        target = runs.TARGET[action]
        if action == "prepare_run":
            self.runs.enter(target, run=fields["run"], prepared=now, participants=participants)
        elif action == "begin_run":
            self.runs.enter(target, **{**fields, "start": now, "participants": participants})
            self.runs.log({k: self.runs.current.get(k) for k in ("run", "comment", "params", "participants",
                                                                  "start")} | {"result": "running"})
        else:
            started = fields.get("start")
            self.runs.log({"run": fields["run"], "comment": fields.get("comment"), "params": fields.get("params"),
                           "participants": participants, "start": started, "end": now,
                           "duration": round(now - started, 3) if started else None,
                           "result": "aborted" if action == "abort_run" else "ended",
                           **({"problems": problems} if problems else {})})
            self.runs.enter(target)
        words = {"prepare_run": "Prepared run", "begin_run": "Beginning run", "end_run": "Ending run",
                 "abort_run": "Aborted run"}
        log.info("%s %s: state %s", words[action], fields["run"], target)
        self.send(None, "_event", kind="run_state", state=target, run=fields["run"], transition=action,
                  message=f"{words[action]} {fields['run']}", comment=fields.get("comment"))

    def _rejoin(self, name):
        """Tell a participant that (re)joined during a run where the run is, at once."""
        state, current = self.runs.state, self.runs.current
        if state == runs.STOP or name not in self.participants():
            return
        log.info("%s joined during run %s (%s): telling it", name, current.get("run"), state)
        base = {"to": name, "cmd": "_transition", "run": current.get("run"), "rejoin": True}

        def then_begin(answer):
            if answer.ok and self.runs.state == runs.RUN:
                self.start({**base, "transition": "begin", "comment": current.get("comment", ""),
                            "params": current.get("params", {})})
        self.start({**base, "transition": "prepare"}, on_answer=then_begin)

    # --- waiting without blocking the loop -------------------------------------------------

    def _await(self, ready, finish, timeout_s, expire):
        self._waiters.append(Waiter(ready, finish, time.monotonic() + timeout_s, expire))
        self._check_waiters()

    def _check_waiters(self):
        now = time.monotonic()
        for waiter in list(self._waiters):
            if waiter.ready():
                self._waiters.remove(waiter)
                waiter.finish()
            elif now >= waiter.deadline:
                self._waiters.remove(waiter)
                waiter.expire()

    # --- events in and out --------------------------------------------------------------------

    def _on_supervisor_event(self, kind, **fields):
        self.send(None, "_event", kind=kind, **fields)
        if kind in ("program_started", "program_exited"):
            self._save_pids()

    def _on_server_event(self, topic, event):
        kind, name, pid = event.get("kind"), event.get("name"), event.get("pid")
        if kind == "client_joined":
            self.supervisor.client_registered(name, pid)
            if isinstance(event.get("meta"), dict) and event["meta"].get("run") is True:
                self.run_clients.add(name)
            self._rejoin(name)
        elif kind == "client_left":
            self.supervisor.client_gone(name, pid)
            self.run_clients.discard(name)
        elif kind == "client_lost":
            self.supervisor.client_gone(name, pid, hung=True)
        elif kind == "server_started":
            self._refresh_registrations()

    def _refresh_registrations(self):
        """After (re)registering, learn who is registered: events sent while we were away are lost."""
        def apply(answer):
            if answer.ok:
                for client in answer.result:
                    self.supervisor.client_registered(client["name"], client.get("pid"))
                    if isinstance(client.get("meta"), dict) and client["meta"].get("run") is True:
                        self.run_clients.add(client["name"])
        self.start({"cmd": "_list"}, on_answer=apply)

    def _save_pids(self):
        """Record our programs' pids, so a controller started after a crash of this one can stop them."""
        record = {}
        for program in self.supervisor.programs.values():
            if program.proc is not None:
                try:
                    record[program.name] = [program.pid, psutil.Process(program.pid).create_time()]
                except psutil.Error:
                    continue
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, self.state_path)

    # --- the loop --------------------------------------------------------------------------------

    def step(self):
        """One turn of the loop: wait for anything (sockets, children, timers), handle it."""
        now = time.monotonic()
        due = [now + LOOP_MAX_S, self._touched + TOUCH_EVERY_S]
        due.extend(w.deadline for w in self._waiters)
        next_due = self.supervisor.next_due()
        if next_due is not None:
            due.append(next_due)
        self.poll(max(0.0, min(due) - now))
        self.supervisor.process(0)
        if self.registered and self.instance != self._seen_instance:
            self._seen_instance = self.instance
            self.supervisor.env["ORBIT_SERVER"] = self._router
            self._refresh_registrations()
        self.supervisor.server_up = self.registered
        self._check_waiters()
        if self.pidfile_path and time.monotonic() - self._touched >= TOUCH_EVERY_S:
            pidfile.touch(self.pidfile_path)
            self._touched = time.monotonic()

    def run(self, stop_signals):
        """Start every program, keep them up until a signal in `stop_signals` arrives, stop them."""
        try:
            self.connect(CONNECT_WAIT_S)
        except RunControlError as exc:
            log.error("%s; starting the programs anyway (they find the server when it comes)", exc)
        if self.registered:
            self.supervisor.env["ORBIT_SERVER"] = self._router
        self.supervisor.start_all()
        while not stop_signals:
            self.step()
        log.info("stopping every program (%s)", signal.Signals(stop_signals[0]).name)
        self.supervisor.stop_all()
        while not self.supervisor.all_stopped():
            self.step()
        self._save_pids()
        self.poll(0.1)  # the last events go out

    def close(self):
        self.supervisor.close()
        super().close()


def describe_problem(answer):
    """What a participant's answer to a transition (None: no answer) says went wrong."""
    if answer is None:
        return "silent (no answer in time)"
    if answer.code == protocol.NO_SUCH_CLIENT:
        return "silent (not registered)"
    return f"refused: {answer.error}"


def describe_exit(last_exit):
    if not last_exit:
        return "no exit recorded"
    if last_exit.get("fatal"):
        return last_exit["fatal"]
    if last_exit.get("error"):
        return last_exit["error"]
    how = f"killed by {last_exit['signal']}" if last_exit.get("signal") else f"exited with status {last_exit.get('code')}"
    return how + (f" ({last_exit['reason']})" if last_exit.get("reason") else "")


def stop_leftovers(state_path):
    """Kill programs a previous controller left running (it crashed): their pids and start times are on file."""
    try:
        record = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    stopped = []
    for name, entry in record.items() if isinstance(record, dict) else ():
        try:
            pid, started = entry
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) > 0.01:
                continue  # the pid was reused by another process
            family = [proc, *proc.children(recursive=True)]
            os.killpg(pid, signal.SIGKILL)
        except (psutil.Error, ValueError, TypeError, ProcessLookupError, PermissionError):
            continue
        for member in family:
            try:
                member.kill()
            except psutil.Error:
                pass
        stopped.append(f"{name} (pid {pid})")
    if stopped:
        log.warning("stopped programs a previous run controller left running: %s", ", ".join(stopped))
    return stopped


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m runcontrol.controller", description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", required=True, help="experiment name or file")
    parser.add_argument("--pidfile", help="pid file to write and touch (for the watchdog)")
    parser.add_argument("--log-level", default="INFO", choices=logsetup.LEVELS)
    args = parser.parse_args(argv)
    logsetup.configure(args.log_level)
    try:
        experiment = experiments.load(args.experiment)
        experiment.paths.state.mkdir(parents=True, exist_ok=True)
        if args.pidfile:
            pidfile.write(args.pidfile)
    except (ConfigError, OSError) as exc:
        print(f"run controller: {exc}", file=sys.stderr)
        return 2
    stop_signals = []
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _: stop_signals.append(s))
    signal.signal(signal.SIGCHLD, lambda s, _: None)  # wakes the loop: orphans handed to us get reaped
    stop_leftovers(experiment.paths.state / "programs.json")
    try:
        controller = Controller(experiment, args.pidfile)
    except RunControlError as exc:
        print(f"run controller: {exc}", file=sys.stderr)
        if args.pidfile:
            pidfile.remove(args.pidfile, os.getpid())
        return 2

    def on_wake():
        try:
            wake_r.recv(512)
        except BlockingIOError:
            pass
        controller.supervisor.backend.sweep(controller.supervisor.running_pids())
    controller.watch(wake_r.fileno(), on_wake)
    try:
        controller.run(stop_signals)
    finally:
        controller.close()
        if args.pidfile:
            pidfile.remove(args.pidfile, os.getpid())
    log.info("run controller stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
