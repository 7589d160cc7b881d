"""The epics program: 10,000 published numbers a second to Channel Access monitors, against a bare caproto server.

(a) A real server (`python -m runcontrol.bus.server`) and the epics program (`python -m clients.epics`, the
experiment's `epics.export` covering every number); --publishers client processes publish --pvs numbers between
them, each number a publication of its own (a topic, `{"value": <the send time>, "units": "s"}`): each until the
epics program serves them all (its `status`), then, once the monitor holds every subscription, each once a second,
spread evenly over the second (a slice every 20 ms, the publishers interleaved). A CA client process monitors all
--pvs process variables and stamps each update as it reads it from its socket. Timed, for every update whose
publication was sent inside the measured window: the bus's time of the publication (`ts`, the PV's timestamp) -> the
monitor (what the epics program adds), the publisher's send time (the value) -> the monitor, and the send -> `ts`.
(b) The reference, in the same run: a bare caproto asyncio server process updating the same process variables from
inside (no bus) on the same schedule, each update's time as its value and timestamp, watched by the same monitor.
Each part: --warmup s of updates, then --seconds s measured, then 3 s for updates still on their way; the CPU (user
+ system, all threads, over the window) and RSS of each process, the updates delivered and those missed (sent in the
window, not seen by the monitor by then). Targets: the epics program under one core, and every update delivered (a
program that falls behind may stay under a core while its monitors' latency grows without bound).

The monitor is a small CA client on caproto's protocol objects (`Monitor`): caproto's asyncio and threading
clients cannot take 10,000 updates a second here beside the rest. Channel Access stays on loopback, on ports of
the benchmark's own, with a CA repeater of its own for each part (as the tests have), stopped with the rest.

Run: python benchmarks/bench_epics.py [--pvs 10000] [--publishers 4] [--seconds 20] [--warmup 5] [--profile FILE]
  --profile FILE: the epics program runs under cProfile, its statistics written to FILE (a scratch run: the
  profiler's cost is in every figure).
"""

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import socket
import subprocess
import sys
import time

import common
import psutil
from figures import Report

PREFIX = "BENCH:"
TICK_S = 0.02        # a publisher publishes its next slice of numbers every tick
CONNECT_S = 90.0     # for every monitor's first value
DRAIN_S = 3.0        # after the window, for updates still on their way
TARGET_CPU = 100.0   # % of one core
TARGET_DELIVERED = 99.9   # % of the updates sent in the window
NEVER = float("inf")
GO, START, END, STOP, LEAVE = range(5)   # the shared window: wall-clock times, NEVER until the benchmark sets them


def topics_of(pvs, publishers):
    """The topics each publisher publishes (n00000 ...), and every process variable's name."""
    topics = [[f"n{i:05d}" for i in range(k, pvs, publishers)] for k in range(publishers)]
    groups = [[f"{PREFIX}p{k}:{topic}:value" for topic in mine] for k, mine in enumerate(topics)]
    return topics, groups


def ca_server_env(port, beacon_port):
    """What the bare server reads (as clients/epicsbridge/caserver.py's `ca_environment` gives the epics program):
    loopback, our port, beacons to our repeater."""
    return {"EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CA_SERVER_PORT": str(port),
            "EPICS_CAS_SERVER_PORT": str(port), "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_CAS_BEACON_PORT": str(beacon_port),
            "EPICS_CA_REPEATER_PORT": str(beacon_port)}


def ca_client_env(port, beacon_port):
    """The monitor's: searches go to our server's port only."""
    return {"EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}", "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_SERVER_PORT": str(port), "EPICS_CA_REPEATER_PORT": str(beacon_port)}


