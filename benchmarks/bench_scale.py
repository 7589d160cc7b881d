"""How the server's cost grows with its clients, whether it leaks, and how fast 10,000 clients are back after a SIGKILL.

For 10, 100, 1000 and 10,000 registered clients (DEALER sockets in helper processes of at
most 2,000 each) at a 1 s heartbeat: the CPU share and RSS of (a) our server, which pings
every client each second and takes their pongs, and (b) a bare pyzmq ROUTER that answers one
heartbeat per client per second sent at random moments, measured in the same run.
Then the leak check: the RSS before and after one million messages routed between two
raw-socket clients, (a) through our server, (b) through a bare pyzmq forwarder that only
swaps identities, the same messages on the same credit, in the same run.
Then failover: 10,000 raw clients registered with our server, kept by `python -m watchdog`
(with its standby server, when the watchdog offers one); each round SIGKILLs the server and
times until every client holds the new instance's welcome (each says `_hello` again when its
connection is made again and when it hears the new instance's beacon). The reference, with
the same clients in the same run: a bare pyzmq server, already imported (forked by the
benchmark at the kill), that binds the same address, beacons and welcomes every hello at once.
Targets: at 1000 clients CPU no higher than the bare ROUTER's and RSS under 100 MB; at 10,000
CPU no higher than the bare ROUTER's; the server's RSS grows by less than 5 MB more than the
bare forwarder's over the million; all 10,000 clients back within 2 s of the SIGKILL (median).

Run: python benchmarks/bench_scale.py [--seconds 20] [--clients 10,100,1000,10000] [--messages 1000000]
                                      [--failover-clients 10000] [--kills 3]
"""

import argparse
import collections
import heapq
import multiprocessing as mp
import os
import queue
import random
import resource
import select
import signal
import statistics
import subprocess
import sys
import time

import common
import orjson
import psutil
import zmq
from figures import Report

from runcontrol import discovery, pidfile, protocol

NOBLOCK = int(zmq.NOBLOCK)
PONG = b'{"cmd":"_pong"}'
WINDOW = 5000  # below the server's per-client queue: no drops, only back-pressure
LEAK_TX, LEAK_RX = b"leak-tx", b"leak-rx"
LEAK_CLIENT_RATE = 10_000_000   # the leak check routes as fast as the server goes, above the default flood limit
PER_HELPER = 2000     # DEALER sockets in one helper process (each holds two open files: its socket and its mailbox)
REGISTER_S = 120.0    # how long the clients of one row may take to register
HELLO_AGAIN_S = 1.0   # a raw client not welcomed this long after its hello says it again (as the client library does)
RECONNECT_MS = 100    # how often a raw client's DEALER tries a lost connection again
PAUSE_S = 2.0         # between one failover and the next kill (the watchdog prepares its next standby meanwhile)
BACKLOG = 10000       # connections waiting to be accepted (as our server's router has for max_clients)


