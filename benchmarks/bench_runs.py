"""Run transitions: `begin_run` to 100 participants, all acknowledged; median and max over 20.

The participants are foreign clients speaking the wire protocol over bare DEALER
sockets (4 helper processes of 25), registered with `"meta": {"run": true}`; each
answers pings and acknowledges every `_transition`. A real server and a real run
controller (`python -m runcontrol.controller`) run in their own processes; the
timing is the operator's: `begin_run` sent -> its answer received (every
participant asked and answered through the server in between). Each round ends
the run again (not timed).

Run: python benchmarks/bench_runs.py [--participants 100] [--rounds 20]
"""

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time

import common
import orjson
import zmq

from runcontrol.control.operator import Operator

PER_PROCESS = 25


def participants(router, names, ready):
    """Serve `names` as run participants on bare sockets until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for name in names:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(router)
        sock.send(orjson.dumps({"cmd": "_hello", "name": name, "id": "h", "pid": os.getpid(),
                                "meta": {"run": True}}))
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    for sock in socks:
        sock.recv()  # the welcome
    ready.put(len(socks))
    while True:
        for sock, _ in poller.poll():
            while True:
                try:
                    msg = orjson.loads(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if msg.get("cmd") == "_ping":
                    sock.send(orjson.dumps({"cmd": "_pong", "re": msg.get("id")}))
                elif msg.get("cmd") == "_transition":
                    sock.send(orjson.dumps({"cmd": "_reply", "re": msg["id"], "to": msg["from"], "ok": True,
                                            "result": {"state": msg["transition"], "run": msg["run"]}}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    common.exit_on_sigterm()
    server = common.BenchServer(heartbeat=1.0, timeout=10.0).start()
    controller = subprocess.Popen([sys.executable, "-m", "runcontrol.control.controller", "--experiment", str(server.path),
                                   "--log-level", "WARNING"], cwd=common.ROOT, start_new_session=True)
    helpers = []
    try:
        ready = mp.Queue()
        names = [f"p{i:03d}" for i in range(args.participants)]
        for start in range(0, len(names), PER_PROCESS):
            proc = mp.Process(target=participants, args=(server.router, names[start:start + PER_PROCESS], ready))
            proc.start()
            helpers.append(proc)
        registered = sum(ready.get(timeout=60) for _ in helpers)
        with Operator(server=server.router, name="bench-op") as op:
            common.wait_for(lambda: len(op.status()["participants"]) == args.participants, 30, 0.2)
            timings = []
            for _ in range(args.rounds):
                op.prepare_run()
                started = time.perf_counter()
                answer = op.begin_run(comment="bench")
                timings.append(1000 * (time.perf_counter() - started))
                assert len(answer["participants"]) == args.participants and not answer["problems"]
                op.end_run()
        print(f"begin_run to {registered} participants, all acknowledged: median {statistics.median(timings):.1f} ms, "
              f"max {max(timings):.1f} ms over {len(timings)} runs "
              f"(target: median < 100 ms: {'met' if statistics.median(timings) < 100 else 'NOT met'})")
    finally:
        common.stop_all(helpers)
        if controller.poll() is None:
            controller.send_signal(signal.SIGTERM)
            controller.wait(30)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
