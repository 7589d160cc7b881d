"""Run every benchmark, one after the other, whatever each finds; end with every figure against its target.

`make bench` runs this. Each script runs in a session of its own, bounded in time (SIGTERM when its time is
up: it stops its processes as it unwinds; SIGKILL to what is left a minute later); its figures go to one
results file, `benchmarks/results/<date>.json`. The summary lists every figure of this run with its
reference, ratio, target and verdict, and every script that failed; the exit status is 1 when a target was
missed or a script failed. SIGTERM or Ctrl-C stops the script running and ends the run.

Run: python benchmarks/runner.py [--only routing,flood] [--quick] [--results FILE]
  --quick: each script with short arguments (a check that they all work; report.py will not put those
  figures in the README).
"""

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import figures

HERE = Path(__file__).resolve().parent

# name, time limit (s), the arguments of --quick
SCRIPTS = (
    ("routing", 900, ["--messages", "20000", "--round-trips", "1000", "--runs", "1"]),
    ("scale", 1200, ["--seconds", "5", "--clients", "10,100", "--messages", "100000"]),
    ("failover", 600, ["--clients", "10", "--kills", "3"]),
    ("supervision", 900, ["--kills", "3", "--idle", "10", "--seconds", "5"]),
    ("probes", 900, ["--programs", "20", "--period", "1", "--seconds", "5"]),
    ("hosts", 1200, ["--kills", "3", "--programs", "10", "--seconds", "5"]),
    ("runs", 600, ["--participants", "20", "--rounds", "5"]),
    ("stages", 600, ["--participants", "20", "--many", "100", "--rounds", "5"]),
    ("sequences", 600, ["--sequences", "20", "--runs", "5"]),
    ("flood", 600, ["--runs", "1", "--round-trips", "100"]),
    ("legacy", 600, ["--runs", "1", "--messages", "1000", "--round-trips", "100"]),
    ("datapath", 1200, ["--seconds", "0.5"]),
    ("history", 900, ["--seconds-per-step", "1", "--days", "3"]),
    ("web", 600, ["--requests", "300", "--cpu-seconds", "2"]),
    ("notify", 600, ["--alarms", "5", "--direct", "20"]),
    ("catalog", 900, ["--runs", "10000", "--repeat", "5"]),
    ("logbook", 600, ["--entries", "10000", "--repeat", "5", "--notes", "50"]),
    ("epics", 600, ["--pvs", "1000", "--seconds", "3", "--warmup", "1"]),
)
KILL_AFTER_S = 60   # after SIGTERM, what a script has not stopped is killed


class Stop(Exception):
    pass


def on_signal(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def run_one(name, limit_s, argv, env):
    """(exit status, why it failed or None) of benchmarks/bench_<name>.py."""
    proc = subprocess.Popen([sys.executable, str(HERE / f"bench_{name}.py"), *argv], cwd=HERE.parent, env=env,
                            start_new_session=True)
    try:
        return proc.wait(limit_s), None
    except subprocess.TimeoutExpired:
        return stop(proc), f"stopped after its {limit_s} s"
    except Stop as why:
        stop(proc)
        raise Stop(f"{why}: stopped while bench_{name}.py ran") from None


def stop(proc):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # the stop itself is not interrupted
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(KILL_AFTER_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def reported_misses(path, name, run, status):
    """Whether exit status 1 only says that the script reported, in this run, a figure that missed its target."""
    section = figures.load(path)["scripts"].get(name) if path.exists() else None
    return (status == 1 and section is not None and section.get("run") == run
            and any(f.get("met") is False for f in section.get("figures", [])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="a comma-separated list of names (routing, scale, ...)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    chosen = [s for s in SCRIPTS if not args.only or s[0] in args.only.split(",")]
    run = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    path = args.results or figures.RESULTS / f"{run[:10]}.json"
    env = {**os.environ, figures.FILE_ENV: str(path), figures.RUN_ENV: run, "PYTHONUNBUFFERED": "1"}
    os.environ.update({figures.FILE_ENV: str(path), figures.RUN_ENV: run})
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    began = time.monotonic()
    interrupted = None
    for name, limit_s, quick in chosen:
        print(f"\n=== bench_{name}.py ===", flush=True)
        started = time.monotonic()
        try:
            status, failure = run_one(name, limit_s, quick if args.quick else [], env)
        except Stop as why:
            interrupted = str(why)
            figures.record(name, exit=1, failure=interrupted, quick=args.quick)
            break
        if status != 0 and failure is None and not reported_misses(path, name, run, status):
            failure = f"exit status {status}"
        figures.record(name, exit=status, failure=failure, quick=args.quick,
                       script_seconds=round(time.monotonic() - started, 1))
    data = figures.load(path)
    rows = figures.summary_rows(data, run)
    print(f"\n=== summary: {len(chosen)} scripts in {(time.monotonic() - began) / 60:.1f} min, figures in {path} ===")
    print(figures.summary_table(rows))
    misses = figures.missed(rows)
    print(f"\n{len(misses)} target(s) missed or script(s) failed" if misses else "\nevery target met")
    if interrupted:
        print(f"run ended early: {interrupted}")
    print(f"to put these figures in the README: {sys.executable} benchmarks/report.py {path}")
    return 1 if misses or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
