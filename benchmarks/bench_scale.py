"""How the server's cost grows with its clients, and whether it leaks.

For 10, 100 and 1000 registered clients (many DEALER sockets in one helper process)
at a 1 s heartbeat: the CPU share and RSS of (a) our server, which pings every client
each second and takes their pongs, and (b) a bare pyzmq ROUTER that answers one
heartbeat per client per second sent at random moments, measured in the same run.
Then the leak check: the RSS before and after one million messages routed between two
raw-socket clients, (a) through our server, (b) through a bare pyzmq forwarder that only
swaps identities, the same messages on the same credit, in the same run.
Targets, at the most clients: CPU no higher than the bare ROUTER's, RSS under 100 MB; the
server's RSS grows by less than 5 MB more than the bare forwarder's over the million.

Run: python benchmarks/bench_scale.py [--seconds 30] [--clients 10,100,1000] [--messages 1000000]
"""

import argparse
import heapq
import multiprocessing as mp
import random
import sys
import time

import common
import psutil
import zmq
from figures import Report

NOBLOCK = int(zmq.NOBLOCK)
PONG = b'{"cmd":"_pong"}'
WINDOW = 5000  # below the server's per-client queue: no drops, only back-pressure
LEAK_TX, LEAK_RX = b"leak-tx", b"leak-rx"


def dealers(ctx, router, count, identity=None):
    socks = []
    for _ in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 10000)
        sock.setsockopt(zmq.RCVTIMEO, 10000)
        if identity:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(router)
        socks.append(sock)
    return socks


def drain(sock):
    while True:
        try:
            yield sock.recv(NOBLOCK)
        except zmq.Again:
            return


# --- clients of our server: register, then answer every ping ------------------------------

def orbit_clients(router, count, ready, stop):
    ctx = zmq.Context()
    socks = dealers(ctx, router, count)
    poller = zmq.Poller()
    for i, sock in enumerate(socks):
        sock.send(b'{"cmd":"_hello","name":"scale-%d","id":1}' % i)
        poller.register(sock, zmq.POLLIN)
    welcomed = 0
    deadline = common.deadline()
    while not stop.is_set() and time.monotonic() < deadline:
        for sock, _ in poller.poll(200):
            for data in drain(sock):
                if data.startswith(b'{"cmd":"_ping"'):
                    sock.send(PONG)
                elif data.startswith(b'{"cmd":"_reply"'):
                    welcomed += 1
                    if welcomed == count:
                        ready.set()


# --- the bare ROUTER and its clients: one heartbeat a second each, at random moments ------------

def bare_router(address_out):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    address_out.put(router.getsockopt_string(zmq.LAST_ENDPOINT))
    deadline = common.deadline()
    while time.monotonic() < deadline:
        if router.poll(1000):
            ident, _ = router.recv_multipart()
            router.send_multipart((ident, b"pong"))


def bare_clients(router, count, ready, stop):
    ctx = zmq.Context()
    socks = dealers(ctx, router, count)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    now = time.monotonic()
    due = [(now + random.random(), i) for i in range(count)]
    heapq.heapify(due)
    ready.set()
    deadline = common.deadline()
    while not stop.is_set() and now < deadline:
        now = time.monotonic()
        while due[0][0] <= now:
            _, i = heapq.heappop(due)
            socks[i].send(b'{"cmd":"_ping"}')
            heapq.heappush(due, (now + 1.0, i))
        for sock, _ in poller.poll(max(0, (due[0][0] - now) * 1000)):
            for _ in drain(sock):
                pass


def measure(pid, seconds):
    """(CPU % of one core, RSS MB) of a process over `seconds`."""
    proc = psutil.Process(pid)
    before, start = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, wall = proc.cpu_times(), time.monotonic() - start
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / wall, proc.memory_info().rss / 2**20


def run_orbit(count, seconds):
    server = common.BenchServer(heartbeat=1.0, timeout=30.0).start()
    ready, stop = mp.Event(), mp.Event()
    helper = mp.Process(target=orbit_clients, args=(server.router, count, ready, stop), daemon=True)
    try:
        helper.start()
        if not ready.wait(120):
            raise RuntimeError(f"{count} clients did not register")
        time.sleep(2)
        return measure(server.proc.pid, seconds)
    finally:
        stop.set()
        common.stop_all([helper])
        server.stop()


def run_bare(count, seconds):
    addresses, ready, stop = mp.Queue(), mp.Event(), mp.Event()
    router = mp.Process(target=bare_router, args=(addresses,), daemon=True)
    helper = None
    try:
        router.start()
        helper = mp.Process(target=bare_clients, args=(addresses.get(timeout=10), count, ready, stop), daemon=True)
        helper.start()
        ready.wait(60)
        time.sleep(2)
        return measure(router.pid, seconds)
    finally:
        stop.set()
        common.stop_all([helper, router])


# --- one million routed messages: our server, and a bare forwarder -----------------------------------

def leak_forwarder(address_out):
    """The reference: answers each side's `here` with `ok`, forwards everything else to the other side."""
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
            if data == b"here":
                router.send_multipart((ident, b"ok"))
            else:
                router.send_multipart((LEAK_RX if ident == LEAK_TX else LEAK_TX, data))


def leak_socket(router, identity, bare):
    """A raw DEALER known to our server by a `_hello` (or to the bare forwarder by its identity), welcomed."""
    sock = dealers(zmq.Context(), router, 1, identity)[0]
    sock.send(b"here" if bare else b'{"cmd":"_hello","name":"%s","id":1}' % identity)
    sock.recv()
    return sock


