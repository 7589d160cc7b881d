"""Failover: SIGKILL the server under the watchdog, time until every client is back.

50 clients (our Client library, one process each) are registered with a server kept by
`python -m watchdog`. Each round SIGKILLs the server and measures the time from the
kill to the new instance's first beacon, and to all 50 clients registered with it.
Reference, in each round of the same run: the bare server's own start-up, `python -m
runcontrol.bus.server` started by Popen -> its first beacon (another experiment, so the
clients ignore it), while the 50 clients run as they do for the kills.
Target: all 50 back within 2 s (median).

Run: python benchmarks/bench_failover.py [--clients 50] [--kills 10]
"""

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time

import common
import zmq
from figures import Report

from runcontrol.client.client import Client
from runcontrol import pidfile
from runcontrol import discovery


def client_process(name, experiment):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    deadline = common.deadline()
    with Client(name, experiment=experiment) as client:
        while time.monotonic() < deadline:
            client.poll(0.5)


def registered(router, prefix):
    """How many clients whose name starts with `prefix` the server at `router` knows."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(router)
    try:
        sock.send(b'{"cmd":"_hello","name":"failover-probe","id":1}')
        sock.send(b'{"cmd":"_list","id":2}')
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if not sock.poll(200):
                continue
            reply = json.loads(sock.recv())
            if reply.get("re") == 2:
                return sum(1 for c in reply.get("result") or [] if c["name"].startswith(prefix))
        return 0
    finally:
        sock.send(b'{"cmd":"_bye"}')
        sock.close()


def next_beacon(listener, old, timeout_s=30):
    """The first beacon of an instance other than `old`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = listener.wait(max(0.01, deadline - time.monotonic()))
        if found is not None and found.instance != old:
            return found
    raise RuntimeError(f"no new server instance within {timeout_s} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    mp.set_start_method("fork")
    common.exit_on_sigterm()
    report = Report("failover", clients=args.clients, kills=args.kills)
    server = common.BenchServer(heartbeat=1.0, timeout=5.0, name=f"failover-{os.getpid()}")
    bare = common.BenchServer(heartbeat=1.0, timeout=5.0, name=f"failover-bare-{os.getpid()}")
    pid_path = server.folder / "state" / "server.pid"
    listener = discovery.BeaconListener(server.port, experiment=server.name)
    clients = [mp.Process(target=client_process, args=(f"c{i:03d}", str(server.path)), daemon=True)
               for i in range(args.clients)]
    watchdog = None
    to_beacon, to_all, startup = [], [], []
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "--pidfile", str(pid_path), "--stale-after", "10",
             "--max-restarts", str(args.kills + 5), "--window", "600", "--",
             sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(server.path), "--pidfile",
             str(pid_path), "--log-level", "WARNING"],
            cwd=common.ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
        beacon = next_beacon(listener, None, 20)
        for proc in clients:
            proc.start()
        common.wait_for(lambda: registered(beacon.router, "c") == args.clients, 60, 0.2)
        for kill in range(args.kills):
            old = beacon.instance
            time.sleep(1.0)
            killed_at = time.perf_counter()
            os.kill(pidfile.read(pid_path), signal.SIGKILL)
            beacon = next_beacon(listener, old)
            to_beacon.append(time.perf_counter() - killed_at)
            common.wait_for(lambda: registered(beacon.router, "c") == args.clients, 30, 0.01)
            to_all.append(time.perf_counter() - killed_at)
            time.sleep(0.5)
            try:
                startup.append(bare.start().startup_s)
            finally:
                bare.stop()
            print(f"kill {kill + 1}: first beacon after {to_beacon[-1] * 1000:.0f} ms, "
                  f"all {args.clients} registered after {to_all[-1] * 1000:.0f} ms; "
                  f"the bare server's start-up {startup[-1] * 1000:.0f} ms", flush=True)
    finally:
        common.stop_all(clients)
        if watchdog is not None:
            common.stop_group(watchdog, 30)
        listener.close()
    rows = (("Popen -> the bare server's first beacon (the reference)", startup),
            ("SIGKILL -> the new server's first beacon", to_beacon),
            (f"SIGKILL -> all {args.clients} clients registered again", to_all))
    report.table(("interval", "median", "max"), [
        (label, f"{statistics.median(v) * 1000:.0f} ms", f"{max(v) * 1000:.0f} ms") for label, v in rows])
    floor = statistics.median(startup) * 1000
    report.figure("SIGKILL -> the new server's first beacon (median)", statistics.median(to_beacon) * 1000,
                  "{:.0f} ms", floor, "the bare server's start-up to its first beacon")
    report.figure(f"SIGKILL -> all {args.clients} clients back (median)", statistics.median(to_all) * 1000,
                  "{:.0f} ms", floor, "the bare server's start-up to its first beacon", target=("<", 2000))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