class Schedule:
    """When each slice goes: every TICK_S one slice of `items` (spread over a second), starting `offset_s` into a
    tick; the shared `window` says which sends count and when to stop."""

    def __init__(self, items, offset_s, window):
        ticks = round(1.0 / TICK_S)
        size = math.ceil(len(items) / ticks)
        self.slices = [items[i:i + size] for i in range(0, len(items), size)]
        self.slices += [[]] * (ticks - len(self.slices))
        self.window = window
        self.next_s = (math.floor(time.time() / TICK_S) + 1) * TICK_S + offset_s
        self.slot = 0
        self.sent = 0
        self.late_s = 0.0   # the worst lateness of a slice inside the window

    def wait_s(self):
        """Seconds until the next slice (0: due now); None once told to stop."""
        now = time.time()
        if now >= self.window[STOP]:
            return None
        return max(0.0, self.next_s - now)

    def take(self):
        """The slice due now."""
        now = time.time()
        if self.window[START] <= now < self.window[END]:
            self.late_s = max(self.late_s, now - self.next_s)
        items = self.slices[self.slot]
        self.slot = (self.slot + 1) % len(self.slices)
        self.next_s += TICK_S
        return items

    def count(self, sent_at):
        if self.window[START] <= sent_at < self.window[END]:
            self.sent += 1


def until(window, when, wait, give_up):
    """Call `wait(seconds)` until the time `window[when]` (set by the benchmark), or until `give_up` (monotonic)."""
    while time.time() < min(window[when], window[STOP] + 60) and time.monotonic() < give_up:
        wait(0.1)


def publisher(k, publishers, pvs, path, topics, window, results):
    """A client of the bus: each of `topics` until the epics program serves all `pvs`, then (from GO) each once a
    second (value: the send time)."""
    from runcontrol.client.client import Client
    give_up = common.deadline()
    client = Client(f"p{k}", experiment=path)
    try:
        client.connect(30)
        while not served_all(client, pvs):   # what it published before its subscription took effect was not heard
            for topic in topics:
                client.publish(topic, {"value": time.time(), "units": "s"})
            client.poll(0.5)
        results.put(("served", k))
        until(window, GO, client.poll, give_up)
        schedule = Schedule(topics, k * TICK_S / publishers, window)
        while (wait_s := schedule.wait_s()) is not None:
            if wait_s > 0:
                client.poll(min(wait_s, 0.1))
                continue
            for topic in schedule.take():
                sent_at = time.time()
                client.publish(topic, {"value": sent_at, "units": "s"})
                schedule.count(sent_at)
        results.put(("sent", k, schedule.sent, schedule.late_s))
        until(window, LEAVE, client.poll, give_up)   # one that left would have its numbers made INVALID (sent again)
    finally:
        client.close()


def served_all(client, pvs):
    """Whether the epics program serves `pvs` process variables (or more)."""
    from runcontrol.errors import RequestFailed
    try:
        return client.request("epics", "status", timeout=10)["served"] >= pvs
    except RequestFailed:   # not registered yet, say
        return False


def bare_server(port, beacon_port, groups, window, results):
    """The reference: caproto's asyncio server alone, updating every process variable once a second from inside
    (from GO), each group of names on a publisher's schedule (so the updates come as the epics program's do)."""
    os.environ.update(ca_server_env(port, beacon_port))
    logging.getLogger("caproto").setLevel(logging.ERROR)   # not a line for each batch it sends under load
    give_up = common.deadline()
    from caproto import ChannelDouble
    from caproto.asyncio.server import Context
    now = time.time()
    pvdb = {name: ChannelDouble(value=now, timestamp=now, units="s") for names in groups for name in names}

    async def update(k, names):
        while time.time() < window[GO] and time.monotonic() < give_up:
            await asyncio.sleep(0.1)
        schedule = Schedule(names, k * TICK_S / len(groups), window)
        while (wait_s := schedule.wait_s()) is not None:
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            for name in schedule.take():
                updated_at = time.time()
                await pvdb[name].write(updated_at, timestamp=updated_at)
                schedule.count(updated_at)
        results.put(("sent", k, schedule.sent, schedule.late_s))

    async def serve():
        context = Context(pvdb, ["127.0.0.1"])
        served = asyncio.ensure_future(context.run())
        await asyncio.gather(*(update(k, names) for k, names in enumerate(groups)))
        while time.time() < min(window[LEAVE], window[STOP] + 60) and time.monotonic() < give_up:
            await asyncio.sleep(0.1)   # served until the monitor is done
        served.cancel()
        await asyncio.gather(served, return_exceptions=True)
    asyncio.run(serve())


