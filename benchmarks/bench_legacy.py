"""libABCD clients through the gateway against Orbit's own ZeroMQ path, in one run.

One-way: a sender queues N messages `{"to": "orb", "cmd": "data", "seq": i}` to an
Orbit client; the rate is measured at the receiver (first to last). (a) the sender
is the unmodified libABCD 0.1 library (`tests/programs/legacy_client.py`), through
the gateway; (b) the sender is an Orbit client (`send()`), through ZeroMQ.

Round trip: the Orbit client sends `ping_me` and waits for the `pinged` the other
side sends back (libABCD has no requests with ids, so both sides use one-way
messages), 500 times in a row: (a) to the libABCD client, (b) to an Orbit client
doing the same.

Run: python benchmarks/bench_legacy.py [--messages N] [--round-trips N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from clients.client import Client

PROGRAMS = common.ROOT / "tests" / "programs"
ORBIT_PEER = """
import sys, time
from clients.client import Client
name, router, to, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Client(name, server=router) as me:
    me.add_handler("ping_me", lambda msg: me.send(msg["from"], "pinged", by=name))
    me.connect(20)
    for seq in range(count):
        me.send(to, "data", seq=seq)
        if seq % 100 == 0:
            me.poll(0)
    while True:
        me.poll(1)
"""




def peer(kind, name, server, folder, count):
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    if kind == "libABCD":
        argv = [str(PROGRAMS / "legacy_client.py"), name, str(server.legacy_port), str(folder / f"{name}.jsonl"),
                *(["--to", "orb", "--count", str(count)] if count else [])]
    else:
        argv = ["-c", ORBIT_PEER, name, server.router, "orb", str(count)]
    return subprocess.Popen([sys.executable, *argv], cwd=folder, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_way(kind, orb, server, folder, count):
    seen = []
    orb.add_handler("data", lambda msg: seen.append(time.perf_counter()))
    sender = peer(kind, f"tx-{kind}", server, folder, count)
    try:
        deadline = time.monotonic() + 120
        while len(seen) < count and time.monotonic() < deadline:
            orb.poll(0.1)
    finally:
        common.stop_group(sender)
    if len(seen) < count:
        raise RuntimeError(f"{kind}: {len(seen)} of {count} messages arrived")
    return (count - 1) / (seen[-1] - seen[0])


def round_trips(kind, orb, server, folder, count):
    name = f"echo-{kind}"
    responder = peer(kind, name, server, folder, 0)
    answers = []
    orb.add_handler("pinged", lambda msg: answers.append(time.perf_counter()))
    try:
        while name not in {c["name"] for c in orb.request(None, "_list")}:
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
    args = parser.parse_args()
    common.exit_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="orbit-bench-legacy-"))
    port = common.free_port()
    server = common.BenchServer(legacy={"port": port}).start()
    server.legacy_port = port
    try:
        with Client("orb", server=server.router) as orb:
            orb.connect(20)
            for kind in ("libABCD", "orbit"):
                rate = one_way(kind, orb, server, folder, args.messages)
                times = round_trips(kind, orb, server, folder, args.round_trips)
                print(f"{kind:8s}: one-way {rate:8.0f} msg/s; round trip p50 {statistics.median(times):6.2f} ms, "
                      f"p99 {common.percentile(times, 0.99):6.2f} ms", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
