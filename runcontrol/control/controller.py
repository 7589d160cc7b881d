"""The run controller: the client named `run` that keeps the experiment's programs up and drives runs.

It has a client (its connection to the bus) and a supervisor (which spawns and
restarts through its backends); it is neither. It joins what the server says
(who registered, who fell silent) to the supervisor, carries the supervisor's
events to the server as `_event`, answers operators with the commands of
`commands/` (each calls into the part that owns the work: `ProgramDesk`,
`RunDesk`, `AlarmDesk`, `ConfigDesk`, or this for the status and a reload),
and records what runs so that a successor can stop it after a crash. Must not
spawn processes itself.

  python -m runcontrol.control.controller --experiment FILE [--pidfile PATH]
"""

import json
import logging
import os
import signal
import socket
import sys
import time

import experiments
from runcontrol.client.client import Client
from runcontrol import logsetup, pidfile, protocol
from runcontrol.control import commands, runbook
from runcontrol.control.alarms import AlarmDesk
from runcontrol.control.catalog import CatalogDesk
from runcontrol.control.configs import ConfigDesk
from runcontrol.control.launch import take_stop_cause
from runcontrol.control.programs import ProgramDesk
from runcontrol.control.runs import TRANSITION_TIMEOUT_S, RunDesk
from runcontrol.control.waiters import Waiters
from runcontrol.errors import ConfigError, Refused, RunControlError
from runcontrol.signals import SignalWakeup
from runcontrol.supervision.backends.local import LocalBackend
from runcontrol.supervision.backends.supervisord import SupervisordBackend
from runcontrol.supervision.supervisor import Supervisor

log = logging.getLogger("runcontrol.controller")

NAME = "run"
CONNECT_WAIT_S = 30.0
TOUCH_EVERY_S = 1.0
LOOP_MAX_S = 1.0
RECONCILE_EVERY_S = 1.0   # how often the programs are held against the server's registry
SWEEP_EVERY_S = 0.5       # how often, after a program exited, what it left is looked for
SWEEP_FOR_S = 5.0
LIST_WAIT_S = 5.0
CATALOG_WAIT_S = 3.0       # how long a stop waits for the history's summary of the run it ended
STATUS_LIST_WAIT_S = 2.0  # how long `status` waits for the server's list of clients before answering without it


