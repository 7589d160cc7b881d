"""Routing speed: our server and client library against a bare pyzmq forwarder, in one run.

(a) bare: DEALER -> ROUTER -> DEALER, the forwarder only swaps identities: the limit.
(b) orbit: our server process, our Client sending and our Client serving.
(c) orbit with CURVE: the same with encryption and authentication on (keys made
    by runcontrol.bus.keys), to measure what security costs.
For each: one-way messages per second (measured at the receiver; our sender keeps at
most 5,000 messages in flight, on credit the receiver returns every 1,000, so none is
dropped for want of room) and request/reply
round-trip p50 and p99. Runs alternate a, b, c, a, b, c ...; the table gives the median rate and the
percentiles over all round trips of each path, a second table each run's rates.
Targets: orbit at least 75 % of the bare one-way rate, CURVE at least 75 % of plain, orbit's p99 at most
3 times the bare forwarder's.

Run: python benchmarks/bench_routing.py [--messages N] [--round-trips N] [--runs N]
"""

import argparse
import multiprocessing as mp
import statistics
import sys
import time

import common  # noqa: F401  (puts the project on sys.path)
import zmq
from figures import Report

from runcontrol.client.client import Client

PAYLOAD = "x" * 150
WINDOW = 5000        # messages the sender may have in flight before the receiver's credit
CREDIT_EVERY = 1000
BARE_MESSAGE = f'{{"to": "rx", "cmd": "data", "seq": 0, "payload": "{PAYLOAD}"}}'.encode()
TIMEOUT_MS = 10000   # every blocking send and receive of the bare side


# --- (a) the bare forwarder ------------------------------------------------------------

def bare_forwarder(address_out):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 10000)
    router.setsockopt(zmq.RCVHWM, 10000)
    router.bind("tcp://127.0.0.1:*")
    address_out.put(router.getsockopt_string(zmq.LAST_ENDPOINT))
    deadline = common.deadline()
    while time.monotonic() < deadline:
        if router.poll(1000):
            ident, data = router.recv_multipart()
            router.send_multipart((b"rx" if ident == b"tx" else b"tx", data))


def bare_dealer(ctx, address, ident):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, ident)
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.RCVHWM, 10000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, TIMEOUT_MS)
    sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    sock.connect(address)
    return sock


def bare_receiver(address, count, ready, result):
    ctx = zmq.Context()
    sock = bare_dealer(ctx, address, b"rx")
    sock.send(b"here")  # makes the forwarder know the identity "rx"
    ready.set()
    first = None
    for _ in range(count):
        sock.recv()
        if first is None:
            first = time.perf_counter()
    result.put((count - 1) / (time.perf_counter() - first))


def bare_sender(address, count, go):
    ctx = zmq.Context()
    sock = bare_dealer(ctx, address, b"tx")
    if not go.wait(60):
        return
    for _ in range(count):
        sock.send(BARE_MESSAGE)
    time.sleep(1)


def bare_echo(address, ready):
    ctx = zmq.Context()
    sock = bare_dealer(ctx, address, b"rx")
    sock.send(b"here")
    ready.set()
    deadline = common.deadline()
    while time.monotonic() < deadline:
        if sock.poll(1000):
            sock.send(sock.recv())


def bare_round_trips(address, count, warmup):
    ctx = zmq.Context()
    sock = bare_dealer(ctx, address, b"tx")
    times = []
    for i in range(warmup + count):
        start = time.perf_counter()
        sock.send(BARE_MESSAGE)
        sock.recv()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    sock.close()
    ctx.term()
    return times


def run_bare(messages, round_trips, warmup):
    addresses = mp.Queue()
    forwarder = mp.Process(target=bare_forwarder, args=(addresses,), daemon=True)
    forwarder.start()
    procs = [forwarder]
    try:
        address = addresses.get(timeout=10)
        ready, go, result = mp.Event(), mp.Event(), mp.Queue()
        receiver = mp.Process(target=bare_receiver, args=(address, messages, ready, result), daemon=True)
        sender = mp.Process(target=bare_sender, args=(address, messages, go), daemon=True)
        procs += [receiver, sender]
        receiver.start()
        sender.start()
        ready.wait(10)
        time.sleep(0.3)  # the sender's connection, too, must be up before timing
        go.set()
        rate = result.get(timeout=120)
        common.stop_all([receiver, sender])
        ready.clear()
        echo = mp.Process(target=bare_echo, args=(address, ready), daemon=True)
        procs.append(echo)
        echo.start()
        ready.wait(10)
        time.sleep(0.3)
        times = bare_round_trips(address, round_trips, warmup)
    finally:
        common.stop_all(procs)
    return rate, times


# --- (b) our server and client library ------------------------------------------------------

def orbit_client(name, router, port, experiment):
    return Client(name, experiment=experiment, server=router, beacon_port=port).connect(10)


def orbit_receiver(router, port, experiment, count, ready, result):
    client = orbit_client("rx", router, port, experiment)
    state = {"n": 0, "first": None, "last": None}

    def data(msg):
        state["n"] += 1
        if state["first"] is None:
            state["first"] = time.perf_counter()
        state["last"] = time.perf_counter()
        if state["n"] % CREDIT_EVERY == 0:
            client.send("tx", "credit", received=state["n"])
    client.add_handler("data", data)
    client.add_handler("echo", lambda msg: msg.get("payload"))
    ready.set()
    deadline = time.monotonic() + 120
    while state["n"] < count and time.monotonic() < deadline:
        client.poll(0.5)
    if result is not None:
        result.put(((state["n"] - 1) / (state["last"] - state["first"]), state["n"]))
        return
    deadline = common.deadline()   # the echo: until stopped
    while time.monotonic() < deadline:
        client.poll(0.5)