def monitor(port, beacon_port, names, window, results):
    """The CA client: monitors every one of `names`; (arrival, value, timestamp) of each update whose value (its
    send time) falls in the window."""
    os.environ.update(ca_client_env(port, beacon_port))
    began = time.monotonic()
    client = Monitor(port, names)
    took, first = [], set()
    ready = False
    while time.time() < window[END] + DRAIN_S:
        for subscription, value, stamp, arrived in client.updates():
            if window[START] <= value < window[END]:
                took.append((arrived, value, stamp))
            elif not ready:
                first.add(subscription)
        if not ready and len(first) == len(names):
            ready = True
            results.put(("ready", time.monotonic() - began))
        elif not ready and time.monotonic() - began > CONNECT_S:
            raise RuntimeError(f"{len(first)} of {len(names)} monitors had their first value in {CONNECT_S:g} s")
    client.close()
    results.put(("took", took))


class Monitor:
    """A Channel Access client on caproto's protocol objects, as its sync client is built, in one thread: every
    name searched for in a few datagrams, their channels created and subscribed (DBR_TIME_DOUBLE, value and alarm)
    on one circuit, each update taken as it is read from the socket.

    caproto's asyncio client hands each update to its callback through two thread-safe queue hops (a task and a
    wake of the loop each): it took no more than 1,400 updates a second on a whole core here. Its threading client
    took 10,000 a second on 60-80 % of a core, but fell behind (its callbacks' pool queued gigabytes) when the cores
    were shared with the rest; its sync client's `block()` took them on 23 %, but connects channels one by one (13 s
    for 10,000) and fails in its clean-up with more than one channel on a circuit."""

    CHUNK = 500   # channels created or subscribed between two reads

    def __init__(self, port, names):
        import caproto as ca
        self.ca = ca
        self.circuit = ca.VirtualCircuit(our_role=ca.CLIENT, address=self._search(port, names), priority=0)
        self.sock = socket.create_connection(self.circuit.address, 5)
        self.circuit.our_address = self.sock.getsockname()
        self._send(ca.VersionRequest(priority=0, version=ca.DEFAULT_PROTOCOL_VERSION),
                   ca.HostNameRequest(socket.gethostname()), ca.ClientNameRequest("bench"))
        channels = [ca.ClientChannel(name, self.circuit) for name in names]
        deadline = time.monotonic() + CONNECT_S
        for i in range(0, len(channels), self.CHUNK):
            chunk = channels[i:i + self.CHUNK]
            self._send(*(channel.create() for channel in chunk))
            while any(channel.states[ca.CLIENT] is not ca.CONNECTED for channel in chunk):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"channels not created within {CONNECT_S:g} s")
                self._read(1.0)
        mask = ca.SubscriptionType.DBE_VALUE | ca.SubscriptionType.DBE_ALARM
        self.pending = []
        for i in range(0, len(channels), self.CHUNK):
            self._send(*(channel.subscribe(data_type=ca.ChannelType.TIME_DOUBLE, mask=mask)
                         for channel in channels[i:i + self.CHUNK]))
            self.pending += self._read(0.0)

    def _search(self, port, names):
        """The server's address, once every name was found (searches not answered are sent again each second)."""
        ca = self.ca
        broadcaster = ca.Broadcaster(our_role=ca.CLIENT)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.1)
        broadcaster.client_address = udp.getsockname()
        unanswered, address, sent_at = dict(enumerate(names)), None, 0.0
        deadline = time.monotonic() + CONNECT_S
        try:
            while unanswered:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(unanswered)} names not found within {CONNECT_S:g} s")
                if time.monotonic() - sent_at > 1.0:
                    sent_at = time.monotonic()
                    asked = list(unanswered.items())
                    for i in range(0, len(asked), 30):   # 30 searches fit in a datagram
                        searches = [ca.SearchRequest(name, cid, ca.DEFAULT_PROTOCOL_VERSION)
                                    for cid, name in asked[i:i + 30]]
                        udp.sendto(broadcaster.send(ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION), *searches),
                                   ("127.0.0.1", port))
                try:
                    data, sender = udp.recvfrom(ca.MAX_UDP_RECV)
                except socket.timeout:
                    continue
                commands = broadcaster.recv(data, sender)
                broadcaster.process_commands(commands)
                for command in commands:
                    if isinstance(command, ca.SearchResponse) and unanswered.pop(command.cid, None):
                        address = ca.extract_address(command)
        finally:
            udp.close()
        return address

    def _send(self, *commands):
        self.sock.sendall(b"".join(self.circuit.send(*commands)))

    def _read(self, timeout_s):
        """[(subscription id, value, timestamp, arrival)] of the updates read within `timeout_s`."""
        ca = self.ca
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(1 << 16)
        except (socket.timeout, BlockingIOError):
            return []
        arrived = time.time()
        if not data:
            raise RuntimeError("the CA server closed the circuit")
        commands, _ = self.circuit.recv(data)
        updates = []
        for command in commands:
            self.circuit.process_command(command)
            if type(command) is ca.EventAddResponse:
                updates.append((command.subscriptionid, float(command.data[0]), command.metadata.timestamp, arrived))
            elif isinstance(command, ca.ErrorResponse):
                raise RuntimeError(f"the CA server refused: {command}")
        return updates

    def updates(self):
        """The updates read within 0.1 s."""
        pending, self.pending = self.pending, []
        return pending + self._read(0.1)

    def close(self):
        self.sock.close()


