"""How the server's cost grows with its clients, and whether it leaks.

For 10, 100 and 1000 registered clients (many DEALER sockets in one helper process)
at a 1 s heartbeat: the CPU share and RSS of (a) our server, which pings every client
each second and takes their pongs, and (b) a bare pyzmq ROUTER that answers one
heartbeat per client per second sent at random moments, measured in the same run.
Then the server's RSS before and after one million routed messages.

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

NOBLOCK = int(zmq.NOBLOCK)
PONG = b'{"cmd":"_pong"}'
WINDOW = 5000  # below the server's per-client queue: no drops, only back-pressure


def dealers(ctx, router, count):
    socks = []
    for _ in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
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
    while not stop.is_set():
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
    while True:
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
    while not stop.is_set():
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
    router.start()
    helper = mp.Process(target=bare_clients, args=(addresses.get(timeout=10), count, ready, stop), daemon=True)
    try:
        helper.start()
        ready.wait(60)
        time.sleep(2)
        return measure(router.pid, seconds)
    finally:
        stop.set()
        common.stop_all([helper, router])


# --- one million routed messages ---------------------------------------------------------------

def leak_sender(router, count, ready, go, progress):
    ctx = zmq.Context()
    sock = dealers(ctx, router, 1)[0]
    sock.send(b'{"cmd":"_hello","name":"leak-tx","id":1}')
    sock.recv()
    ready.set()
    go.wait()
    message = b'{"to":"leak-rx","cmd":"data","payload":"' + b"x" * 150 + b'"}'
    for i in range(count):
        sock.send(message)
        if i % 1000 == 0:
            for _ in drain(sock):  # pings and errors: keep our inbox from filling
                pass
            while i - progress.value > WINDOW:  # credit: never more than WINDOW in flight
                time.sleep(0.001)


def leak_receiver(router, count, ready, progress):
    ctx = zmq.Context()
    sock = dealers(ctx, router, 1)[0]
    sock.send(b'{"cmd":"_hello","name":"leak-rx","id":1}')
    sock.recv()
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


def run_leak(messages):
    server = common.BenchServer(heartbeat=1.0, timeout=30.0).start()
    rx_ready, tx_ready, go, progress = mp.Event(), mp.Event(), mp.Event(), mp.Value("q", 0)
    receiver = mp.Process(target=leak_receiver, args=(server.router, messages, rx_ready, progress), daemon=True)
    sender = mp.Process(target=leak_sender, args=(server.router, messages, tx_ready, go, progress), daemon=True)
    try:
        receiver.start()
        sender.start()
        rx_ready.wait(30)
        tx_ready.wait(30)
        proc = psutil.Process(server.proc.pid)
        before = proc.memory_info().rss / 2**20
        start = time.monotonic()
        go.set()
        receiver.join(900)
        elapsed = time.monotonic() - start
        time.sleep(2)
        after = proc.memory_info().rss / 2**20
        return before, after, progress.value, elapsed
    finally:
        common.stop_all([receiver, sender])
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    mp.set_start_method("fork")
    common.exit_on_sigterm()
    rows = []
    for count in map(int, args.clients.split(",")):
        ours = run_orbit(count, args.seconds)
        bare = run_bare(count, args.seconds)
        rows.append((count, ours, bare))
        print(f"{count} clients: orbit {ours[0]:.1f} % CPU {ours[1]:.0f} MB; "
              f"bare ROUTER {bare[0]:.1f} % CPU {bare[1]:.0f} MB", flush=True)
    before, after, received, elapsed = run_leak(args.messages)
    print()
    print("| clients | orbit server CPU | orbit server RSS | bare ROUTER CPU | bare ROUTER RSS |")
    print("|---|---|---|---|---|")
    for count, ours, bare in rows:
        print(f"| {count} | {ours[0]:.1f} % | {ours[1]:.0f} MB | {bare[0]:.1f} % | {bare[1]:.0f} MB |")
    print(f"\nRSS before {args.messages:,} routed messages: {before:.1f} MB, after: {after:.1f} MB "
          f"(growth {after - before:+.1f} MB; {received:,} received in {elapsed:.1f} s)")
    count, ours, bare = rows[-1]
    ok = ours[0] <= bare[0] and ours[1] < 100 and after - before < 5
    print(f"targets at {count} clients: CPU <= bare ({ours[0]:.1f} vs {bare[0]:.1f} %), RSS < 100 MB "
          f"({ours[1]:.0f} MB), growth < 5 MB: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
