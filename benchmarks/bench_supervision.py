"""Supervision: respawn time after a SIGKILL, and a supervisor's CPU use at idle, ours against supervisord.

Respawn: one program, `bash -c 'echo $$ $EPOCHREALTIME >> FILE; exec sleep 1000'`, so
each instance records its pid and the moment it ran. Each round waits until the
instance has been up 1.3 s (past both supervisors' start check of 1 s), SIGKILLs it,
and measures kill -> the replacement's first instruction (bash start-up included,
the same for both).

Idle: 50 programs `sleep 1000` under each supervisor at once; the CPU time each
supervisor process used over the same 30 s.

A bare Popen-and-wait loop gives the floor for the respawn in the same run.
Our supervisor runs alone here (this script's --serve mode: the Supervisor with the
local backend, no server), as supervisord does.
Targets: our respawn median under 10 ms; our idle CPU no more than supervisord's.

Run: python benchmarks/bench_supervision.py [--kills 20] [--idle 50] [--seconds 30]
"""

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common
import psutil
from figures import Report

import experiments
from runcontrol.supervision.backends.local import LocalBackend
from runcontrol.supervision.supervisor import Supervisor

UP_BEFORE_KILL_S = 1.3
STAMP = "echo $$ $EPOCHREALTIME >> {file}; exec sleep 1000"


def serve(path):
    """--serve: run our Supervisor over an experiment file until SIGTERM, then stop everything."""
    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sup = Supervisor(experiments.load(path), {LocalBackend.host: LocalBackend(subreaper=True)})
    sup.start_all()
    try:
        while True:
            sup.process(3600)
    finally:
        sup.stop_all()
        while not sup.all_stopped():
            sup.process(1)
        sup.close()


class Bare:
    """The reference: a loop that starts the program and waits for it, nothing else."""
    name = "bare"
    LOOP = "import subprocess, sys\nwhile True:\n    subprocess.Popen(sys.argv[1:]).wait()"

    def __init__(self, folder, programs):
        (argv,) = programs.values()
        self.proc = subprocess.Popen([sys.executable, "-c", self.LOOP, *argv], start_new_session=True)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Ours:
    name = "orbit"

    def __init__(self, folder, programs):
        path = folder / "bench.json"
        path.write_text(json.dumps({
            "name": "bench", "paths": {"logs": "log", "data": "data", "state": "state"},
            "programs": {name: {"cmd": argv, "stop_timeout": 2, "max_restarts": 1000}
                         for name, argv in programs.items()}}))
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(path)], start_new_session=True)

    def stop(self):
        common.stop_group(self.proc)


class Supervisord:
    name = "supervisord"

    def __init__(self, folder, programs):
        conf = folder / "supervisord.conf"
        sections = [f"[supervisord]\nnodaemon=true\nlogfile={folder}/supervisord.log\n"
                    f"pidfile={folder}/supervisord.pid\nloglevel=warn\n"]
        for name, argv in programs.items():
            command = " ".join(quote(a) for a in argv)
            sections.append(f"[program:{name}]\ncommand={command}\nautorestart=true\nstartsecs=1\n"
                            f"startretries=1000\nstopwaitsecs=2\nstdout_logfile={folder}/{name}.out\n"
                            "redirect_stderr=true\n")
        conf.write_text("\n".join(sections))
        supervisord = Path(sys.executable).with_name("supervisord")
        self.proc = subprocess.Popen([str(supervisord), "-c", str(conf)], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        common.stop_group(self.proc)


def quote(arg):
    return '"' + arg.replace('"', '\\"') + '"' if " " in arg or "$" in arg else arg




def stamps(path):
    if not path.exists():
        return []
    return [(int(pid), float(at)) for pid, at in (line.split() for line in path.read_text().splitlines() if line)]


def wait_stamps(path, count, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        lines = stamps(path)
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise RuntimeError(f"no new instance recorded in {path} within {timeout_s} s")
        time.sleep(0.0005)


def respawn(kind, folder, kills):
    stamp_file = folder / f"{kind.name}.stamps"
    supervisor = kind(folder, {"victim": ["bash", "-c", STAMP.format(file=stamp_file)]})
    latencies = []
    try:
        for round_number in range(1, kills + 1):
            pid, started = wait_stamps(stamp_file, round_number)[-1]
            time.sleep(max(0.0, started + UP_BEFORE_KILL_S - time.time()))
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            latencies.append(wait_stamps(stamp_file, round_number + 1)[-1][1] - killed_at)
    finally:
        supervisor.stop()
    return latencies


def idle_cpu(folder, count, seconds):
    supervisors = []
    try:
        for kind in (Ours, Supervisord):
            (folder / kind.name).mkdir()
            supervisors.append(kind(folder / kind.name, {f"idle{i}": ["sleep", "1000"] for i in range(count)}))
        procs = [psutil.Process(s.proc.pid) for s in supervisors]
        common.wait_for(lambda: all(len(p.children()) >= count for p in procs), 30)
        time.sleep(3)  # past start checks
        before = [p.cpu_times() for p in procs]
        time.sleep(seconds)
        after = [p.cpu_times() for p in procs]
        return {s.name: 100 * ((a.user + a.system) - (b.user + b.system)) / seconds
                for s, b, a in zip(supervisors, before, after)}
    finally:
        for s in supervisors:
            s.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    common.exit_on_sigterm()
    report = Report("supervision", kills=args.kills, idle=args.idle, seconds=args.seconds)
    folder = common.scratch("orbit-bench-sup-")
    results = {}
    for kind in (Bare, Ours, Supervisord):
        ms = [1000 * v for v in respawn(kind, folder, args.kills)]
        results[kind.name] = ms
        print(f"respawn {kind.name:11s}: median {statistics.median(ms):7.1f} ms, max {max(ms):7.1f} ms "
              f"over {len(ms)} kills", flush=True)
    cpu = idle_cpu(folder, args.idle, args.seconds)
    for name, percent in cpu.items():
        print(f"idle CPU {name:11s} with {args.idle} programs over {args.seconds:g} s: {percent:.3f} % of a core")
    labels = {"bare": "bare Popen-and-wait loop", "orbit": "orbit supervisor", "supervisord": "supervisord"}
    report.table(("supervisor", "respawn median", "respawn max"), [
        (labels[name], f"{statistics.median(ms):.1f} ms", f"{max(ms):.1f} ms") for name, ms in results.items()],
        title=f"Respawn after SIGKILL, {args.kills} kills each")
    report.table(("supervisor", f"CPU over {args.seconds:g} s, {args.idle} idle programs"), [
        (labels[name], f"{percent:.3f} % of a core") for name, percent in cpu.items()], title="Idle")
    floor = statistics.median(results["bare"])
    report.figure("respawn median, orbit supervisor", statistics.median(results["orbit"]), "{:.1f} ms", floor,
                  "the bare loop", target=("<", 10.0))
    report.figure("respawn median, supervisord", statistics.median(results["supervisord"]), "{:.1f} ms", floor,
                  "the bare loop")
    report.figure(f"idle CPU, {args.idle} programs, orbit supervisor", cpu["orbit"], "{:.3f} %", cpu["supervisord"],
                  "supervisord", target=("<=", 0.0), on="excess")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
