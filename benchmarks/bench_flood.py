"""Fairness under a flood: another client's round trips while one client floods past its rate limit.

Three processes beside the server: an echo client, a flooder (a bare DEALER
sending one-way notes to the echo client as fast as it can, far past
`client_rate`), and this one, which measures sequential round trips to the echo
client first on a quiet bus, then during the flood, in the same run. The figure
is the ratio of the two medians (target: below 5, i.e. the flood costs the others
at most a few times their quiet latency). Bounded: the flood stops after
FLOOD_S seconds or FLOOD_MAX messages.
"""

import multiprocessing as mp
import statistics
import sys
import time

import common

import zmq

from clients.client import Client
from runcontrol import protocol

ROUND_TRIPS = 300
RUNS = 3
RATE = 2000
FLOOD_S = 20.0
FLOOD_MAX = 2_000_000


def echo(router):
    common.exit_on_sigterm()
    client = Client("echo", server=router)
    client.add_handler("echo", lambda msg: msg.get("n"))
    client.add_handler("note", lambda msg: None)
    client.connect(10)
    client.run_forever(0.05)


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


def one_run(server):
    echoer = mp.Process(target=echo, args=(server.router,), daemon=True)
    echoer.start()
    flooder = None
    try:
        with Client("quiet", server=server.router) as quiet:
            quiet.connect(10)
            common.wait_for(lambda: "echo" in [c["name"] for c in quiet.request(None, "_list")], 10)
            calm = median_round_trip(quiet, ROUND_TRIPS)
            started = mp.Event()
            flooder = mp.Process(target=flood, args=(server.router, started), daemon=True)
            flooder.start()
            started.wait(10)
            stormy = median_round_trip(quiet, ROUND_TRIPS)
            flooding = flooder.is_alive()
        return calm, stormy, flooding
    finally:
        common.stop_all([p for p in (echoer, flooder) if p is not None])


def main():
    common.exit_on_sigterm()
    server = common.BenchServer(client_rate=RATE).start()
    try:
        results = [one_run(server) for _ in range(RUNS)]
    finally:
        server.stop()
    for calm, stormy, flooding in results:
        print(f"quiet median {calm * 1000:.3f} ms, during the flood {stormy * 1000:.3f} ms: "
              f"x{stormy / calm:.2f}{'' if flooding else ' (the flood ended early)'}")
    ratio = statistics.median(stormy / calm for calm, stormy, _ in results)
    print(f"flood (client_rate {RATE}/s): another client's round trip is x{ratio:.2f} its quiet median "
          f"(median of {RUNS} runs; target < 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