class Controller:
    def __init__(self, experiment, pidfile_path=None, backends=None, **client_kwargs):
        self.spec = experiment
        self.pidfile_path = pidfile_path
        self.state_path = experiment.paths.state / "programs.json"
        self.client = Client(NAME, experiment=str(experiment.path), meta={"role": "run controller"},
                             **client_kwargs)
        self.supervisor = Supervisor(experiment, backends or backends_for(experiment),
                                     emit=self._on_supervisor_event,
                                     env={"ORBIT_EXPERIMENT": str(experiment.path)})
        self.waiters = Waiters()
        self.runbook = runbook.RunBook(experiment.paths.state)
        self.runs = RunDesk(self.client, self.supervisor, self.runbook, self.waiters,
                            window=max(1, experiment.server.max_pending // 2))
        self.programs = ProgramDesk(self.client, self.supervisor, self.waiters, lambda: self.spec)
        self.registered = set()   # the clients registered on the server, as last listed
        # A program that did not come back to a restarted server within this is hung.
        self.missing_grace_s = experiment.server.timeout_s + 2 * experiment.server.beacon.interval_s
        self.alarms = AlarmDesk(self.client, self.supervisor, self.runs, self.waiters, self.registered,
                                experiment.paths.state, experiment.alarms, self.missing_grace_s)
        self.configs = ConfigDesk(self.client, self.runs, self.waiters, lambda: self.spec, experiment.paths.state)
        self.runs.begin_hooks.append(self.configs.run_begins)
        self.catalog = CatalogDesk(self.client, self.waiters, self.runs, self.configs, self.alarms, lambda: self.spec,
                                   experiment.paths.state)
        self.runs.end_hooks.append(self.catalog.run_ended)
        commands.register(self, self.client)
        self.client.watch(self.supervisor.fileno(), lambda: self.supervisor.process(0))
        self.client.subscribe("event.", self._on_server_event)
        self.client.subscribe(f"pub.{protocol.HOST_AGENT}", self._on_host_agent)
        self._seen_instance = None
        self._touched = 0.0
        self._reconciled = 0.0
        self._swept = 0.0
        self._sweep_until = 0.0   # a program exited: look for what it left, beside SIGCHLD, until then
        self._listing = None

    # --- events in and out --------------------------------------------------------------------

    def _on_supervisor_event(self, kind, **fields):
        self.client.send(None, "_event", kind=kind, **fields)
        if kind in ("program_started", "program_exited"):
            self._save_records()
        if kind == "program_exited":
            self._sweep_until = time.monotonic() + SWEEP_FOR_S

    def _on_server_event(self, topic, event):
        kind, name, pid = event.get("kind"), event.get("name"), event.get("pid")
        if kind == "client_joined":
            self.registered.add(name)
            self.supervisor.client_registered(name, pid)
            self.configs.client_joined(name, event.get("meta"), pid)   # its settings first, then the run
            self.runs.client_joined(name, event.get("meta"), pid)
            self.runs.rejoin(name)
        elif kind == "client_left":
            self.registered.discard(name)
            self.supervisor.client_gone(name, pid)
            self.runs.client_left(name)
        elif kind == "client_lost":
            self.registered.discard(name)
            self.supervisor.client_gone(name, pid, hung=True)
            self.runs.client_gone(name, "its client was lost (silent past the server's timeout)")
        elif kind == "server_started":
            self._refresh_registrations()

    def _on_host_agent(self, topic, event):
        """A host's agent published: a process changed state there (look at once), a liveness probe failed there,
        or the host's figures."""
        host, _, what = topic.removeprefix(f"pub.{protocol.HOST_AGENT}").rpartition(".")
        if what == "process":
            self.supervisor.look(host, event.get("data"))
        elif what == "probe":
            self.supervisor.probe_failed(host, event.get("data"))
        elif what == "figures":
            self.supervisor.take_figures(host, event.get("data"))

    def _refresh_registrations(self):
        """Learn who is registered from the server's list: after a restart of either, events are lost;
        asked again every RECONCILE_EVERY_S, so a join event missed is made good and a program that never
        came back to a new server is found."""
        now = time.monotonic()
        if self._listing is not None and self._listing.answer is None:
            if now - self._reconciled < LIST_WAIT_S:
                return  # one at a time
            self.client.abandon(self._listing)
        self._reconciled = now

        def apply(answer):
            if not answer.ok or not isinstance(answer.result, list):
                return
            clients = [c for c in answer.result if isinstance(c, dict) and isinstance(c.get("name"), str)]
            self.registered.clear()
            self.registered.update(c["name"] for c in clients)
            self.supervisor.reconcile({c["name"]: c.get("pid") for c in clients}, self.missing_grace_s)
            for client in clients:
                self.configs.client_joined(client["name"], client.get("meta"), client.get("pid"), again=True)
                self.runs.client_joined(client["name"], client.get("meta"))
        self._listing = self.client.start({"cmd": "_list"}, on_answer=apply)

    # --- what only the whole answers: the status, a reload ----------------------------------------

    def answer_status(self, msg):
        """Answer `msg` with the status once the server has listed its clients (or without them after a while)."""
        reply = self.client.defer(msg)
        listing = self.client.start({"cmd": "_list"})
        self.waiters.add(lambda: listing.answer is not None, lambda: reply.resolve(self.status(listing.answer)),
                         STATUS_LIST_WAIT_S, lambda: (self.client.abandon(listing), reply.resolve(self.status(None))))
        return reply

    def status(self, listing=None):
        """Every program, the run, the hosts, the standing alarms; `listing`: the server's answer to `_list`."""
        clients = {c["name"]: c for c in listing.result} if listing is not None and listing.ok else {}
        programs = self.programs.figures(clients)
        for name, figures in programs.items():
            figures["config_changed"] = self.configs.changed_in_run(name)
        return {"experiment": self.spec.name, "state": self.runbook.state, "run": self.runbook.run,
                "current_run": self.runbook.current, "participants": self.runs.participants(),
                "transition": self.runs.holding(), "excluded": self.runbook.excluded,
                "programs": programs, "hosts": self.supervisor.hosts(), "clients": sorted(clients),
                "alarms": self.alarms.book.listing(), "controller": {"pid": os.getpid(), "host": socket.gethostname()}}

    def exclude(self, msg):
        """Leave a participant out of the next runs; with `stop`, its program is stopped too (answered at once:
        the status shows it stopping)."""
        name = msg["program"]
        answer = self.runs.exclude(name, msg.get("why") or "", protocol.parse_by(msg), msg.get("stop") is True)
        if msg.get("stop") is True:
            for program in self._programs_of(name):
                self.supervisor.stop(program)
        return answer

    def include(self, msg):
        name = msg["program"]
        said = self.runs.include(name, protocol.parse_by(msg))
        if said.get("stopped"):
            for program in self._programs_of(name):
                self.supervisor.start(program)
        return {"included": name, "excluded": dict(self.runbook.excluded)}

    def _programs_of(self, client):
        return [name for name, p in self.supervisor.programs.items() if p.spec.client == client and not p.retired]

    def reload(self):
        """Re-read the experiment file and apply the difference (programs, alarms); an invalid file, or one of
        another experiment, changes nothing."""
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
        self.alarms.use(new.alarms)
        self.alarms.seed()
        log.info("reloaded %s: %s", new.path, json.dumps(diff))
        return {**diff, "warnings": warnings}

    def _save_records(self):
        """Record what runs, so a controller started after a crash of this one can stop it."""
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.supervisor.records()), encoding="utf-8")
        os.replace(tmp, self.state_path)

    # --- the loop --------------------------------------------------------------------------------

    def step(self):
        """One turn of the loop: wait for anything (sockets, children, timers), handle it."""
        now = time.monotonic()
        waiting = self._listing is not None and self._listing.answer is None  # asked: wait for it, not spin
        due = [now + LOOP_MAX_S, self._reconciled + (LIST_WAIT_S if waiting else RECONCILE_EVERY_S),
               self.alarms.due(), *self.waiters.deadlines()]
        if self.pidfile_path:
            due.append(self._touched + TOUCH_EVERY_S)
        if now < self._sweep_until:
            due.append(self._swept + SWEEP_EVERY_S)
        next_due = self.supervisor.next_due()
        if next_due is not None:
            due.append(next_due)
        self.client.poll(max(0.0, min(due) - now))
        self.supervisor.process(0)
        if self.client.registered and self.client.instance != self._seen_instance:
            self._seen_instance = self.client.instance
            self.supervisor.env["ORBIT_SERVER"] = self.client.router
            self._refresh_registrations()
            self.alarms.seed()
        self.supervisor.server_up = self.client.registered
        if self.client.registered and time.monotonic() - self._reconciled >= RECONCILE_EVERY_S:
            self._refresh_registrations()
        self.waiters.check()
        if self.client.registered:
            self.catalog.ask_pending()
        if time.monotonic() >= self.alarms.due():
            self.alarms.evaluate()
        now = time.monotonic()
        if now < self._sweep_until and now - self._swept >= SWEEP_EVERY_S:
            self._swept = now  # what an exited program left, also when its SIGCHLD came before they were ours
            self.supervisor.reap_orphans()
        if self.pidfile_path and time.monotonic() - self._touched >= TOUCH_EVERY_S:
            pidfile.touch(self.pidfile_path)
            self._touched = time.monotonic()

    def serve(self, wakeup):
        """Start every program, keep them up until `wakeup` has a stop signal, stop them."""
        try:
            self.client.connect(CONNECT_WAIT_S)
        except RunControlError as exc:
            log.error("%s; starting the programs anyway (they find the server when it comes)", exc)
        if self.client.registered:
            self.supervisor.env["ORBIT_SERVER"] = self.client.router
        self.catalog.catch_up()
        left_out = [name for client, said in self.runbook.excluded.items() if said.get("stopped")
                    for name in self._programs_of(client)]   # `exclude ... stop=true` holds across restarts
        self.supervisor.start_all(leave=left_out)
        while wakeup.stop_signal is None:
            self.step()
        # run.py stops us by SIGTERM whatever stopped it, and leaves the cause (SIGINT, say) for the run log.
        cause = take_stop_cause(self.spec) or signal.Signals(wakeup.stop_signal).name
        self._end_open_run(f"the experiment was stopped ({cause})", cause)
        log.info("stopping every program (%s)", cause)
        self.supervisor.stop_all()
        while not self.supervisor.all_stopped():
            self.step()
        self._save_records()
        self.client.poll(0.1)  # the last events go out

    def _end_open_run(self, why, cause=None):
        """An open run ends before the programs stop; a transition under way is let finish first (within the
        default transition timeout), else the run it leaves open would stay open."""
        deadline = time.monotonic() + TRANSITION_TIMEOUT_S
        while self.runs.busy and time.monotonic() < deadline:
            self.step()
        ending = self.runs.end_for_shutdown(why, cause)
        while ending is not None and not ending.done:
            self.step()
        deadline = time.monotonic() + CATALOG_WAIT_S
        while self.catalog.asking and time.monotonic() < deadline:   # its record completed while the historian runs
            self.step()

    def close(self):
        self.supervisor.close()
        self.client.close()