def leak_sender(router, count, ready, go, progress, bare):
    sock = leak_socket(router, LEAK_TX, bare)
    ready.set()
    if not go.wait(60):
        return
    deadline = time.monotonic() + 600
    message = b'{"to":"leak-rx","cmd":"data","payload":"' + b"x" * 150 + b'"}'
    for i in range(count):
        sock.send(message)
        if i % 1000 == 0:
            for _ in drain(sock):  # pings and errors: keep our inbox from filling
                pass
            while i - progress.value > WINDOW:  # credit: never more than WINDOW in flight
                if time.monotonic() > deadline:
                    return
                time.sleep(0.001)


def leak_receiver(router, count, ready, progress, bare):
    sock = leak_socket(router, LEAK_RX, bare)
    ready.set()
    received = 0
    last_data = time.monotonic()
    while received < count and time.monotonic() - last_data < 10:
        sock.poll(1000)
        for data in drain(sock):
            if data.startswith(b'{"cmd":"_ping"'):
                sock.send(PONG)
            else:
                received += 1
                last_data = time.monotonic()
        progress.value = received


def run_leak(messages, bare):
    """(RSS before, RSS after, messages received, seconds) of the server, or of the bare forwarder."""
    server = forwarder = None
    rx_ready, tx_ready, go, progress = mp.Event(), mp.Event(), mp.Event(), mp.Value("q", 0)
    receiver = sender = None
    try:
        if bare:
            addresses = mp.Queue()
            forwarder = mp.Process(target=leak_forwarder, args=(addresses,), daemon=True)
            forwarder.start()
            router, pid = addresses.get(timeout=10), forwarder.pid
        else:
            server = common.BenchServer(heartbeat=1.0, timeout=30.0).start()
            router, pid = server.router, server.proc.pid
        receiver = mp.Process(target=leak_receiver, args=(router, messages, rx_ready, progress, bare), daemon=True)
        receiver.start()
        if not rx_ready.wait(30):
            raise RuntimeError("the receiver did not start")
        sender = mp.Process(target=leak_sender, args=(router, messages, tx_ready, go, progress, bare), daemon=True)
        sender.start()
        if not tx_ready.wait(30):
            raise RuntimeError("the sender did not start")
        proc = psutil.Process(pid)
        before = proc.memory_info().rss / 2**20
        start = time.monotonic()
        go.set()
        receiver.join(900)
        elapsed = time.monotonic() - start
        time.sleep(2)
        after = proc.memory_info().rss / 2**20
        return before, after, progress.value, elapsed
    finally:
        common.stop_all([receiver, sender, forwarder])
        if server is not None:
            server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    mp.set_start_method("fork")
    common.exit_on_sigterm()
    report = Report("scale", seconds=args.seconds, clients=args.clients, messages=args.messages)
    rows = []
    for count in map(int, args.clients.split(",")):
        ours = run_orbit(count, args.seconds)
        bare = run_bare(count, args.seconds)
        rows.append((count, ours, bare))
        print(f"{count} clients: orbit {ours[0]:.1f} % CPU {ours[1]:.0f} MB; "
              f"bare ROUTER {bare[0]:.1f} % CPU {bare[1]:.0f} MB", flush=True)
    leaks = {}
    for name, bare in (("orbit server", False), ("bare forwarder", True)):
        leaks[name] = run_leak(args.messages, bare)
        before, after, received, elapsed = leaks[name]
        print(f"{name}: RSS {before:.1f} MB before {args.messages:,} messages, {after:.1f} MB after; "
              f"{received:,} received in {elapsed:.1f} s", flush=True)
    report.table(("clients", "orbit server CPU", "orbit server RSS", "bare ROUTER CPU", "bare ROUTER RSS"), [
        (count, f"{ours[0]:.1f} %", f"{ours[1]:.0f} MB", f"{bare[0]:.1f} %", f"{bare[1]:.0f} MB")
        for count, ours, bare in rows])
    report.table(("routed by", "RSS before", "RSS after", "growth", "received", "time", "rate"), [
        (name, f"{before:.1f} MB", f"{after:.1f} MB", f"{after - before:+.1f} MB", f"{received:,}",
         f"{elapsed:.1f} s", f"{received / elapsed:,.0f} msg/s")
        for name, (before, after, received, elapsed) in leaks.items()],
        title=f"Leak check: {args.messages:,} messages between two raw-socket clients")
    count, ours, bare = rows[-1]
    report.figure(f"server CPU, {count} clients", ours[0], "{:.1f} %", bare[0], "the bare ROUTER",
                  target=("<=", 1.0), on="ratio")
    report.figure(f"server RSS, {count} clients", ours[1], "{:.0f} MB", bare[1], "the bare ROUTER",
                  target=("<", 100))
    (o_before, o_after, o_received, o_s), (b_before, b_after, b_received, b_s) = leaks.values()
    report.figure(f"RSS growth over {args.messages:,} messages", o_after - o_before, "{:+.1f} MB",
                  b_after - b_before, "the bare forwarder's", target=("<", 5.0), on="excess")
    report.figure("messages routed a second, leak check", o_received / o_s, "{:,.0f}", b_received / b_s,
                  "the bare forwarder")
    if o_received < args.messages or b_received < args.messages:
        report.note(f"not every message arrived: {o_received:,} through the server, {b_received:,} through "
                    f"the bare forwarder, of {args.messages:,}")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