def room(sockets):
    """Room in this process for `sockets` DEALER sockets: its limit of open files raised to the hard limit, and a
    ZeroMQ context that may hold them all (its default is 1023 sockets)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, sockets + 64)
    return ctx


def dealers(ctx, router, count, identity=None):
    socks = []
    for _ in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 10000)
        sock.setsockopt(zmq.RCVTIMEO, 10000)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
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


class Crowd:
    """`count` DEALER sockets of one helper process (`socks`), watched through one epoll set of their ZeroMQ
    descriptors: zmq_poll looks at every socket at every call, which with thousands costs more than the clients'
    own work. A socket's descriptor only says that something changed: `messages(i)` reads until none is left, and
    a send may take the change of a socket it did not read (`sent` reads it afterwards)."""

    def __init__(self, router, count, monitored=False):
        self.ctx = room(3 * count if monitored else count)   # a monitor is a pair of sockets
        self.socks = dealers(self.ctx, router, count)
        self.monitors = [sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) for sock in self.socks] \
            if monitored else []
        self.epoll = select.epoll()
        self.watched = {}   # descriptor -> (socket index, whether it is that socket's monitor)
        for i, sock in enumerate(self.socks):
            self._watch(sock, (i, False))
        for i, monitor in enumerate(self.monitors):
            self._watch(monitor, (i, True))
        self.pending = set()   # sockets a send may have left with messages unread

    def _watch(self, sock, what):
        fd = sock.getsockopt(zmq.FD)
        self.epoll.register(fd, select.EPOLLIN)
        self.watched[fd] = what

    def watch_fd(self, fd):
        self.epoll.register(fd, select.EPOLLIN)

    def ready(self, timeout_s):
        """What woke within `timeout_s`: (socket index, whether it was its monitor) or a plain descriptor watched."""
        found = [self.watched.get(fd, fd) for fd, _ in self.epoll.poll(timeout_s)]
        found.extend((i, False) for i in self.pending)
        self.pending.clear()
        return found

    def messages(self, i, monitor=False):
        return list(drain(self.monitors[i] if monitor else self.socks[i]))

    def send(self, i, data):
        self.socks[i].send(data, NOBLOCK)
        self.pending.add(i)


def shares(count):
    """`count` clients as (first, how many) of each helper process."""
    return [(first, min(PER_HELPER, count - first)) for first in range(0, count, PER_HELPER)]


def helpers(target, count, *args):
    """Helper processes for `count` clients, started, with the Event each sets once its clients are ready."""
    procs, ready = [], []
    for first, share in shares(count):
        event = mp.Event()
        procs.append(mp.Process(target=target, args=(*args, first, share, event), daemon=True))
        ready.append(event)
    for proc in procs:
        proc.start()
    return procs, ready


def all_ready(events, timeout_s):
    deadline = time.monotonic() + timeout_s
    return all(event.wait(max(0.0, deadline - time.monotonic())) for event in events)


# --- clients of our server: register, then answer every ping ------------------------------

def orbit_clients(router, stop, first, count, ready):
    crowd = Crowd(router, count)
    for i in range(count):
        crowd.send(i, b'{"cmd":"_hello","name":"scale-%d","id":1}' % (first + i))
    welcomed = 0
    deadline = common.deadline()
    while not stop.is_set() and time.monotonic() < deadline:
        for i, _ in crowd.ready(0.2):
            for data in crowd.messages(i):
                if data.startswith(b'{"cmd":"_ping"'):
                    crowd.send(i, PONG)
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


def bare_clients(router, stop, first, count, ready):
    crowd = Crowd(router, count)
    now = time.monotonic()
    due = [(now + random.random(), i) for i in range(count)]
    heapq.heapify(due)
    ready.set()
    deadline = common.deadline()
    while not stop.is_set() and now < deadline:
        now = time.monotonic()
        while due[0][0] <= now:
            _, i = heapq.heappop(due)
            crowd.send(i, b'{"cmd":"_ping"}')
            heapq.heappush(due, (now + 1.0, i))
        for i, _ in crowd.ready(max(0.0, due[0][0] - now)):
            crowd.messages(i)


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
    stop = mp.Event()
    procs = []
    try:
        procs, ready = helpers(orbit_clients, count, server.router, stop)
        if not all_ready(ready, REGISTER_S):
            raise RuntimeError(f"{count} clients did not register")
        time.sleep(2)
        return measure(server.proc.pid, seconds)
    finally:
        stop.set()
        common.stop_all(procs)
        server.stop()


def run_bare(count, seconds):
    addresses, stop = mp.Queue(), mp.Event()
    router = mp.Process(target=bare_router, args=(addresses,), daemon=True)
    procs = []
    try:
        router.start()
        procs, ready = helpers(bare_clients, count, addresses.get(timeout=10), stop)
        all_ready(ready, REGISTER_S)
        time.sleep(2)
        return measure(router.pid, seconds)
    finally:
        stop.set()
        common.stop_all([*procs, router])


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
            server = common.BenchServer(heartbeat=1.0, timeout=30.0, client_rate=LEAK_CLIENT_RATE).start()
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


# --- failover: raw clients that say hello again to each new instance they hear of -------------------

def raw_clients(router, port, experiment, reports, stop, first, count, ready):
    """`count` raw clients (`raw-<n>`) that say `_hello` whenever their connection is made (ZeroMQ's monitor) and
    when they hear a new instance's beacon; again every HELLO_AGAIN_S while the instance last heard of has not
    welcomed them. Once all hold the welcome of one instance, (instance, the moment of the last welcome) goes on
    `reports`. They answer pings meanwhile."""
    crowd = Crowd(router, count, monitored=True)
    hellos = [b'{"cmd":"_hello","name":"raw-%d","id":1}' % (first + i) for i in range(count)]
    listener = discovery.BeaconListener(port, experiment=experiment)
    crowd.watch_fd(listener.fileno())
    held = [None] * count             # the instance whose welcome each holds
    holding = collections.Counter()   # instance -> clients holding its welcome
    heard, hello_at, reported = None, 0.0, set()

    def hello_all():
        for i in range(count):
            if held[i] != heard:
                crowd.send(i, hellos[i])

    ready.set()
    deadline = common.deadline()
    while not stop.is_set() and time.monotonic() < deadline:
        if heard is not None and holding[heard] < count and time.monotonic() - hello_at > HELLO_AGAIN_S:
            hello_all()
            hello_at = time.monotonic()
        for item in crowd.ready(0.1):
            if item == listener.fileno():
                for beacon in listener.read():
                    if beacon.instance != heard:
                        heard, hello_at = beacon.instance, time.monotonic()
                        hello_all()
                continue
            i, monitor = item
            if monitor:
                if crowd.messages(i, monitor=True):
                    crowd.send(i, hellos[i])
                continue
            for data in crowd.messages(i):
                if data.startswith(b'{"cmd":"_ping"'):
                    crowd.send(i, PONG)
                elif data.startswith(b'{"cmd":"_reply"'):
                    instance = orjson.loads(data)["result"]["server"]
                    if held[i] != instance:
                        holding[held[i]] -= 1
                        held[i] = instance
                        holding[instance] += 1
                        if holding[instance] == count and instance not in reported:
                            reported.add(instance)
                            reports.put((instance, time.monotonic()))
    listener.close()


def bare_server(router, port, experiment):
    """The reference: binds `router`, beacons a new instance twice a second, welcomes every `_hello` at once."""
    instance = os.urandom(6).hex()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.BACKLOG, BACKLOG)
    sock.bind(router)
    beacon = discovery.BeaconSender(protocol.DEFAULT_BEACON_ADDRESS, port,
                                    protocol.make_beacon(experiment, instance, router, router, os.getpid(), time.time()))
    welcome = b'{"cmd":"_reply","re":1,"ok":true,"result":{"server":"%s"}}' % instance.encode()
    next_beacon = 0.0
    deadline = common.deadline()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_beacon:
            beacon.send()
            next_beacon = time.monotonic() + 0.5
        if sock.poll(100):
            for _ in range(1000):
                try:
                    ident, data = sock.recv_multipart(NOBLOCK)
                except zmq.Again:
                    break
                if data.startswith(b'{"cmd":"_hello"'):
                    sock.send_multipart((ident, welcome))


class Reports:
    """The helpers' word that all their clients hold an instance's welcome."""

    def __init__(self, helpers_count):
        self.queue = mp.Queue()
        self.helpers = helpers_count
        self.seen = {}   # instance -> the moments each helper's last client was welcomed

    def all_back(self, instance, timeout_s):
        """The moment the last client was welcomed by `instance`."""
        deadline = time.monotonic() + timeout_s
        while len(self.seen.get(instance, ())) < self.helpers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{len(self.seen.get(instance, ()))} of {self.helpers} helpers' clients were "
                                   f"all welcomed by server {instance} within {timeout_s} s")
            try:
                known, at = self.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.setdefault(known, []).append(at)
        return max(self.seen[instance])


def next_beacon(listener, old, timeout_s=30):
    """The first beacon of an instance other than `old`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = listener.wait(max(0.01, deadline - time.monotonic()))
        if found is not None and found.instance != old:
            return found
    raise RuntimeError(f"no new server instance within {timeout_s} s")


def standby():
    """The watchdog's option to keep a standby server ready, when it has one (as a server is kept in production)."""
    usage = subprocess.run([sys.executable, "-m", "watchdog", "--help"], cwd=common.ROOT, capture_output=True,
                           text=True, timeout=60).stdout
    return ["--standby"] if "--standby" in usage else []


def run_failover(count, kills):
    """Per kill: (SIGKILL -> first beacon, SIGKILL -> all back) of our server under the watchdog, and the same of
    the bare server."""
    router = f"tcp://127.0.0.1:{common.free_port()}"   # fixed, as damicm's: the clients connect to it again
    server = common.BenchServer(heartbeat=1.0, timeout=30.0, name=f"scale-failover-{os.getpid()}", router=router,
                                events=f"tcp://127.0.0.1:{common.free_port()}", max_clients=count + 10)
    pid_path = server.folder / "state" / "server.pid"
    listener = discovery.BeaconListener(server.port, experiment=server.name)
    reports = Reports(len(shares(count)))
    stop = mp.Event()
    procs, watchdog, bare = [], None, None
    ours, reference = [], []
    keeping = standby()
    try:
        with open(server.folder / "watchdog.log", "wb") as out:
            watchdog = subprocess.Popen(
                [sys.executable, "-m", "watchdog", "--pidfile", str(pid_path), "--stale-after", "10", *keeping,
                 "--max-restarts", str(kills + 5), "--window", "600", "--",
                 sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(server.path), "--pidfile",
                 str(pid_path), "--log-level", "WARNING"],
                cwd=common.ROOT, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        beacon = next_beacon(listener, None)
        procs, ready = helpers(raw_clients, count, beacon.router, server.port, server.name, reports.queue, stop)
        all_ready(ready, REGISTER_S)
        reports.all_back(beacon.instance, REGISTER_S)
        for kill in range(kills):
            time.sleep(PAUSE_S)
            killed_at = time.monotonic()
            os.kill(pidfile.read(pid_path), signal.SIGKILL)
            beacon = next_beacon(listener, beacon.instance)
            ours.append((time.monotonic() - killed_at, reports.all_back(beacon.instance, 60) - killed_at))
            print(f"kill {kill + 1}: first beacon after {ours[-1][0] * 1000:.0f} ms, all {count:,} clients back "
                  f"after {ours[-1][1] * 1000:.0f} ms", flush=True)
        common.stop_group(watchdog, 30)
        bare = mp.Process(target=bare_server, args=(router, server.port, server.name), daemon=True)
        bare.start()
        beacon = next_beacon(listener, beacon.instance)
        reports.all_back(beacon.instance, REGISTER_S)
        for kill in range(kills):
            time.sleep(PAUSE_S)
            killed_at = time.monotonic()
            os.kill(bare.pid, signal.SIGKILL)
            bare.join()
            bare = mp.Process(target=bare_server, args=(router, server.port, server.name), daemon=True)
            bare.start()
            beacon = next_beacon(listener, beacon.instance)
            reference.append((time.monotonic() - killed_at, reports.all_back(beacon.instance, 60) - killed_at))
            print(f"bare kill {kill + 1}: first beacon after {reference[-1][0] * 1000:.0f} ms, all {count:,} "
                  f"clients back after {reference[-1][1] * 1000:.0f} ms", flush=True)
    finally:
        stop.set()
        common.stop_all([*procs, bare])
        if watchdog is not None:
            common.stop_group(watchdog, 30)
        listener.close()
    return ours, reference, bool(keeping)


def scale_figures(report, rows):
    """The targets at 1000 clients (or the most clients up to 1000) and at 10,000."""
    upto_1000 = [row for row in rows if row[0] <= 1000]
    if upto_1000:
        count, ours, bare = upto_1000[-1]
        report.figure(f"server CPU, {count} clients", ours[0], "{:.1f} %", bare[0], "the bare ROUTER",
                      target=("<=", 1.0), on="ratio")
        report.figure(f"server RSS, {count} clients", ours[1], "{:.0f} MB", bare[1], "the bare ROUTER",
                      target=("<", 100))
    for count, ours, bare in rows:
        if count > 1000:
            report.figure(f"server CPU, {count} clients", ours[0], "{:.1f} %", bare[0], "the bare ROUTER",
                          target=("<=", 1.0), on="ratio")
            report.figure(f"server RSS, {count} clients", ours[1], "{:.0f} MB", bare[1], "the bare ROUTER")


def failover_figures(report, count, ours, reference, with_standby):
    ms = [[1000 * v for v in column] for column in (*zip(*ours), *zip(*reference))]
    how = "the watchdog's standby taking over" if with_standby else "restarted by the watchdog"
    to_beacon, to_all, bare_beacon, bare_all = ms
    report.table(("interval", "median", "max"), [
        ("SIGKILL -> the bare server's first beacon (forked by the benchmark at the kill)",
         f"{statistics.median(bare_beacon):.0f} ms", f"{max(bare_beacon):.0f} ms"),
        (f"SIGKILL -> all {count:,} raw clients welcomed by the bare server (the reference)",
         f"{statistics.median(bare_all):.0f} ms", f"{max(bare_all):.0f} ms"),
        (f"SIGKILL -> our new server's first beacon ({how})",
         f"{statistics.median(to_beacon):.0f} ms", f"{max(to_beacon):.0f} ms"),
        (f"SIGKILL -> all {count:,} raw clients registered again with our server",
         f"{statistics.median(to_all):.0f} ms", f"{max(to_all):.0f} ms"),
    ], title=f"Failover: {count:,} raw clients, {len(to_all)} kills")
    report.figure(f"SIGKILL -> all {count:,} clients registered again (median)", statistics.median(to_all),
                  "{:.0f} ms", statistics.median(bare_all), f"all {count:,} welcomed by the bare server",
                  target=("<=", 2000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="10,100,1000,10000")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--failover-clients", type=int, default=10000)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    mp.set_start_method("fork")
    common.exit_on_sigterm()
    report = Report("scale", seconds=args.seconds, clients=args.clients, messages=args.messages,
                    failover_clients=args.failover_clients, kills=args.kills)
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
    ours, reference, with_standby = run_failover(args.failover_clients, args.kills)
    report.table(("clients", "orbit server CPU", "orbit server RSS", "bare ROUTER CPU", "bare ROUTER RSS"), [
        (count, f"{ours[0]:.1f} %", f"{ours[1]:.0f} MB", f"{bare[0]:.1f} %", f"{bare[1]:.0f} MB")
        for count, ours, bare in rows])
    report.table(("routed by", "RSS before", "RSS after", "growth", "received", "time", "rate"), [
        (name, f"{before:.1f} MB", f"{after:.1f} MB", f"{after - before:+.1f} MB", f"{received:,}",
         f"{elapsed:.1f} s", f"{received / elapsed:,.0f} msg/s")
        for name, (before, after, received, elapsed) in leaks.items()],
        title=f"Leak check: {args.messages:,} messages between two raw-socket clients")
    scale_figures(report, rows)
    (o_before, o_after, o_received, o_s), (b_before, b_after, b_received, b_s) = leaks.values()
    report.figure(f"RSS growth over {args.messages:,} messages", o_after - o_before, "{:+.1f} MB",
                  b_after - b_before, "the bare forwarder's", target=("<", 5.0), on="excess")
    report.figure("messages routed a second, leak check", o_received / o_s, "{:,.0f}", b_received / b_s,
                  "the bare forwarder")
    if o_received < args.messages or b_received < args.messages:
        report.note(f"not every message arrived: {o_received:,} through the server, {b_received:,} through "
                    f"the bare forwarder, of {args.messages:,}")
    failover_figures(report, args.failover_clients, ours, reference, with_standby)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
