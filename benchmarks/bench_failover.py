"""Failover: SIGKILL the server under the watchdog (with its standby), time until every client is back.

50 clients (our Client library, one process each) are registered with a server kept by
`python -m watchdog --standby`, its router and event ports fixed (as damicm's are). Each
round waits until the watchdog's standby is ready, SIGKILLs the server and measures the time
from the kill to the new instance's first beacon, and to the moment the last of the 50
clients holds the new server's welcome (each client notes when its welcome came; the server's
`_list` then confirms all 50).
References, in each round of the same run, while the 50 clients run: the bare cost of binding
the server's sockets in a warm process (an already-imported process, told through a pipe,
binds a ROUTER and an XPUB and sends a beacon: told -> beacon heard), and the cold start-up
`python -m runcontrol.bus.server` by Popen -> its first beacon (another experiment, so the
clients ignore it).
Targets (median): first beacon within 20 ms, all 50 back within 50 ms.

Run: python benchmarks/bench_failover.py [--clients 50] [--kills 10]
"""

import argparse
import json
import multiprocessing as mp
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

import common
import zmq
from figures import Report

from runcontrol import discovery, pidfile, protocol
from runcontrol.client.client import Client

READY_S = 30.0   # how long a round waits for the watchdog's standby to be ready
SETTLE_S = 0.5   # after the first beacon, before the clients' notes are read


def client_process(name, experiment, notes):
    """A client that notes (name, server instance, monotonic time) on `notes` whenever a welcome comes."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    deadline = common.deadline()
    with Client(name, experiment=experiment) as client:
        known = None
        while time.monotonic() < deadline:
            client.poll(0.5)
            if client.registered and client.instance != known:
                known = client.instance
                os.write(notes, f"{name} {known} {time.monotonic()!r}\n".encode())


def warm_binder(orders, port, experiment):
    """The reference: imported and waiting; at each order bind the sockets a server binds, beacon, close them."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    beacon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    beacon.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    while orders.recv() is not None:
        ctx = zmq.Context()
        router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.XPUB)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.LINGER, 0)
        router.bind("tcp://127.0.0.1:*")
        pub.bind("tcp://127.0.0.1:*")
        beacon.sendto(protocol.make_beacon(experiment, os.urandom(6).hex(), router.last_endpoint.decode(),
                                           pub.last_endpoint.decode(), os.getpid(), time.time()),
                      (protocol.DEFAULT_BEACON_ADDRESS, port))
        router.close()
        pub.close()
        ctx.term()


def warm_bind_s(orders, listener):
    """Order the warm binder to bind; the time until its beacon is heard."""
    told = time.monotonic()
    orders.send(True)
    if listener.wait(10) is None:
        raise RuntimeError("the warm binder sent no beacon")
    return time.monotonic() - told


class Notes:
    """The clients' notes of their welcomes, read as they come."""

    def __init__(self):
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.buffer = b""
        self.welcomed = {}   # client name -> (instance, monotonic time) of its latest welcome

    def take(self, timeout_s):
        select.select([self.read_end], [], [], timeout_s)
        try:
            self.buffer += os.read(self.read_end, 65536)
        except BlockingIOError:
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            name, instance, at = line.decode().split()
            self.welcomed[name] = (instance, float(at))

    def all_with(self, instance, count, timeout_s):
        """The time the last of `count` clients was welcomed by `instance`."""
        deadline = time.monotonic() + timeout_s
        while True:
            times = [at for known, at in self.welcomed.values() if known == instance]
            if len(times) == count:
                return max(times)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(times)} of {count} clients welcomed by server {instance} "
                                   f"within {timeout_s} s")
            self.take(0.05)

    def close(self):
        os.close(self.read_end)
        os.close(self.write_end)


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