class Part:
    """One measured part: its processes, what they reported, the CPU and RSS of those watched."""

    def __init__(self, label):
        self.label = label
        self.results = mp.Queue()
        self.window = mp.Array("d", [NEVER] * 5, lock=False)
        self.processes = []
        self.cpu, self.rss = {}, {}
        self.sent = self.late_s = 0
        self.took = []
        self.connect_s = None

    def fork(self, target, *args):
        proc = mp.Process(target=target, args=(*args, self.window, self.results), daemon=True)
        proc.start()
        self.processes.append(proc)
        return proc

    def expect(self, kind, timeout_s, alive=()):
        """The next report of `kind` from a helper (failing if a process of `alive` ended meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                report = self.results.get(timeout=0.5)
            except queue.Empty:
                if any(failed(p) for p in (*alive, *self.processes)):
                    raise RuntimeError(f"{self.label}: a process failed before {kind!r} was reported")
                continue
            if report[0] != kind:
                raise RuntimeError(f"{self.label}: {report[0]!r} came where {kind!r} was expected")
            return report
        raise RuntimeError(f"{self.label}: no {kind!r} within {timeout_s:g} s")

    def measure(self, watched, warmup_s, seconds):
        """Open the window `warmup_s` from now for `seconds`; the CPU (% of one core) and RSS (MB) of `watched`
        ({label: pid}) over it."""
        start = time.time() + warmup_s
        self.window[START], self.window[END], self.window[STOP] = start, start + seconds, start + seconds + 0.5
        self.window[GO] = time.time()
        time.sleep(max(0.0, start - time.time()))
        procs = {label: psutil.Process(pid) for label, pid in watched.items()}
        before = {label: sum(p.cpu_times()[:2]) for label, p in procs.items()}
        began = time.monotonic()
        time.sleep(max(0.0, self.window[END] - time.time()))
        wall = time.monotonic() - began
        for label, proc in procs.items():
            self.cpu[label] = 100.0 * (sum(proc.cpu_times()[:2]) - before[label]) / wall
            self.rss[label] = proc.memory_info().rss / 2**20

    def collect(self, senders, seconds):
        for _ in range(senders):
            _, _, sent, late_s = self.expect("sent", 30)
            self.sent += sent
            self.late_s = max(self.late_s, late_s)
        self.took = self.expect("took", 60 + DRAIN_S + seconds)[1]
        self.window[LEAVE] = time.time()

    def stop(self):
        common.stop_all(self.processes)


def failed(proc):
    """A helper that ended badly, or a program that ended at all."""
    return proc.exitcode not in (None, 0) if isinstance(proc, mp.Process) else proc.poll() is not None


def experiment(server, port, beacon_port, publishers):
    """The bench server's experiment with an epics section exporting every publisher's numbers."""
    description = json.loads(server.path.read_text())
    description["epics"] = {"prefix": PREFIX, "export": [f"p{k}.*" for k in range(publishers)],
                            "interfaces": ["127.0.0.1"], "addresses": [f"127.0.0.1:{port}"],
                            "server_port": port, "repeater_port": beacon_port}
    server.path.write_text(json.dumps(description))
    return str(server.path)


def start_repeater(port):
    """A CA repeater of our own on loopback (as the tests have): it takes the servers' beacons and the monitor's
    registration."""
    return subprocess.Popen([sys.executable, "-c", "from caproto.sync.repeater import run; run('127.0.0.1')"],
                            cwd=common.ROOT, env={**os.environ, "EPICS_CA_REPEATER_PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def run_orbit(args, groups, topics):
    """(a): the bus, the epics program, the publishers, the monitor."""
    part = Part("the epics program")
    port, beacon_port = common.free_port(), common.free_port()
    with contextlib.ExitStack() as stack:   # every process stopped, even when stopping another fails
        stack.callback(common.stop_group, start_repeater(beacon_port), 5)
        server = common.BenchServer()
        stack.callback(server.stop)
        path = experiment(server.start(), port, beacon_port, args.publishers)
        profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        with open(server.folder / "epics.log", "w") as log:
            epics = subprocess.Popen([sys.executable, *profile, "-m", "clients.epics", "--experiment", path],
                                     cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(common.stop_group, epics, 20)
        stack.callback(part.stop)
        try:
            senders = [part.fork(publisher, k, args.publishers, args.pvs, path, mine)
                       for k, mine in enumerate(topics)]
            for _ in senders:
                part.expect("served", 60, alive=[epics])
            watcher = part.fork(monitor, port, beacon_port, [name for names in groups for name in names])
            part.connect_s = part.expect("ready", CONNECT_S + 10, alive=[epics])[1]
            watched = {"epics program": epics.pid, "bus server": server.proc.pid, "monitor (CA client)": watcher.pid,
                       **{f"publisher {k}": p.pid for k, p in enumerate(senders)}}
            part.measure(watched, args.warmup, args.seconds)
            part.collect(len(senders), args.seconds)
        except BaseException:
            print((server.folder / "epics.log").read_text()[-3000:], file=sys.stderr)
            raise
    publishers = [label for label in part.cpu if label.startswith("publisher")]
    part.cpu["publishers (all)"] = sum(part.cpu.pop(label) for label in publishers)
    part.rss["publishers (all)"] = sum(part.rss.pop(label) for label in publishers)
    return part


def run_bare(args, groups):
    """(b): caproto's asyncio server alone, the same process variables, the same monitor."""
    part = Part("the bare caproto server")
    port, beacon_port = common.free_port(), common.free_port()
    with contextlib.ExitStack() as stack:
        stack.callback(common.stop_group, start_repeater(beacon_port), 5)
        stack.callback(part.stop)
        server = part.fork(bare_server, port, beacon_port, groups)
        watcher = part.fork(monitor, port, beacon_port, [name for names in groups for name in names])
        part.connect_s = part.expect("ready", CONNECT_S + 10)[1]
        part.measure({"bare caproto server": server.pid, "monitor (CA client)": watcher.pid}, args.warmup,
                     args.seconds)
        part.collect(len(groups), args.seconds)
    return part


