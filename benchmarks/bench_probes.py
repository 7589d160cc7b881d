"""Liveness probes: what probing 100 programs every 5 s costs the supervisor that runs them.

The same supervisor (bench_supervision.py's --serve mode: our Supervisor with the
local backend, as in the run controller) runs 100 programs `sleep 1000`, once
without probes (the reference) and once for each kind of probe, every 5 s:
`tcp` (connect, send `status`, expect `ok`), `http` (GET, 200), `exec` (`true`).
The tcp and http probes ask one small server (tests/programs/probed.py). Each
figure is the CPU time the supervisor's process used over the same 30 s, in % of
one core; the cost of the probes is the difference to the reference.

Run: python benchmarks/bench_probes.py [--programs 100] [--period 5] [--seconds 30]
Target: tcp and http probes add less than 1 % of a core.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import common
import psutil
from figures import Report

PROBES = {
    "none": None,
    "tcp": {"tcp": "127.0.0.1:{port}", "send": "status\n", "expect": "ok"},
    "http": {"http": "http://127.0.0.1:{port}/"},
    "exec": {"exec": ["true"]},
}
TARGET_PERCENT = 1.0


def supervisor_cpu(folder, probe, programs, period, seconds):
    """% of a core the supervisor used over `seconds`, with `programs` programs probed by `probe`."""
    liveness = {**probe, "period": period, "timeout": 2, "failures": 3} if probe else None
    path = folder / "bench.json"
    path.write_text(json.dumps({
        "name": "bench", "paths": {"logs": "log", "data": "data", "state": "state"},
        "programs": {f"p{i}": {"cmd": ["sleep", "1000"], "stop_timeout": 2,
                               **({"liveness": liveness} if liveness else {})} for i in range(programs)}}))
    proc = subprocess.Popen([sys.executable, str(common.ROOT / "benchmarks" / "bench_supervision.py"), "--serve",
                             str(path)], start_new_session=True)
    try:
        watched = psutil.Process(proc.pid)
        common.wait_for(lambda: len(watched.children()) >= programs, 60)
        time.sleep(period + 2)  # every probe has run once
        before = watched.cpu_times()
        time.sleep(seconds)
        after = watched.cpu_times()
        restarted = sum(1 for line in (folder / "log").glob("*.log") if "hangs" in line.read_text())
        if restarted:
            raise RuntimeError(f"{restarted} program(s) were taken as hung: the probes failed")
        return 100 * ((after.user + after.system) - (before.user + before.system)) / seconds
    finally:
        common.stop_group(proc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("probes", programs=args.programs, period=args.period, seconds=args.seconds)
    port = common.free_port()
    server = subprocess.Popen([sys.executable, str(common.ROOT / "tests" / "programs" / "probed.py"), str(port)],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    cpu = {}
    try:
        for kind, probe in PROBES.items():
            probe = {k: v.replace("{port}", str(port)) if isinstance(v, str) else v for k, v in (probe or {}).items()}
            folder = common.scratch(f"orbit-bench-probes-{kind}-")
            cpu[kind] = supervisor_cpu(folder, probe, args.programs, args.period, args.seconds)
            added = f", added {cpu[kind] - cpu['none']:+.3f}" if kind != "none" else " (the reference)"
            print(f"probes {kind:5s}: {args.programs} programs every {args.period:g} s: supervisor "
                  f"{cpu[kind]:.3f} % of a core{added}", flush=True)
    finally:
        common.stop_group(server)
    report.table(("probes", f"supervisor CPU over {args.seconds:g} s", "added by the probes"), [
        ("none (the reference)" if kind == "none" else kind, f"{percent:.3f} % of a core",
         "" if kind == "none" else f"{percent - cpu['none']:+.3f} %") for kind, percent in cpu.items()],
        title=f"{args.programs} programs, each probed every {args.period:g} s")
    for kind in ("tcp", "http", "exec"):
        report.figure(f"supervisor CPU, {kind} probes", cpu[kind], "{:.3f} %", cpu["none"], "no probes",
                      target=("<", TARGET_PERCENT) if kind != "exec" else None, on="excess")
    report.note("exec starts a process for every probe; it has no target")
    return report.finish()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(common.ROOT))
    sys.exit(main())
