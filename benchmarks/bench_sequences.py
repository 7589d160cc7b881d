"""Sequences: a dry run of 100 queued sequences of 30 steps each, answered over the bus.

A real server, run controller and sequencer (`python -m clients.sequencer`), with
a participant that has settings (`cam`, tests/programs/configurable.py) and a
cryocooler that publishes its temperature (`clients.sim.cryo`). 100 sequence
files of 30 steps each once unrolled (a `set` and a `command`, then a `for` over
7 gains of `set`, `wait`, `run`, `command`; each file its own settings) are
queued through the sequencer's `queue` command, not started. Then `dry_run` with
no `sequence` (the whole queue: every step held against the live experiment, the
settings against each program's schema, and the time estimated) is asked from an
operator client, 20 times, one after the other; the first, which reads the
queued steps from the sequencer's book on disk, is reported apart. Each verdict
must be ok and count every step. Reference, in the same run: loading and
validating the same 100 files in this process as `queue` does (read, checked
against the schema and for variables, unrolled: clients.sequences.plan), 20
times. Target: the dry run answers in under 0.5 s (median).

Run: python benchmarks/bench_sequences.py [--sequences 100] [--runs 20]
"""

import argparse
import json
import statistics
import sys
import time

import common
from figures import Report

from clients.sequences.plan import Library, expand
from runcontrol.client.client import Client
from tests.helpers import ControllerProcess, ServerProcess, helper, wait_until, write_experiment

GAINS = [1, 2, 3, 4, 5, 6, 8]
STEPS = 2 + 4 * len(GAINS)   # 30 once unrolled
TIMEOUT_S = 60.0


def sequence(number):
    """The `number`th sequence: its own settings, so the dry run checks each against its program's schema."""
    return {"name": f"seq_{number:03d}", "description": f"gain scan {number}",
            "variables": {"seconds": 60},
            "steps": [
                {"set": {"program": "cryo", "values": {"set_point": 140 + number / 10}}},
                {"command": {"to": "cryo", "cmd": "status"}},
                {"for": {"gain": GAINS, "steps": [
                    {"set": {"program": "cam", "values": {"gain": "{gain}", "threshold": number / 100}}},
                    {"wait": {"value": "cryo.values.temperature", "below": 300, "for": 2, "timeout": 120}},
                    {"run": {"comment": f"scan {number}, gain {{gain}}", "params": {"gain": "{gain}"},
                             "seconds": "{seconds}"}},
                    {"command": {"to": "cryo", "cmd": "status"}}]}}]}


def write_sequences(folder, count):
    """The sequences' names; beside them `probe`, one wait on the cryo's temperature, to see the sequencer ready."""
    folder.mkdir()
    probe = {"name": "probe", "steps": [{"wait": {"value": "cryo.values.temperature", "below": 300}}]}
    (folder / "probe.json").write_text(json.dumps(probe))
    names = []
    for number in range(count):
        raw = sequence(number)
        (folder / f"{raw['name']}.json").write_text(json.dumps(raw, indent=1))
        names.append(raw["name"])
    return names


def load_and_validate(folder, names):
    """Seconds to read, check and unroll every sequence in this process, as `queue` does; and the step count."""
    started = time.perf_counter()
    library = Library(folder)
    steps = sum(len(expand(library.get(name), library)) for name in names)
    return time.perf_counter() - started, steps


def experiment(folder):
    sequencer = ["python", "-m", "clients.sequencer", "--name", "sequencer", "--folder", str(folder / "sequences"),
                 "--state", str(folder / "seqstate")]
    return write_experiment(folder, "bench-sequences", timeout=10.0, programs={
        "cam": helper("configurable.py", "cam", folder / "cam.jsonl", client="cam"),
        "cryo": {"cmd": ["python", "-m", "clients.sim.cryo", "--name", "cryo", "--start", "150"], "client": "cryo"},
        "sequencer": {"cmd": sequencer, "client": "sequencer"}})


def ready(op):
    """Whether every program runs and is registered, and the sequencer has seen the cryo's temperature."""
    programs = op.request("run", "status", timeout=10)["programs"]
    return (len(programs) == 3 and all(p["state"] == "RUNNING" and p.get("registered") for p in programs.values())
            and checked(op, sequence="probe")["ok"])


def checked(op, **fields):
    return op.call({"to": "sequencer", "cmd": "dry_run", **fields}, TIMEOUT_S)


