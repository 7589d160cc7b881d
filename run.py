#!/usr/bin/env python3
"""Start an experiment and keep it up until Ctrl-C or SIGTERM.

  python run.py damicm [--headless] [--check]

Starts the central server and the run controller, each kept alive by a pid-file
watchdog; the run controller starts every program of the experiment in
dependency order and keeps each alive. In a terminal it shows the live view
(status.py) and logs to <paths.logs>/orbit.log; with --headless, or without a
terminal, it logs to stdout. Ctrl-C or SIGTERM stops the programs in reverse
order, then the server.
"""

import argparse
import os
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import experiments
from runcontrol import logsetup
from runcontrol.errors import ConfigError

log = logging.getLogger("run")
GRACE_S = 5.0


def start(argv, output=None):
    log.info("starting: %s", " ".join(argv[1:]))
    return subprocess.Popen(argv, start_new_session=True, stdout=output, stderr=output)


def stop(proc, name, grace_s):
    """SIGTERM to the process group, SIGKILL after the grace; always reaped."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killing it", name, grace_s)
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    log.info("%s stopped (exit status %s)", name, proc.returncode)


def kept(name, experiment, command, grace_s):
    """The watchdog command that keeps `command` alive through its pid file `<state>/<name>.pid`."""
    pid_path = str(experiment.paths.state / f"{name}.pid")
    return [sys.executable, "-m", "watchdog", "--pidfile", pid_path,
            "--stale-after", f"{experiment.server.stale_after_s:g}", "--grace", f"{grace_s:g}", "--",
            *command, "--pidfile", pid_path]


def controller_grace(experiment):
    """Time the run controller may take to stop every program (each stop_timeout, then SIGKILL)."""
    return sum(p.stop_timeout_s for p in experiment.programs) + GRACE_S


def signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def tell(text):
    """A line for the operator's terminal, which may be gone (a closed window: the log has it too)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def plan(experiment):
    """The start plan of an experiment, as `run.py --check` prints it."""
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
    lines.extend(f"warning: {w}" for w in experiment.warnings)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="experiment name (damicm finds damicm.json) or file")
    parser.add_argument("--headless", action="store_true", help="log to stdout instead of a live view")
    parser.add_argument("--check", action="store_true",
                        help="validate the experiment and print its start plan; start nothing")
    args = parser.parse_args(argv)
    logsetup.configure("INFO")
    try:
        experiment = experiments.load(args.experiment)
    except ConfigError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(plan(experiment))
        return 0
    view = not args.headless and sys.stdout.isatty()
    output = None
    if view:  # the live view owns the terminal: logs go to files beside the programs' logs
        experiment.paths.logs.mkdir(parents=True, exist_ok=True)
        output = open(experiment.paths.logs / "orbit.log", "a", encoding="utf-8")
        logsetup.configure("INFO", output)
    for warning in experiment.warnings:
        log.warning("%s", warning)
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: stopping.append(signum))
    signal.signal(signal.SIGHUP, lambda signum, _: stopping.append(signum))  # its terminal closed
    path = str(experiment.path)
    grace_s = controller_grace(experiment)
    server = start(kept("server", experiment, [sys.executable, "-m", "runcontrol.bus.server", "--experiment", path],
                        GRACE_S), output)
    controller = start(kept("controller", experiment,
                            [sys.executable, "-m", "runcontrol.control.controller", "--experiment", path], grace_s), output)
    watched = {"server": server, "run controller": controller}
    viewer = subprocess.Popen([sys.executable, str(Path(__file__).with_name("status.py")), "--experiment", path,
                               "--connect-timeout", "30"]) if view else None
    status = 0
    while not stopping:
        ended = [name for name, proc in watched.items() if proc.poll() is not None]
        if ended:
            log.error("the watchdog of the %s exited with status %s: stopping", ended[0],
                      watched[ended[0]].returncode)
            if view:
                tell(f"run.py: the watchdog of the {ended[0]} exited with status {watched[ended[0]].returncode}: "
                     f"stopping (see {experiment.paths.logs / 'orbit.log'})")
            status = 1
            break
        if viewer is not None and viewer.poll() is not None:
            log.info("the live view ended (status %s): stopping", viewer.returncode)
            break
        time.sleep(0.2)
    if viewer is not None and viewer.poll() is None:
        viewer.terminate()
        viewer.wait()
    if view:
        tell(f"stopping: programs in reverse order, then the server (log: {experiment.paths.logs / 'orbit.log'})")
    stop(controller, "run controller and its programs", grace_s + GRACE_S)
    stop(server, "server", 2 * GRACE_S)
    log.info("everything stopped")
    if view:
        tell("everything stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