def standbys_ready(log_path):
    return log_path.read_text(errors="replace").count(" ready\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    mp.set_start_method("fork")
    common.exit_on_sigterm()
    report = Report("failover", clients=args.clients, kills=args.kills)
    server = common.BenchServer(heartbeat=1.0, timeout=5.0, name=f"failover-{os.getpid()}",
                                router=f"tcp://127.0.0.1:{common.free_port()}",
                                events=f"tcp://127.0.0.1:{common.free_port()}")
    bare = common.BenchServer(heartbeat=1.0, timeout=5.0, name=f"failover-bare-{os.getpid()}")
    pid_path = server.folder / "state" / "server.pid"
    watchdog_log = server.folder / "watchdog.log"
    listener = discovery.BeaconListener(server.port, experiment=server.name)
    warm_port = common.free_port()
    warm_listener = discovery.BeaconListener(warm_port, experiment="failover-warm")
    notes = Notes()
    orders, their_orders = mp.Pipe()
    warm = mp.Process(target=warm_binder, args=(their_orders, warm_port, "failover-warm"), daemon=True)
    clients = [mp.Process(target=client_process, args=(f"c{i:03d}", str(server.path), notes.write_end), daemon=True)
               for i in range(args.clients)]
    watchdog = None
    to_beacon, to_all, warm_s, startup = [], [], [], []
    try:
        with open(watchdog_log, "wb") as out:
            watchdog = subprocess.Popen(
                [sys.executable, "-m", "watchdog", "--pidfile", str(pid_path), "--stale-after", "10", "--standby",
                 "--max-restarts", str(args.kills + 5), "--window", "600", "--",
                 sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(server.path), "--pidfile",
                 str(pid_path), "--log-level", "WARNING"],
                cwd=common.ROOT, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        beacon = next_beacon(listener, None, 20)
        warm.start()
        for proc in clients:
            proc.start()
        notes.all_with(beacon.instance, args.clients, 60)
        for kill in range(args.kills):
            old = beacon.instance
            common.wait_for(lambda: standbys_ready(watchdog_log) > kill, READY_S, 0.05)
            time.sleep(0.5)
            killed_at = time.monotonic()
            os.kill(pidfile.read(pid_path), signal.SIGKILL)
            beacon = next_beacon(listener, old)
            to_beacon.append(time.monotonic() - killed_at)
            time.sleep(SETTLE_S)   # the clients note their own times: reading them meanwhile would take their CPU
            to_all.append(notes.all_with(beacon.instance, args.clients, 30) - killed_at)
            listed = registered(beacon.router, "c")
            if listed != args.clients:
                raise RuntimeError(f"the new server lists {listed} of the {args.clients} clients")
            time.sleep(0.3)
            warm_s.append(warm_bind_s(orders, warm_listener))
            try:
                startup.append(bare.start().startup_s)
            finally:
                bare.stop()
            print(f"kill {kill + 1}: first beacon after {to_beacon[-1] * 1000:.1f} ms, "
                  f"all {args.clients} back after {to_all[-1] * 1000:.1f} ms; warm bind {warm_s[-1] * 1000:.1f} ms, "
                  f"the bare server's start-up {startup[-1] * 1000:.0f} ms", flush=True)
    finally:
        orders.send(None)
        common.stop_all([*clients, warm])
        if watchdog is not None:
            common.stop_group(watchdog, 30)
        listener.close()
        warm_listener.close()
        notes.close()
    rows = (("told -> beacon of a warm process binding the server's sockets (the reference)", warm_s),
            ("Popen -> the bare server's first beacon (a cold start)", startup),
            ("SIGKILL -> the new server's first beacon", to_beacon),
            (f"SIGKILL -> all {args.clients} clients registered again", to_all))
    report.table(("interval", "median", "max"), [
        (label, f"{statistics.median(v) * 1000:.1f} ms", f"{max(v) * 1000:.1f} ms") for label, v in rows])
    floor = statistics.median(warm_s) * 1000
    versus = "a warm process binding the server's sockets and beaconing"
    report.figure("SIGKILL -> the new server's first beacon (median)", statistics.median(to_beacon) * 1000,
                  "{:.1f} ms", floor, versus, target=("<=", 20))
    report.figure(f"SIGKILL -> all {args.clients} clients back (median)", statistics.median(to_all) * 1000,
                  "{:.1f} ms", floor, versus, target=("<=", 50))
    report.figure("a cold start to its first beacon (median)", statistics.median(startup) * 1000, "{:.0f} ms",
                  statistics.median(to_beacon) * 1000, "SIGKILL -> the standby's first beacon")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