def dry_run(op, count):
    """Seconds for the dry run of the whole queue (`count` sequences), from the request sent to its answer; and its
    verdict, which must be ok and count every sequence and step."""
    started = time.perf_counter()
    verdict = checked(op)
    took = time.perf_counter() - started
    if not verdict["ok"] or verdict["sequences"] != count or verdict["steps"] != count * STEPS:
        raise RuntimeError(f"the dry run found problems or miscounted: {json.dumps(verdict)[:2000]}")
    return took, verdict


def measure(folder, names, runs):
    """(queueing seconds, first dry run, [later dry runs], the last verdict) against a real sequencer."""
    path = experiment(folder)
    server = ServerProcess(path).start()
    controller = op = None
    try:
        controller = ControllerProcess(path).start()
        op = Client("bench-op", experiment=str(path))
        op.connect(10)
        wait_until(lambda: "run" in [c["name"] for c in op.request(None, "_list")], 30, 0.1,
                   what="the run controller to register")
        wait_until(lambda: ready(op), 60, 0.2, what="the programs, and the cryo's temperature at the sequencer")
        started = time.perf_counter()
        for name in names:
            op.call({"to": "sequencer", "cmd": "queue", "sequence": name, "by": "bench"}, TIMEOUT_S)
        queueing = time.perf_counter() - started
        status = op.call({"to": "sequencer", "cmd": "status"}, TIMEOUT_S)
        if len(status["queue"]) != len(names) or status["state"] != "stopped":
            raise RuntimeError(f"the queue is not as it was queued: {json.dumps(status)[:2000]}")
        first, _ = dry_run(op, len(names))
        later = [dry_run(op, len(names)) for _ in range(runs)]
        return queueing, first, [took for took, _ in later], later[-1][1]
    finally:
        if op is not None:
            op.close()
        if controller is not None:
            controller.stop()
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("sequences", sequences=args.sequences, steps_each=STEPS, runs=args.runs)
    folder = common.scratch("orbit-bench-sequences-")
    names = write_sequences(folder / "sequences", args.sequences)
    loads = [load_and_validate(folder / "sequences", names) for _ in range(args.runs)]
    if any(steps != args.sequences * STEPS for _, steps in loads):
        raise RuntimeError(f"the sequences unrolled into {loads[0][1]} steps, not {args.sequences * STEPS}")
    reference = [took for took, _ in loads]
    queueing, first, timings, verdict = measure(folder, names, args.runs)
    total = args.sequences * STEPS
    print(f"{args.sequences} sequences of {STEPS} steps ({total} steps): load and validate in-process median "
          f"{statistics.median(reference) * 1000:.0f} ms; queued over the bus in {queueing:.2f} s; dry run of the "
          f"queue: first {first * 1000:.0f} ms, then median {statistics.median(timings) * 1000:.0f} ms, p90 "
          f"{common.percentile(timings, 0.9) * 1000:.0f} ms over {len(timings)}; verdict ok, {verdict['steps']} "
          f"steps, estimate {verdict['estimate_s']:.0f} s")
    ms = "{:.0f} ms".format
    report.table(("", "median", "p90", "max"), [
        ("load and validate in-process (read, schema and variables, unrolled: the reference)",
         ms(statistics.median(reference) * 1000), ms(common.percentile(reference, 0.9) * 1000),
         ms(max(reference) * 1000)),
        ("`dry_run` of the whole queue, answered over the bus", ms(statistics.median(timings) * 1000),
         ms(common.percentile(timings, 0.9) * 1000), ms(max(timings) * 1000)),
        ("the first `dry_run` after queueing (steps read from the book)", ms(first * 1000), "", "")],
        title=f"{args.sequences} sequences of {STEPS} steps queued ({total:,} steps), {len(timings)} runs each")
    report.figure(f"dry run of {args.sequences} queued sequences of {STEPS} steps (median)",
                  statistics.median(timings) * 1000, "{:.0f} ms", statistics.median(reference) * 1000,
                  "loading and validating them in-process", target=("<", 500.0))
    report.figure("the same, p90", common.percentile(timings, 0.9) * 1000, "{:.0f} ms",
                  common.percentile(reference, 0.9) * 1000, "loading and validating them in-process, p90")
    report.note(f"every verdict ok, {verdict['steps']:,} steps, estimate {verdict['estimate_s']:,.0f} s; "
                f"queueing the {args.sequences} sequences (`queue`, one request each) took {queueing:.2f} s")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
