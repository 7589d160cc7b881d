#!/usr/bin/env python3
"""Start an experiment and keep it up until Ctrl-C or SIGTERM.

  python run.py damicm

For now it starts the central server, kept alive by the pid-file watchdog, and a
spy that prints what passes; the supervision of every program of the experiment
builds on this.
"""

import argparse
import os
import logging
import signal
import subprocess
import sys
import time

import experiments
from runcontrol import logsetup
from runcontrol.errors import ConfigError

log = logging.getLogger("run")
STOP_TIMEOUT_S = 5.0


def start(argv):
    log.info("starting: %s", " ".join(argv[1:]))
    return subprocess.Popen(argv, start_new_session=True)


def stop(proc, name):
    """SIGTERM to the process group, SIGKILL after the grace; always reaped."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killing it", name, STOP_TIMEOUT_S)
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    log.info("%s stopped (exit status %s)", name, proc.returncode)


def signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
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
    for warning in experiment.warnings:
        log.warning("%s", warning)
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: stopping.append(signum))
    path = str(experiment.path)
    pid_path = str(experiment.paths.state / "server.pid")
    server = start([sys.executable, "-m", "watchdog", "--pidfile", pid_path,
                    "--stale-after", f"{experiment.server.stale_after_s:g}", "--",
                    sys.executable, "-m", "runcontrol.server", "--experiment", path, "--pidfile", pid_path])
    spy = start([sys.executable, "-m", "clients.spy", "--experiment", path, "--name", "spy"])
    status = 0
    while not stopping:
        if server.poll() is not None:
            log.error("the server's watchdog exited with status %s", server.returncode)
            status = 1
            break
        time.sleep(0.2)
    stop(spy, "spy")
    stop(server, "server and its watchdog")
    return status


if __name__ == "__main__":
    sys.exit(main())
