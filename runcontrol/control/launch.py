"""Launching an experiment: the server and the run controller, each under its pid-file watchdog.

What `run.py` does, as a class that can be tested alone: start both watchdogs
(and the live view when there is a terminal), wait until a stop signal, a
watchdog's end or the view's end, then stop the run controller (which stops
the programs in reverse order) and the server. The run controller is stopped by
SIGTERM whatever the cause: the cause is left for it in the state folder
(`stop_cause`), for the run log. Must not spawn programs: the run controller does.
"""

import logging
import select
import signal
import subprocess
import sys

from runcontrol import process
from runcontrol.control.durable import write_durably
from runcontrol.control.runs import SHUTDOWN_TIMEOUT_S, TRANSITION_TIMEOUT_S

log = logging.getLogger("run")

GRACE_S = 5.0
CHECK_S = 1.0   # a loop turn at least this often, should a SIGCHLD be missed
SERVER_MODULE = "runcontrol.bus.server"
CONTROLLER_MODULE = "runcontrol.control.controller"
STOP_CAUSE = "stop_cause"
SIGNAL_CAUSES = {"SIGINT": "SIGINT, Ctrl-C", "SIGHUP": "SIGHUP, its terminal closed"}


def kept(name, experiment, command, grace_s, standby=False):
    """The watchdog command that keeps `command` alive through its pid file `<state>/<name>.pid` (with a standby
    copy of it started ahead, for the server)."""
    pid_path = str(experiment.paths.state / f"{name}.pid")
    return [sys.executable, "-m", "watchdog", "--pidfile", pid_path,
            "--stale-after", f"{experiment.server.stale_after_s:g}", "--grace", f"{grace_s:g}",
            *(["--standby"] if standby else []), "--", *command, "--pidfile", pid_path]


def leave_stop_cause(experiment, cause):
    """Leave the run controller the cause of the stop: it hears only the SIGTERM of its watchdog."""
    try:
        write_durably(experiment.paths.state / STOP_CAUSE, cause)
    except OSError as exc:
        log.warning("cannot leave the run controller the cause of the stop (%s): its run log names SIGTERM", exc)


def take_stop_cause(experiment):
    """The cause run.py left for this stop, taken (the file is removed); None when it left none."""
    path = experiment.paths.state / STOP_CAUSE
    try:
        cause = path.read_text(encoding="utf-8").strip()
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the cause of the stop in %s: %s", path, exc)
        return None
    return cause or None


def controller_grace(experiment):
    """Time the run controller may take to let a transition under way finish, end an open run and stop every
    program (each stop_timeout)."""
    return TRANSITION_TIMEOUT_S + SHUTDOWN_TIMEOUT_S + sum(p.stop_timeout_s for p in experiment.programs) + GRACE_S


def plan(experiment, check_host=None):
    """The start plan of an experiment, as `run.py --check` prints it; `check_host(host)` says what is wrong
    with a host's supervisord (None when it answers)."""
    server = experiment.server
    lines = [f"experiment {experiment.name} ({experiment.path})",
             f"server: router {server.router}, events {server.events}, beacon {server.beacon.address}:"
             f"{server.beacon.port}, heartbeat {server.heartbeat_s:g} s, timeout {server.timeout_s:g} s; "
             f"kept by the watchdog (stale after {server.stale_after_s:g} s)",
             f"logs {experiment.paths.logs}, data {experiment.paths.data}, state {experiment.paths.state}",
             "start order:"]
    width = max((len(p.name) for p in experiment.programs), default=0)
    for number, program in enumerate(experiment.programs, 1):
        after = f" after {', '.join(program.depends_on)}" if program.depends_on else ""
        client = f"client {program.client}" if program.client else "no client"
        lines.append(f"  {number:2d}. {program.name:<{width}}  {client}; restart {program.restart}; "
                     f"on {program.host}{after}: {' '.join(program.argv)}")
    if not experiment.programs:
        lines.append("  (no programs)")
    warnings = list(experiment.warnings)
    for name, host in experiment.hosts.items():
        there = [p.name for p in experiment.programs if p.host == name]
        problem = check_host(host) if check_host else None
        lines.append(f"host {name} (supervisord {host.supervisord}): {', '.join(there) or 'no programs'}"
                     f"{'' if check_host is None or problem else '; supervisord answers'}")
        if problem:
            warnings.append(f"host {name}'s supervisord at {host.supervisord}: {problem}")
    lines.extend(f"warning: {w}" for w in warnings)
    return "\n".join(lines)


