"""Unmodified libABCD 0.1 clients (the package itself, in processes of their own) on Orbit's server, through the
legacy gateway: one registry, routing both ways, their own liveness, what they can read, bad input."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from runcontrol.client.client import Client
from runcontrol import process
from runcontrol.errors import RequestFailed, RunControlError
from tests.helpers import (PROGRAMS, ROOT, EventWatcher, RawClient, ServerProcess, System, Watchdog, env_for_children,
                           free_port, pump, wait_until, write_experiment)


def records(path, cmd=None):
    if not path.exists():
        return []
    text = path.read_text()
    whole = text[:text.rfind("\n") + 1]   # a line still being written is read next time
    lines = [json.loads(line) for line in whole.splitlines() if line]
    return [m for m in lines if cmd is None or m.get("cmd") == cmd]


class Legacy:
    """A libABCD program (tests/programs/legacy_client.py) and what it received."""

    def __init__(self, folder, name, port, *more):
        self.name, self.record = name, folder / f"{name}.jsonl"
        self.proc = subprocess.Popen([sys.executable, str(PROGRAMS / "legacy_client.py"), name, str(port),
                                      str(self.record), *map(str, more)], cwd=folder, env=env_for_children(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def got(self, cmd=None):
        return records(self.record, cmd)

    def stop(self):
        process.stop_group(self.proc, 5)


@pytest.fixture
def legacy_bus(tmp_path):
    """A server with the gateway on a free loopback port, an Orbit client `orb`, and a way to start legacy ones."""
    port = free_port()
    path = write_experiment(tmp_path, "legacy", heartbeat=0.5, timeout=2.0, max_message_bytes=4096,
                            legacy={"port": port})
    server = ServerProcess(path).start()
    orb = Client("orb", server=server.router)
    started = []

    def start(name, *more):
        started.append(Legacy(tmp_path, name, port, *more))
        return started[-1]
    start.port, start.server, start.orb = port, server, orb
    try:
        orb.connect(10)
        yield start
    finally:
        for one in started:
            one.stop()
        orb.close()
        server.stop()


def listed(orb):
    return {c["name"]: c for c in orb.request(None, "_list")}


def wait_listed(orb, *names):
    return pump([orb], lambda: set(names) <= set(listed(orb)) and listed(orb), 30)


def events(orb, kind, name):
    return [e for e in orb.request(None, "_logs", n=1000) if e.get("kind") == kind and e.get("name") == name]


def test_legacy_and_orbit_clients_share_one_registry_and_talk_both_ways(legacy_bus, tmp_path):
    orb = legacy_bus.orb
    watcher = EventWatcher(legacy_bus.server.events, "").sync(legacy_bus.server.router)
    try:
        bob = legacy_bus("bob")
        wait_listed(orb, "bob")
        alice = legacy_bus("alice", "--to", "bob", "--count", 5)
        clients = wait_listed(orb, "alice", "bob")
        assert clients["alice"]["transport"] == "legacy" and clients["alice"]["meta"]["legacy"] is True
        assert clients["alice"]["meta"]["address"].startswith("127.0.0.1:")
        wait_until(lambda: len(bob.got("data")) == 5, 20)
        assert [(m["seq"], m["from"]) for m in bob.got("data")] == [(i, "alice") for i in range(5)]
        seen = watcher.wait_for("msg.bob", 10, cmd="data")  # the spy sees legacy traffic
        assert seen["from"] == "alice" and "ts" in seen

        heard = []
        orb.add_handler("pinged", lambda msg: heard.append(msg["from"]))
        orb.send("alice", "ping_me", note="from orbit")
        pump([orb], lambda: heard == ["alice"], 20)  # orbit -> legacy -> orbit
        assert alice.got("ping_me")[0]["note"] == "from orbit"
        orb.send("*", "hello_all")
        wait_until(lambda: alice.got("hello_all") and bob.got("hello_all"), 20)
        assert alice.got("hello_all")[0]["from"] == "orb"
        from_legacy = []
        orb.add_handler("data", lambda msg: from_legacy.append(msg["from"]))
        legacy_bus("carol", "--to", "*", "--count", 1)  # a broadcast from a legacy client
        pump([orb], lambda: from_legacy == ["carol"], 20)
        wait_until(lambda: [m for m in alice.got("data") if m["from"] == "carol"], 20)
    finally:
        watcher.close()


def test_a_legacy_client_lives_on_its_own_pings_reads_every_message_in_order_and_gets_too_large(legacy_bus):
    """The server's timeout (2 s) is far shorter than a libABCD client's ping period (10 to 13 s)."""
    orb = legacy_bus.orb
    alice = legacy_bus("alice", "--to", "orb", "--count", 1, "--size", 5000)  # over the server's 4096 bytes
    wait_listed(orb, "alice")
    refused = wait_until(lambda: alice.got("_error"), 20)[0]
    assert refused["code"] == "too_large" and "exceeds the limit of 4096" in refused["error"]
    for seq in range(300):  # a burst: every one arrives, in order, none split across its reads
        orb.send("alice", "burst", seq=seq, text="é" * (seq % 200))
    pump([orb], lambda: len(alice.got("burst")) == 300, 60)
    assert [m["seq"] for m in alice.got("burst")] == list(range(300))
    with pytest.raises(RunControlError) as too_big:
        orb.request("alice", "burst", fill="x" * 2000, timeout=10)
    assert too_big.value.code == "too_large" and "libABCD client" in str(too_big.value)
    pump([orb], lambda: alice.got("_pong"), 40)  # its first ping, 10 to 13 s after it started: answered
    assert "alice" in listed(orb) and alice.proc.poll() is None
    assert events(orb, "client_lost", "alice") == []   # silent all that while, and never lost


def test_legacy_clients_find_a_server_restarted_by_its_watchdog_by_iamabcd(tmp_path):
    port = free_port()
    path = write_experiment(tmp_path, "legacyw", heartbeat=0.5, timeout=2.0, legacy={"port": port})
    server = ServerProcess(path)
    dog = Watchdog(server, "--stale-after", "2", "--grace", "2", "--standby").start()   # as run.py keeps it
    clients = []
    try:
        wait_until(dog.server_pid, 20, what="the server under its watchdog")
        clients += [Legacy(tmp_path, "alice", port), Legacy(tmp_path, "bob", port)]
        first = dog.server_pid()
        wait_until(lambda: b"bob" in subprocess.run(
            [sys.executable, "send.py", "--experiment", str(path), "server", "_list"], cwd=ROOT,
            env=env_for_children(), capture_output=True).stdout, 30)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: dog.server_pid() not in (None, first), 30, what="the watchdog to start the server again")
        with Client("orb", experiment=str(path)) as orb:
            orb.connect(20)
            wait_listed(orb, "alice", "bob")  # back by themselves: they heard IamABCD
            orb.send("bob", "ping_me")
            heard = []
            orb.add_handler("pinged", lambda msg: heard.append(msg["from"]))
            pump([orb], lambda: heard == ["bob"], 20)
    finally:
        for one in clients:
            one.stop()
        dog.stop()


def raw(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def read_frames(sock, count, timeout_s=10):
    """`count` frames of what the gateway writes: exactly 1024 bytes, one object each."""
    sock.settimeout(timeout_s)
    data = b""
    while len(data) < 1024 * count:
        chunk = sock.recv(1024 * count - len(data))
        assert chunk, "the gateway closed the connection"
        data += chunk
    return [json.loads(data[i:i + 1024]) for i in range(0, len(data), 1024)]


@pytest.mark.parametrize("garbage,code", [
    (b'not json at all{"cmd":"_ping"}', "bad_json"),
    (b'[1, 2, 3]{"cmd":"_ping"}', "not_object"),
    (b'{"cmd": "x", "to": }{"cmd":"_ping"}', "bad_json"),
    (b'{"to": "bob"}{"cmd":"_ping"}', "no_cmd"),
    (b'{"cmd": 5, "to": "bob"}{"cmd":"_ping"}', "bad_field"),
    (b'{"cmd": "x", "to": "nobody_here"}{"cmd":"_ping"}', "no_such_client"),
    (b'{"cmd": "x", "fill": "' + b"x" * 5000 + b'"}{"cmd":"_ping"}', "too_large"),
])
def test_bad_input_on_a_legacy_socket_gets_the_error_a_zeromq_client_would_and_harms_nothing(legacy_bus, garbage, code):
    orb = legacy_bus.orb
    bob = legacy_bus("bob")
    wait_listed(orb, "bob")
    if code == "no_such_client":  # past the settle window, where it would be held for a client coming back
        pump([orb], lambda: not orb.request(None, "_status")["settling"], 20)
    sock = raw(legacy_bus.port)
    try:
        sock.sendall(b'  {"cmd":"_init",\n "name":"mallory"}  ')  # whitespace around it is fine
        wait_listed(orb, "mallory")
        for i in range(0, len(garbage), 7):  # split across reads
            sock.sendall(garbage[i:i + 7])
            time.sleep(0.001)
        error, pong = read_frames(sock, 2)
        assert (error["cmd"], error["code"], pong["cmd"]) == ("_error", code, "_pong")  # the connection lives on
        sock.sendall(b'{"cmd":"data","to":"bob","from":"orb","id":"mine","seq":1}')
        wait_until(lambda: bob.got("data"), 10)
        delivered = bob.got("data")[0]
        assert delivered["from"] == "mallory" and delivered["id"] == "mine"  # a forged from overwritten, id its own
        orb.send("bob", "ping_me")
        heard = []
        orb.add_handler("pinged", lambda msg: heard.append(msg["from"]))
        pump([orb], lambda: heard == ["bob"], 20)  # bob is served all along
    finally:
        sock.close()


def test_a_legacy_client_that_does_not_read_loses_messages_to_queue_full_and_never_stalls_the_server(legacy_bus):
    orb = legacy_bus.orb
    sock = raw(legacy_bus.port)
    asker = None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b'{"cmd":"_init","name":"sleepy"}')
        wait_listed(orb, "sleepy")
        for seq in range(6000):   # more than the gateway keeps for a client that does not read, and the kernel too
            orb.send("sleepy", "data", seq=seq)
            if seq % 250 == 249:   # the server answers all along
                assert orb.request(None, "_status", timeout=10)["clients"] >= 2
        with pytest.raises(RequestFailed) as full:
            orb.request("sleepy", "data", timeout=10)
        assert full.value.code == "queue_full" and "'sleepy' is not reading its messages" in str(full.value)
        slow = pump([orb], lambda: events(orb, "client_slow", "sleepy"), 20)
        assert slow[0]["dropped"] > 0
        asker = RawClient(legacy_bus.server.router)
        asker.hello("asker")
        refused = asker.request({"to": "sleepy", "cmd": "data"})
        assert refused["code"] == "queue_full"
        sock.close()   # the refused request is owed nothing more, also when its target goes
        pump([orb], lambda: events(orb, "client_left", "sleepy"), 20)
        assert [m for m in asker.until_pong() if m.get("re") == refused["re"]] == []
    finally:
        sock.close()
        if asker is not None:
            asker.close()


def test_what_a_legacy_client_sends_before_its_init_is_delivered_once_it_registers(legacy_bus):
    orb = legacy_bus.orb
    got = []
    orb.add_handler("early", lambda msg: got.append((msg["seq"], msg["from"])))
    sock = raw(legacy_bus.port)
    try:
        sock.sendall(b'{"to":"orb","cmd":"early","seq":0}{"to":"orb","cmd":"early","seq":1}')  # as after a reconnect
        sock.sendall(b'{"cmd":"_init","name":"back"}')
        pump([orb], lambda: len(got) == 2, 20)
        assert got == [(0, "back"), (1, "back")]
    finally:
        sock.close()


def test_the_servers_pings_never_reach_a_legacy_client_and_its_closed_connection_is_client_left(legacy_bus):
    orb = legacy_bus.orb
    beside = RawClient(legacy_bus.server.router)   # an Orbit client, pinged every heartbeat (0.5 s)
    sock = raw(legacy_bus.port)
    pings = []

    def pinged():
        while beside.sock.poll(0):
            msg = json.loads(beside.sock.recv())
            if msg.get("cmd") == "_ping":
                pings.append(msg)
                beside.send({"cmd": "_pong"})
        return len(pings) >= 3
    try:
        beside.hello("beside")
        sock.sendall(b'{"cmd":"_init","name":"old"}')
        wait_listed(orb, "old")
        pump([orb], pinged, 20)   # the server pinged its clients three times meanwhile
        orb.send("old", "last")
        frames = []
        while not frames or frames[-1]["cmd"] != "last":
            frames += read_frames(sock, 1)
        assert [f["cmd"] for f in frames] == ["last"]   # no `_ping` of the server's before it
        sock.close()
        left = pump([orb], lambda: events(orb, "client_left", "old"), 20)
        assert left[0]["reason"] == "it closed its connection" and "old" not in listed(orb)
    finally:
        sock.close()
        beside.close()


def test_a_libabcd_experiment_runs_its_unmodified_programs_under_orbits_supervision(tmp_path):
    port = free_port()
    path = write_experiment(tmp_path, "abcd", heartbeat=0.5, timeout=3.0, legacy={"port": port})
    description = json.loads(path.read_text())
    del description["programs"]
    program = f"python {PROGRAMS / 'legacy_client.py'}"
    description["run"] = {"c1": {"cmd": f"{program} c1 {port} {tmp_path / 'c1.jsonl'}"},
                          "c2": {"cmd": f"{program} c2 {port} {tmp_path / 'c2.jsonl'} --to c1 --count 3"}}
    path.write_text(json.dumps(description))
    system = System(path)
    try:
        wait_until(lambda: {"c1", "c2"} <= set(system.clients()), 30, 0.2)
        wait_until(lambda: len(records(tmp_path / "c1.jsonl", "data")) == 3, 20)  # held for c1 while it came
        first = system.program("c1")["pid"]
        os.kill(first, signal.SIGKILL)
        again = system.wait_state("c1", "RUNNING", restarts=1)
        assert again["pid"] != first
        wait_until(lambda: "c1" in system.clients(), 30, 0.2)
    finally:
        system.close()


def test_a_silent_legacy_client_is_lost_after_its_own_timeout_and_its_connection_closed(tmp_path):
    port = free_port()
    path = write_experiment(tmp_path, "quiet", heartbeat=0.5, timeout=2.0, legacy={"port": port, "timeout": 13})
    server = ServerProcess(path).start()
    sock = raw(port)
    try:
        with Client("orb", server=server.router) as orb:
            orb.connect(10)
            sock.sendall(b'{"cmd":"_init","name":"quiet"}')  # and never a ping after it
            wait_listed(orb, "quiet")
            joined = time.monotonic()
            pump([orb], lambda: "quiet" not in listed(orb), 40)
            assert time.monotonic() - joined > 10  # its own timeout, not the server's 2 s
            lost = [e for e in orb.request(None, "_logs", n=100) if e.get("kind") == "client_lost"]
            assert lost[0]["name"] == "quiet" and "silent for" in lost[0]["reason"]
        sock.settimeout(10)
        assert sock.recv(1024) == b""  # the server closed it: libABCD then looks for IamABCD again
    finally:
        sock.close()
        server.stop()