def backends_for(experiment):
    """This machine's backend, and one per other host of the experiment, driving its supervisord."""
    backends = {LocalBackend.host: LocalBackend(subreaper=True)}
    backends.update((name, SupervisordBackend(host)) for name, host in experiment.hosts.items())
    return backends


def stop_leftovers(supervisor, state_path):
    """Stop programs a previous controller left running (it crashed): they are on file."""
    try:
        records = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    stopped = supervisor.stop_leftovers(records if isinstance(records, dict) else {})
    if stopped:
        log.warning("stopped programs a previous run controller left running: %s", ", ".join(stopped))
    return stopped


def main(argv=None):
    args = logsetup.service_arguments("python -m runcontrol.control.controller", __doc__.split("\n")[0],
                                      "pid file to write and touch (for the watchdog)", argv)
    try:
        experiment = experiments.load(args.experiment)
        experiment.paths.state.mkdir(parents=True, exist_ok=True)
        if args.pidfile:
            pidfile.write(args.pidfile)
    except (ConfigError, OSError) as exc:
        print(f"run controller: {exc}", file=sys.stderr)
        return 2
    # SIGCHLD wakes the loop: orphans handed to us get reaped.
    wakeup = SignalWakeup(wake_only=(signal.SIGCHLD,))
    try:
        controller = Controller(experiment, args.pidfile)
    except RunControlError as exc:
        print(f"run controller: {exc}", file=sys.stderr)
        if args.pidfile:
            pidfile.remove(args.pidfile, os.getpid())
        return 2
    stop_leftovers(controller.supervisor, controller.state_path)
    controller.client.watch(wakeup.fileno(), lambda: (wakeup.drain(), controller.supervisor.reap_orphans()))
    try:
        controller.serve(wakeup)
    finally:
        controller.close()
        if args.pidfile:
            pidfile.remove(args.pidfile, os.getpid())
    log.info("run controller stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
