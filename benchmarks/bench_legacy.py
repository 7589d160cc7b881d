"""libABCD clients through the gateway against Orbit's own ZeroMQ path, in one run.

One-way: a sender queues N messages `{"to": "orb", "cmd": "data", "seq": i}` to an
Orbit client; the rate is measured at the receiver (first to last). (a) the sender
is the unmodified libABCD 0.1 library (`tests/programs/legacy_client.py`), through
the gateway; (b) the sender is an Orbit client (`send()`), through ZeroMQ.

Round trip: the Orbit client sends `ping_me` and waits for the `pinged` the other
side sends back (libABCD has no requests with ids, so both sides use one-way
messages), 500 times in a row: (a) to the libABCD client, (b) to an Orbit client
doing the same. Three runs, each of (a) and (b) in turn, the same number of messages
for all; (b) is the reference. No target: the figures say what the gateway path costs.

Run: python benchmarks/bench_legacy.py [--messages N] [--round-trips N] [--runs N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import common
from figures import Report

from runcontrol.client.client import Client

PROGRAMS = common.ROOT / "tests" / "programs"
ORBIT_PEER = """
import sys, time
from runcontrol.client.client import Client
name, router, experiment, to, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
with Client(name, experiment=experiment, server=router) as me:
    me.add_handler("ping_me", lambda msg: me.send(msg["from"], "pinged", by=name))
    me.connect(20)
    for seq in range(count):
        me.send(to, "data", seq=seq)
        if seq % 100 == 0:
            me.poll(0)
    deadline = time.monotonic() + float(sys.argv[6])
    while time.monotonic() < deadline:
        me.poll(1)
"""




def peer(kind, name, server, folder, count):
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    if kind == "libABCD":
        argv = [str(PROGRAMS / "legacy_client.py"), name, str(server.legacy_port), str(folder / f"{name}.jsonl"),
                *(["--to", "orb", "--count", str(count)] if count else [])]
    else:
        argv = ["-c", ORBIT_PEER, name, server.router, str(server.path), "orb", str(count), str(common.HELPER_S)]
    return subprocess.Popen([sys.executable, *argv], cwd=folder, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_way(kind, orb, server, folder, count, run):
    seen = []
    orb.add_handler("data", lambda msg: seen.append(time.perf_counter()))
    # A name of its own each run: a SIGTERMed Orbit peer stays listed until the server's heartbeat gives it up.
    sender = peer(kind, f"tx-{kind}-{run}", server, folder, count)
    try:
        deadline = time.monotonic() + 120
        while len(seen) < count and time.monotonic() < deadline:
            orb.poll(0.1)
    finally:
        common.stop_group(sender)
    if len(seen) < count:
        raise RuntimeError(f"{kind}: {len(seen)} of {count} messages arrived")
    return (count - 1) / (seen[-1] - seen[0])


def round_trips(kind, orb, server, folder, count, run):
    name = f"echo-{kind}-{run}"
    responder = peer(kind, name, server, folder, 0)
    answers = []
    orb.add_handler("pinged", lambda msg: answers.append(time.perf_counter()))
    try:
        deadline = time.monotonic() + 30
        while name not in {c["name"] for c in orb.request(None, "_list")}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: {name} did not register within 30 s")
            orb.poll(0.1)
        times = []
        for _ in range(count + 50):
            before = len(answers)
            sent = time.perf_counter()
            orb.send(name, "ping_me")
            deadline = time.monotonic() + 10
            while len(answers) == before and time.monotonic() < deadline:
                orb.poll(0.01)
            if len(answers) == before:
                raise RuntimeError(f"{kind}: no answer within 10 s")
            times.append(1000 * (answers[-1] - sent))
        return times[50:]  # after a warm-up
    finally:
        common.stop_group(responder)




def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("legacy", messages=args.messages, round_trips=args.round_trips, runs=args.runs)
    folder = common.scratch("orbit-bench-legacy-")
    port = common.free_port()
    server = common.BenchServer(legacy={"port": port}).start()
    server.legacy_port = port
    results = {"libABCD": [], "orbit": []}   # (rate, p50, p99) per run
    try:
        with Client("orb", experiment=str(server.path), server=server.router) as orb:
            orb.connect(20)
            for run in range(args.runs):
                for kind in results:
                    rate = one_way(kind, orb, server, folder, args.messages, run)
                    times = round_trips(kind, orb, server, folder, args.round_trips, run)
                    results[kind].append((rate, statistics.median(times), common.percentile(times, 0.99)))
                    print(f"run {run + 1} {kind:8s}: one-way {rate:8.0f} msg/s; round trip p50 "
                          f"{results[kind][-1][1]:6.2f} ms, p99 {results[kind][-1][2]:6.2f} ms", flush=True)
    finally:
        server.stop()
    labels = {"libABCD": "libABCD 0.1, through the gateway", "orbit": "Orbit client, ZeroMQ (the reference)"}
    report.table(("other side", "one-way", "round trip p50", "round trip p99"), [
        (labels[kind], " / ".join(f"{r[0]:,.0f}" for r in runs) + " msg/s",
         " / ".join(f"{r[1]:.2f}" for r in runs) + " ms", " / ".join(f"{r[2]:.2f}" for r in runs) + " ms")
        for kind, runs in results.items()],
        title=f"{args.messages:,} messages one way and {args.round_trips} round trips in each run; runs: "
              f"{args.runs} (figures run by run)")
    median = {kind: [statistics.median(r[i] for r in runs) for i in range(3)] for kind, runs in results.items()}
    report.figure("one-way rate through the gateway (median of runs)", median["libABCD"][0], "{:,.0f} msg/s",
                  median["orbit"][0], "an Orbit client through ZeroMQ")
    report.figure("round trip p50 through the gateway (median of runs)", median["libABCD"][1], "{:.2f} ms",
                  median["orbit"][1], "an Orbit client through ZeroMQ")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
