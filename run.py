#!/usr/bin/env python3
"""Start an experiment and keep it up until Ctrl-C or SIGTERM.

  python run.py damicm [--headless] [--check]
  python run.py damicm --export HOST DIR      what HOST needs to run its programs under its supervisord

Starts the central server and the run controller, each kept alive by a pid-file
watchdog; the run controller starts every program of the experiment in
dependency order and keeps each alive. In a terminal it shows the live view
(status.py) and logs to <paths.logs>/orbit.log; with --headless, or without a
terminal, it logs to stdout. Ctrl-C or SIGTERM stops the programs in reverse
order, then the server.
"""

import argparse
import logging
import signal
import sys
from pathlib import Path

import experiments
from runcontrol import logsetup
from runcontrol.control.configs import initial_problems
from runcontrol.control.launch import launch, plan
from runcontrol.errors import ConfigError
from runcontrol.supervision.backends import supervisordrpc
from runcontrol.supervision.export import export
from runcontrol.signals import SignalWakeup

log = logging.getLogger("run")


def tell(text):
    """A line for the operator's terminal, which may be gone (a closed window: the log has it too)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="experiment name (damicm finds damicm.json) or file")
    parser.add_argument("--headless", action="store_true", help="log to stdout instead of a live view")
    parser.add_argument("--check", action="store_true",
                        help="validate the experiment and print its start plan; start nothing")
    parser.add_argument("--export", nargs=2, metavar=("HOST", "DIR"),
                        help="write what HOST needs (supervisord.conf, keys, README) into DIR; start nothing")
    args = parser.parse_args(argv)
    logsetup.configure("INFO")
    try:
        experiment = experiments.load(args.experiment)
    except ConfigError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(plan(experiment, supervisordrpc.check))
        problems = initial_problems(experiment)
        for problem in problems:
            print(f"run.py: {problem}", file=sys.stderr)
        return 2 if problems else 0
    if args.export:
        try:
            written = export(experiment, *args.export)
        except ConfigError as exc:
            print(f"run.py: {exc}", file=sys.stderr)
            return 2
        print("\n".join(str(path) for path in written))
        return 0
    in_terminal = not args.headless and sys.stdout.isatty()
    output, view = None, None
    if in_terminal:  # the live view owns the terminal: logs go to files beside the programs' logs
        experiment.paths.logs.mkdir(parents=True, exist_ok=True)
        output = open(experiment.paths.logs / "orbit.log", "a", encoding="utf-8")
        logsetup.configure("INFO", output)
        view = [sys.executable, str(Path(__file__).with_name("status.py")), "--experiment", str(experiment.path),
                "--connect-timeout", "30"]
    for warning in experiment.warnings:
        log.warning("%s", warning)
    # SIGHUP: its terminal closed.
    wakeup = SignalWakeup((signal.SIGTERM, signal.SIGINT, signal.SIGHUP), wake_only=(signal.SIGCHLD,))
    return launch(experiment, wakeup, output, view, tell if in_terminal else (lambda text: None))


if __name__ == "__main__":
    sys.exit(main())
