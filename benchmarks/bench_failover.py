"""Failover: SIGKILL the server under the watchdog, time until every client is back.

50 clients (our Client library, one process each) are registered with a server kept by
`python -m watchdog`. Each round SIGKILLs the server and measures the time from the
kill to the new instance's first beacon, and to all 50 clients registered with it.

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

from clients.client import Client
from runcontrol import pidfile
from runcontrol.bus import discovery


def client_process(name, experiment):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    with Client(name, experiment=experiment) as client:
        client.run_forever()


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    mp.set_start_method("fork")
    common.exit_on_sigterm()
    server = common.BenchServer(heartbeat=1.0, timeout=5.0, name=f"failover-{os.getpid()}")
    pid_path = server.folder / "state" / "server.pid"
    listener = discovery.BeaconListener(server.port, experiment=server.name)
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "--pidfile", str(pid_path), "--stale-after", "10",
         "--max-restarts", str(args.kills + 5), "--window", "600", "--",
         sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(server.path), "--pidfile", str(pid_path),
         "--log-level", "WARNING"],
        cwd=common.ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    clients = [mp.Process(target=client_process, args=(f"c{i:03d}", str(server.path)), daemon=True)
               for i in range(args.clients)]
    to_beacon, to_all = [], []
    try:
        beacon = listener.wait(20)
        for proc in clients:
            proc.start()
        common.wait_for(lambda: registered(beacon.router, "c") == args.clients, 60, 0.2)
        for kill in range(args.kills):
            old = beacon.instance
            time.sleep(1.0)
            killed_at = time.perf_counter()
            os.kill(pidfile.read(pid_path), signal.SIGKILL)
            while True:
                found = listener.wait(10)
                if found is not None and found.instance != old:
                    beacon = found
                    break
            to_beacon.append(time.perf_counter() - killed_at)
            common.wait_for(lambda: registered(beacon.router, "c") == args.clients, 30, 0.01)
            to_all.append(time.perf_counter() - killed_at)
            print(f"kill {kill + 1}: first beacon after {to_beacon[-1] * 1000:.0f} ms, "
                  f"all {args.clients} registered after {to_all[-1] * 1000:.0f} ms", flush=True)
    finally:
        common.stop_all(clients)
        watchdog.send_signal(signal.SIGTERM)
        watchdog.wait(30)
        listener.close()
    print()
    print("| from SIGKILL to | median | max |")
    print("|---|---|---|")
    print(f"| the new server's first beacon | {statistics.median(to_beacon) * 1000:.0f} ms | "
          f"{max(to_beacon) * 1000:.0f} ms |")
    print(f"| all {args.clients} clients registered again | {statistics.median(to_all) * 1000:.0f} ms | "
          f"{max(to_all) * 1000:.0f} ms |")
    met = statistics.median(to_all) < 2.0
    print(f"target: all back in under 2 s (median): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
