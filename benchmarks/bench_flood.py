"""Fairness under a flood: another client's round trips while one client floods past its rate limit.

Three processes beside the server: an echo client, a flooder (a bare DEALER
sending one-way notes to the echo client as fast as it can, far past
`client_rate`), and this one, which measures sequential round trips to the echo
client first on a quiet bus, then during the flood, in the same run. The figure
is the ratio of the two medians (target: below 5, i.e. the flood costs the others
at most a few times their quiet latency), the median of three runs, each with a
server of its own. Bounded: the flood stops after FLOOD_S seconds or FLOOD_MAX
messages.

Run: python benchmarks/bench_flood.py [--runs 3] [--round-trips 300]
"""

import argparse
import multiprocessing as mp
import statistics
import sys
import time

import common

import zmq
from figures import Report

from runcontrol.client.client import Client
from runcontrol import protocol

RATE = 2000
FLOOD_S = 20.0
FLOOD_MAX = 2_000_000


def echo(router, experiment):
    common.exit_on_sigterm()
    client = Client("echo", experiment=experiment, server=router)
    client.add_handler("echo", lambda msg: msg.get("n"))
    client.add_handler("note", lambda msg: None)
    client.connect(10)
    deadline = common.deadline()
    while time.monotonic() < deadline:
        client.poll(0.05)


def flood(router, started):
    common.exit_on_sigterm()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(router)
    sock.send(protocol.encode(protocol.make_hello("flood", id="h")))
    sock.recv()
    note = protocol.encode({"to": "echo", "cmd": "note"})
    deadline = time.monotonic() + FLOOD_S
    sent = 0
    started.set()
    while sent < FLOOD_MAX and time.monotonic() < deadline:
        try:
            sock.send(note, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            sock.poll(10, zmq.POLLOUT)
    sock.close()
    ctx.term()


def median_round_trip(client, count):
    times = []
    for n in range(count):
        started = time.perf_counter()
        assert client.request("echo", "echo", timeout=10, n=n) == n
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def one_run(round_trips):
    """(quiet median, median during the flood, whether the flood lasted) with a server of its own."""
    server = common.BenchServer(client_rate=RATE)
    echoer = flooder = None
    try:
        server.start()
        echoer = mp.Process(target=echo, args=(server.router, str(server.path)), daemon=True)
        echoer.start()
        with Client("quiet", experiment=str(server.path), server=server.router) as quiet:
            quiet.connect(10)
            common.wait_for(lambda: "echo" in [c["name"] for c in quiet.request(None, "_list")], 10)
            calm = median_round_trip(quiet, round_trips)
            started = mp.Event()
            flooder = mp.Process(target=flood, args=(server.router, started), daemon=True)
            flooder.start()
            if not started.wait(10):
                raise RuntimeError("the flooder did not start")
            stormy = median_round_trip(quiet, round_trips)
            flooding = flooder.is_alive()
        return calm, stormy, flooding
    finally:
        common.stop_all([echoer, flooder])
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=300)
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("flood", runs=args.runs, round_trips=args.round_trips, client_rate=RATE)
    results = []
    for run in range(args.runs):
        results.append(one_run(args.round_trips))
        calm, stormy, flooding = results[-1]
        print(f"run {run + 1}: quiet median {calm * 1000:.3f} ms, during the flood {stormy * 1000:.3f} ms: "
              f"x{stormy / calm:.2f}{'' if flooding else ' (the flood ended early)'}", flush=True)
    report.table(("run", "quiet median", "during the flood", "ratio"), [
        (run + 1, f"{calm * 1000:.3f} ms", f"{stormy * 1000:.3f} ms" + ("" if flooding else " (flood ended early)"),
         f"x{stormy / calm:.2f}") for run, (calm, stormy, flooding) in enumerate(results)],
        title=f"{args.round_trips} round trips each, client_rate {RATE}/s")
    report.figure(f"round trip during the flood / quiet (median of {args.runs} runs)",
                  statistics.median(stormy / calm for calm, stormy, _ in results), "x{:.2f}", target=("<", 5.0))
    if not all(flooding for _, _, flooding in results):
        report.note("in some run the flood (bounded at "
                    f"{FLOOD_S:g} s) ended before the round trips did: that run's ratio is too low")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