def latencies(took):
    """Seconds (stamp -> monitor, send -> monitor, send -> stamp) of each update."""
    return ([arrived - stamp for arrived, _, stamp in took], [arrived - sent for arrived, sent, _ in took],
            [stamp - sent for _, sent, stamp in took])


def ms(values, fraction):
    return 1000.0 * common.percentile(values, fraction) if values else float("nan")


def report_parts(report, args, orbit, bare):
    on_bus, end_to_end, to_bus = latencies(orbit.took)
    reference = latencies(bare.took)[0]
    rows = [("publisher -> bus (`ts`)", to_bus), ("bus (`ts`) -> monitor: the epics program", on_bus),
            ("publisher -> monitor", end_to_end), ("bare caproto server: update -> monitor (the reference)",
                                                   reference)]
    report.table(("", "median", "p99", "max"), [
        (label, f"{ms(values, 0.5):.1f} ms", f"{ms(values, 0.99):.1f} ms", f"{ms(values, 1.0):.1f} ms")
        for label, values in rows],
        title=f"{args.pvs:,} process variables updated once a second, {args.seconds:g} s measured after "
              f"{args.warmup:g} s of warm-up; latency of every update")
    parts = [(orbit, "the epics program, through the bus"), (bare, "bare caproto server")]
    report.table(("", "sent in the window", "seen by the monitor", "missed", "updates/s delivered",
                  "slices late by at most", "monitor connected in"), [
        (label, f"{part.sent:,}", f"{len(part.took):,}", f"{part.sent - len(part.took):,}",
         f"{len(part.took) / args.seconds:,.0f}", f"{part.late_s * 1000:.0f} ms", f"{part.connect_s:.1f} s")
        for part, label in parts], title="Updates")
    report.table(("process", "CPU (% of one core)", "RSS"), [
        (f"{part.label}: {name}", f"{cpu:.1f} %", f"{part.rss[name]:.0f} MB")
        for part in (orbit, bare) for name, cpu in part.cpu.items()], title="CPU over the window")
    return on_bus, reference


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pvs", type=int, default=10000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--profile", help="run the epics program under cProfile, its statistics to this file")
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = Report("epics", pvs=args.pvs, publishers=args.publishers, seconds=args.seconds, warmup=args.warmup,
                    tick_s=TICK_S, profiled=bool(args.profile))
    topics, groups = topics_of(args.pvs, args.publishers)
    orbit = run_orbit(args, groups, topics)
    bare = run_bare(args, groups)
    on_bus, reference = report_parts(report, args, orbit, bare)
    report.figure(f"epics program CPU at {args.pvs:,} process variables a second", orbit.cpu["epics program"],
                  "{:.1f} %", bare.cpu["bare caproto server"], "a bare caproto server, the same updates",
                  target=("<", TARGET_CPU))
    report.figure("epics program RSS", orbit.rss["epics program"], "{:.0f} MB", bare.rss["bare caproto server"],
                  "the bare caproto server")
    report.figure("updates delivered to the monitor, of those sent in the window", delivered(orbit), "{:.2f} %",
                  delivered(bare), "the bare caproto server", target=(">=", TARGET_DELIVERED))
    report.figure("bus (`ts`) -> monitor, median", ms(on_bus, 0.5), "{:.1f} ms", ms(reference, 0.5),
                  "the bare caproto server, update -> monitor")
    report.figure("bus (`ts`) -> monitor, p99", ms(on_bus, 0.99), "{:.1f} ms", ms(reference, 0.99),
                  "the bare caproto server, update -> monitor")
    return report.finish()


def delivered(part):
    return 100.0 * len(part.took) / part.sent if part.sent else 0.0


if __name__ == "__main__":
    sys.exit(main())
