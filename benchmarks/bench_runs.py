"""Run transitions: `begin_run` to 100 participants, all acknowledged; median and max over 20.

The participants are foreign clients speaking the wire protocol over bare DEALER
sockets (4 helper processes of 25), registered with `"meta": {"participant": true}`; each
answers pings and acknowledges every `_transition`. A real server and a real run
controller (`python -m runcontrol.control.controller`) run in their own processes; the
timing is the operator's: `begin_run` sent -> its answer received (every
participant asked and answered through the server in between). Each round ends
the run again (not timed).
Reference, in each round of the same run: a bare round trip to the same participants, a
raw DEALER client of the same server sending each of them a `_transition` at once and
taking every reply (matched by `id`): what asking 100 participants through the server
costs, without the run controller, its run book and the operator's hop.
Target: begin_run median under 100 ms.

Run: python benchmarks/bench_runs.py [--participants 100] [--rounds 20]
"""

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import time

import common
from figures import Report

from runcontrol.control.operator import Operator

PER_PROCESS = 25


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("runs", participants=args.participants, rounds=args.rounds)
    server = common.BenchServer(heartbeat=1.0, timeout=10.0).start()
    controller = helpers = None
    bare = None
    try:
        controller = subprocess.Popen([sys.executable, "-m", "runcontrol.control.controller", "--experiment",
                                       str(server.path), "--log-level", "WARNING"], cwd=common.ROOT,
                                      start_new_session=True)
        ready = mp.Queue()
        names = [f"p{i:03d}" for i in range(args.participants)]
        helpers = [mp.Process(target=common.serve_participants, args=(server.router, names[start:start + PER_PROCESS], ready))
                   for start in range(0, len(names), PER_PROCESS)]
        for proc in helpers:
            proc.start()
        registered = sum(ready.get(timeout=60) for _ in helpers)
        bare = common.BareAsker(server.router, names)
        with Operator(experiment=str(server.path), server=server.router, name="bench-op") as op:
            common.wait_for(lambda: len(op.status()["participants"]) == args.participants, 30, 0.2)
            timings, references = [], []
            for _ in range(args.rounds):
                references.append(1000 * bare.ask_all())
                op.prepare_run()
                started = time.perf_counter()
                answer = op.begin_run(comment="bench")
                timings.append(1000 * (time.perf_counter() - started))
                if len(answer["participants"]) != args.participants or answer["problems"]:
                    raise RuntimeError(f"begin_run did not reach every participant: {answer}")
                op.end_run()
    finally:
        if bare is not None:
            bare.close()
        common.stop_all(helpers or [])
        if controller is not None:
            common.stop_group(controller, 30)
        server.stop()
    print(f"begin_run to {registered} participants, all acknowledged: median {statistics.median(timings):.1f} ms, "
          f"max {max(timings):.1f} ms over {len(timings)} runs; the bare round trip: median "
          f"{statistics.median(references):.1f} ms, max {max(references):.1f} ms")
    report.table(("asked", "participants", "median", "max"), [
        ("a bare round trip through the server (the reference)", registered,
         f"{statistics.median(references):.1f} ms", f"{max(references):.1f} ms"),
        ("`begin_run`, all acknowledged", registered, f"{statistics.median(timings):.1f} ms",
         f"{max(timings):.1f} ms")], title=f"{len(timings)} rounds")
    report.figure(f"begin_run to {registered} participants (median)", statistics.median(timings), "{:.1f} ms",
                  statistics.median(references), "the bare round trip to them", target=("<", 100.0))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