def orbit_sender(router, port, experiment, count, go):
    client = orbit_client("tx", router, port, experiment)
    received = [0]
    client.add_handler("credit", lambda msg: received.__setitem__(0, msg["received"]))
    if not go.wait(60):
        client.close()
        return
    deadline = time.monotonic() + 120
    for i in range(count):
        while i - received[0] >= WINDOW:  # the receiver's credit: nothing is dropped for want of room
            client.poll(0.01)
            if time.monotonic() > deadline:
                client.close()
                return
        client.send("rx", "data", seq=i, payload=PAYLOAD)
    deadline = time.monotonic() + 30  # stay until the receiver has it all: closing drops what is unsent
    while received[0] < count - count % CREDIT_EVERY and time.monotonic() < deadline:
        client.poll(0.1)
    client.close()


def orbit_round_trips(router, port, experiment, count, warmup):
    client = orbit_client("rtt", router, port, experiment)
    times = []
    for i in range(warmup + count):
        start = time.perf_counter()
        client.request("rx", "echo", seq=i, payload=PAYLOAD)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    client.close()
    return times


def run_orbit(messages, round_trips, warmup, curve=False):
    server = common.BenchServer(curve=curve).start()
    ready, go, result = mp.Event(), mp.Event(), mp.Queue()
    args = (server.router, server.port, str(server.path))
    receiver = mp.Process(target=orbit_receiver, args=(*args, messages, ready, result), daemon=True)
    sender = mp.Process(target=orbit_sender, args=(*args, messages, go), daemon=True)
    procs = [receiver, sender]
    try:
        receiver.start()
        sender.start()
        ready.wait(20)
        time.sleep(0.5)
        go.set()
        rate, received = result.get(timeout=180)
        if received < messages:
            print(f"  orbit: {messages - received} of {messages} messages not received", file=sys.stderr)
        common.stop_all(procs)
        ready.clear()
        echo = mp.Process(target=orbit_receiver, args=(*args, 0, ready, None), daemon=True)
        procs.append(echo)
        echo.start()
        ready.wait(20)
        times = orbit_round_trips(*args, round_trips, warmup)
    finally:
        common.stop_all(procs)
        server.stop()
    return rate, times


def summary(rates, times):
    return {"rate": statistics.median(rates), "p50_ms": common.percentile(times, 0.50) * 1000,
            "p99_ms": common.percentile(times, 0.99) * 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    mp.set_start_method("fork")
    common.exit_on_sigterm()
    report = Report("routing", messages=args.messages, round_trips=args.round_trips, runs=args.runs)
    results = {"bare": ([], []), "orbit": ([], []), "orbit+curve": ([], [])}
    runners = (("bare", run_bare), ("orbit", run_orbit),
               ("orbit+curve", lambda *a: run_orbit(*a, curve=True)))
    for run in range(args.runs):
        for name, runner in runners:
            rate, times = runner(args.messages, args.round_trips, 500)
            results[name][0].append(rate)
            results[name][1].extend(times)
            print(f"run {run + 1} {name}: {rate:,.0f} msg/s, round trip p50 "
                  f"{common.percentile(times, 0.5) * 1000:.3f} ms, p99 {common.percentile(times, 0.99) * 1000:.3f} ms",
                  flush=True)
    bare, orbit, curve = (summary(*results[k]) for k in ("bare", "orbit", "orbit+curve"))
    report.table(("path", "one-way msg/s", "round trip p50", "round trip p99"), [
        (name, f"{figures['rate']:,.0f}", f"{figures['p50_ms']:.3f} ms", f"{figures['p99_ms']:.3f} ms")
        for name, figures in (("bare pyzmq forwarder", bare), ("orbit server + client library", orbit),
                              ("orbit with CURVE", curve))])
    rates = [results[k][0] for k in ("bare", "orbit", "orbit+curve")]
    report.table(("run", "bare msg/s", "orbit msg/s", "orbit / bare", "CURVE msg/s", "CURVE / orbit"), [
        (run + 1, f"{b:,.0f}", f"{o:,.0f}", f"{o / b:.2f}", f"{c:,.0f}", f"{c / o:.2f}")
        for run, (b, o, c) in enumerate(zip(*rates))], title="Each run's one-way rates")
    report.figure("one-way rate, orbit (median run)", orbit["rate"], "{:,.0f} msg/s", bare["rate"],
                  "the bare forwarder", target=(">=", 0.75), on="ratio")
    report.figure("one-way rate with CURVE (median run)", curve["rate"], "{:,.0f} msg/s", orbit["rate"],
                  "orbit without CURVE", target=(">=", 0.75), on="ratio")
    report.figure("round trip p50, orbit", orbit["p50_ms"], "{:.3f} ms", bare["p50_ms"], "the bare forwarder")
    report.figure("round trip p99, orbit", orbit["p99_ms"], "{:.3f} ms", bare["p99_ms"], "the bare forwarder",
                  target=("<=", 3.0), on="ratio")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
