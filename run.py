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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="experiment name (damicm finds damicm.json) or file")
    parser.add_argument("--headless", action="store_true", help="log to stdout instead of a live view")
    args = parser.parse_args(argv)
    logsetup.configure("INFO")
    try:
        experiment = experiments.load(args.experiment)
    except ConfigError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
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