class Launcher:
    """One experiment's server and run controller, kept by watchdogs, and the optional live view.

    `output`: where the watchdogs' and their children's logs go (None: inherited).
    `view`: the argv of the live view to run in this terminal, or None.
    """

    def __init__(self, experiment, output=None, view=None):
        self.experiment = experiment
        self.output = output
        self.view_argv = view
        self.grace_s = controller_grace(experiment)
        self.watched = {}
        self.viewer = None

    def start(self):
        path = str(self.experiment.path)
        # One left by a run.py that died before its run controller took it would name the wrong cause.
        (self.experiment.paths.state / STOP_CAUSE).unlink(missing_ok=True)
        server = [sys.executable, "-m", SERVER_MODULE, "--experiment", path]
        controller = [sys.executable, "-m", CONTROLLER_MODULE, "--experiment", path]
        self.watched["server"] = self._spawn(kept("server", self.experiment, server, GRACE_S, standby=True))
        self.watched["run controller"] = self._spawn(kept("controller", self.experiment, controller, self.grace_s))
        if self.view_argv:
            self.viewer = subprocess.Popen(self.view_argv)

    def _spawn(self, argv):
        log.info("starting: %s", " ".join(argv[1:]))
        return subprocess.Popen(argv, start_new_session=True, stdout=self.output, stderr=self.output)

    def wait(self, wakeup):
        """Until a stop signal (None), a watchdog's end ("name", status) or the view's end ("view", status)."""
        while wakeup.stop_signal is None:
            ended = self.ended()
            if ended is not None:
                return ended
            select.select([wakeup], [], [], CHECK_S)
            wakeup.drain()
        return None

    def ended(self):
        for name, proc in self.watched.items():
            if proc.poll() is not None:
                return name, proc.returncode
        if self.viewer is not None and self.viewer.poll() is not None:
            return "view", self.viewer.returncode
        return None

    def stop(self, cause=None):
        """The view, then the run controller and its programs (left `cause` for the run log), then the server;
        each reaped."""
        if self.viewer is not None and self.viewer.poll() is None:
            self.viewer.terminate()
            self.viewer.wait()
        graces = {"run controller": self.grace_s + GRACE_S, "server": 2 * GRACE_S}
        labels = {"run controller": "run controller and its programs", "server": "server"}
        for name in ("run controller", "server"):
            proc = self.watched.get(name)
            if proc is None:
                continue
            if name == "run controller" and cause is not None:
                leave_stop_cause(self.experiment, cause)
            code, killed = process.stop_group(proc, graces[name])
            if killed:
                log.warning("the %s did not stop within %.0f s: killed", name, graces[name])
            log.info("%s stopped (exit status %s)", labels[name], code)


def launch(experiment, wakeup, output=None, view=None, tell=lambda text: None):
    """Start, wait, stop; the exit status for run.py (1 when a watchdog gave up)."""
    launcher = Launcher(experiment, output, view)
    status, cause = 0, None
    try:
        launcher.start()
        ended = launcher.wait(wakeup)
        if ended is not None and ended[0] != "view":
            log.error("the watchdog of the %s exited with status %s: stopping", *ended)
            tell(f"run.py: the watchdog of the {ended[0]} exited with status {ended[1]}: stopping "
                 f"(see {experiment.paths.logs / 'orbit.log'})")
            status, cause = 1, f"the watchdog of the {ended[0]} exited with status {ended[1]}"
        elif ended is not None:
            log.info("the live view ended (status %s): stopping", ended[1])
            cause = "the live view ended"
        else:
            name = signal.Signals(wakeup.stop_signal).name
            log.info("stopping on %s", name)
            cause = SIGNAL_CAUSES.get(name, name)
    finally:
        tell(f"stopping: programs in reverse order, then the server (log: {experiment.paths.logs / 'orbit.log'})")
        launcher.stop(cause)
    log.info("everything stopped")
    tell("everything stopped")
    return status
