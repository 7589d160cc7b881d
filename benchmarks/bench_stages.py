"""Ordered run transitions: `begin_run` to 100 participants in 3 stages against 100 in one, and to 1000 in one.

Three cases, each with a server, a run controller (`python -m runcontrol.control.controller`) and participants of
its own: 100 participants all of one `order` (the reference), the same 100 spread over 3 orders (250, 500, 750:
asked stage after stage), and 1000 participants of one order. The participants are foreign clients speaking the
wire protocol over bare DEALER sockets, in 4 helper processes whatever their number; each says
`"meta": {"participant": true, "order": N}` in its hello (so the run controller takes it part with that order,
no program of the experiment needed), answers pings, and acknowledges every `_transition` at once. The server
keeps its default heartbeat (5 s) and limits. Timed from the operator's side, in each of 40 rounds (after one
round not timed): `begin_run` sent -> its answer received, and the same for `end_run`; `prepare_run` untimed.
Every answer must name every participant, no problem, and as many stages as asked.
Reference, in every round of each case: a bare round trip to the same participants, a raw DEALER client of the
same server sending each of them a `_transition` at once and taking every reply (matched by `id`): what asking
them through the server costs, without the run controller and the operator's hop.
Figures: the cost of order (3 stages / 1 stage, both 100 participants: medians); 1000 participants in one stage
against its bare round trip. Target: `begin_run` to 1000 participants in one stage, median under 100 ms.

Run: python benchmarks/bench_stages.py [--participants 100] [--stages 3] [--many 1000] [--rounds 40]
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

PROCESSES = 4          # helper processes holding the participants' sockets, whatever their number
REGISTER_S = 60.0      # how long the participants of one case may take to register
ANSWER_S = 30.0        # how long the bare asker waits for every reply of one round


def orders(stages):
    """`stages` distinct orders spread over 1..1000 (one stage: the default order, 500)."""
    return [round(1000 * (k + 1) / (stages + 1)) for k in range(stages)]


def checked(answer, what, count, stages):
    """`answer` (of begin_run or end_run), having made sure every participant answered in `stages` stages."""
    asked = answer.get("stages", [answer["participants"]])
    if len(answer["participants"]) != count or answer["problems"] or len(asked) != stages:
        raise RuntimeError(f"{what} did not reach every participant in {stages} stage(s): {answer}")
    return answer


def one_round(op, bare, count, stages):
    """(bare round trip, begin_run, end_run) in ms."""
    reference = 1000 * bare.ask_all(ANSWER_S)
    op.prepare_run()
    started = time.perf_counter()
    checked(op.begin_run(comment="bench"), "begin_run", count, stages)
    begun = time.perf_counter()
    checked(op.end_run(), "end_run", count, stages)
    ended = time.perf_counter()
    return reference, 1000 * (begun - started), 1000 * (ended - begun)


def measure(count, stages, rounds):
    """{"bare", "begin", "end"}: ms of each round, with `count` participants in `stages` stages, on a server and run
    controller of their own."""
    server = common.BenchServer().start()
    controller = bare = None
    helpers = []
    try:
        controller = subprocess.Popen([sys.executable, "-m", "runcontrol.control.controller", "--experiment",
                                       str(server.path), "--log-level", "WARNING"], cwd=common.ROOT,
                                      start_new_session=True)
        names = [f"p{i:04d}" for i in range(count)]
        spread = orders(stages)
        order_of = {name: spread[i % stages] for i, name in enumerate(names)}
        ready = mp.Queue()
        share = -(-count // PROCESSES)
        helpers = [mp.Process(target=common.serve_participants, args=(server.router, names[first:first + share], ready, order_of))
                   for first in range(0, count, share)]
        for proc in helpers:
            proc.start()
        registered = sum(ready.get(timeout=REGISTER_S + 10) for _ in helpers)
        if registered != count:
            raise RuntimeError(f"{registered} of {count} participants registered")
        bare = common.BareAsker(server.router, names)
        with Operator(experiment=str(server.path), server=server.router, name="bench-op", timeout=30.0) as op:
            common.wait_for(lambda: len(op.status()["participants"]) == count, REGISTER_S, 0.2)
            one_round(op, bare, count, stages)   # not timed: the first run of a fresh controller
            times = [one_round(op, bare, count, stages) for _ in range(rounds)]
    finally:
        if bare is not None:
            bare.close()
        common.stop_all(helpers)
        if controller is not None:
            common.stop_group(controller, 30)
        server.stop()
    return dict(zip(("bare", "begin", "end"), map(list, zip(*times))))


def row(label, count, stages, times):
    median = {key: statistics.median(values) for key, values in times.items()}
    p95 = {key: common.percentile(values, 0.95) for key, values in times.items()}
    print(f"{label}: begin_run median {median['begin']:.1f} ms, p95 {p95['begin']:.1f} ms; end_run median "
          f"{median['end']:.1f} ms, p95 {p95['end']:.1f} ms; bare round trip median {median['bare']:.1f} ms",
          flush=True)
    return (label, count, stages, f"{median['begin']:.1f} ms", f"{p95['begin']:.1f} ms", f"{median['end']:.1f} ms",
            f"{p95['end']:.1f} ms", f"{median['bare']:.1f} ms", f"{p95['bare']:.1f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("stages", participants=args.participants, stages=args.stages, many=args.many,
                    rounds=args.rounds)
    cases = (("one stage (the reference)", args.participants, 1),
             (f"{args.stages} stages", args.participants, args.stages),
             ("one stage", args.many, 1))
    rows, results = [], []
    for label, count, stages in cases:
        times = measure(count, stages, args.rounds)
        results.append(times)
        rows.append(row(label, count, stages, times))
    one, staged, many = ({key: statistics.median(values) for key, values in times.items()} for times in results)
    report.table(("participants in", "participants", "stages", "begin_run median", "begin_run p95",
                  "end_run median", "end_run p95", "bare round trip median", "bare p95"), rows,
                 title=f"{args.rounds} rounds each (after one not timed); orders {orders(args.stages)} for "
                       f"{args.stages} stages")
    report.figure(f"begin_run to {args.participants} participants in {args.stages} stages (median)",
                  staged["begin"], "{:.1f} ms", one["begin"], f"the same {args.participants} in one stage")
    report.figure(f"end_run to {args.participants} participants in {args.stages} stages (median)",
                  staged["end"], "{:.1f} ms", one["end"], f"the same {args.participants} in one stage")
    report.figure(f"begin_run to {args.many} participants in one stage (median)", many["begin"], "{:.1f} ms",
                  many["bare"], "the bare round trip to them", target=("<", 100.0))
    report.figure(f"end_run to {args.many} participants in one stage (median)", many["end"], "{:.1f} ms",
                  many["bare"], "the bare round trip to them")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
