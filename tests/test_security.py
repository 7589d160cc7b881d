"""CURVE on the bus: known keys get in, nobody else does, keys bound to names, a forged beacon goes nowhere;
floods are throttled (each client, and the unregistered alone and together); an insecure bus is said at every start."""

import json
import logging
import subprocess
import sys
import threading
import time

import pytest
import zmq
import zmq.auth
import zmq.utils.monitor

from runcontrol.client.client import Client
from runcontrol import protocol
from runcontrol import discovery
from runcontrol.errors import RequestFailed, ServerUnavailable
from tests.helpers import (ROOT, ControllerProcess, EventWatcher, RawClient, ServerProcess, env_for_children,
                           free_beacon_port, free_port, helper, start_program, stop_process, wait_until,
                           write_experiment)

FLOOD_LIMIT_S = 120.0      # a flood stops when the test is done with it, or after this long at most
SERVED_WITHIN_S = 60.0     # what the others ask during a flood is answered within this (well inside the flood)
HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH}


@pytest.fixture
def keyed(tmp_path):
    """A server with CURVE: keys made by runcontrol.bus.keys; the key `monitor` may register only monitor*."""
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps({
        "name": "keyed",
        "server": {"router": "tcp://127.0.0.1:0", "events": "tcp://127.0.0.1:0",
                   "beacon": {"port": free_beacon_port(), "interval": 0.5}, "heartbeat": 0.5, "timeout": 5,
                   "curve": {"server_key": "keys/server.key", "clients": "keys/clients",
                             "names": {"monitor": ["monitor*"]}}},
        "paths": {"logs": "log", "data": "data", "state": "state"},
        "programs": {"lta1": helper("echo_client.py", "lta1", client="lta1"),
                     "monitor": helper("echo_client.py", "monitor", client="monitor")}}))
    made = subprocess.run([sys.executable, "-m", "runcontrol.bus.keys", str(path)], cwd=ROOT, env=env_for_children(),
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    server = ServerProcess(path).start()
    yield server
    server.stop()


def client(server, name, **kwargs):
    return Client(name, experiment=str(server.path), **kwargs)


def bare_dealer(router, keys=None, server_key=None):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_serverkey = server_key
    sock.connect(router)
    return sock


def test_a_known_key_registers_and_talks(keyed):
    with client(keyed, "lta1") as lta1, client(keyed, "op") as op:
        lta1.add_handler("ping_me", lambda msg: "pong")
        lta1.connect(10)
        op.connect(10)
        wait_until(lambda: lta1.poll(0.05) * 0 or "lta1" in [c["name"] for c in op.request(None, "_list")])
        pending = op.start({"to": "lta1", "cmd": "ping_me"})
        wait_until(lambda: lta1.poll(0.05) * 0 or op.poll(0.05) * 0 or pending.answer, 10)
        assert pending.answer.result == "pong"


@pytest.mark.parametrize("how", ["no key", "unknown key"])
def test_a_client_without_an_allowed_key_gets_nothing_and_others_go_on(keyed, how):
    server_public, _ = zmq.auth.load_certificate(keyed.path.parent / "keys" / "server.key")
    keys = zmq.curve_keypair() if how == "unknown key" else None
    intruder = bare_dealer(keyed.router, keys, server_public)
    try:
        intruder.send(protocol.encode({"cmd": "_hello", "name": "bias", "id": "1"}))
        assert intruder.poll(1500) == 0  # no answer at all: the connection never got through
        with client(keyed, "op") as op:
            op.connect(10)
            assert "bias" not in [c["name"] for c in op.request(None, "_list")]
    finally:
        intruder.close()
    if how == "unknown key":
        wait_until(lambda: "unknown client key" in keyed.log.read_text(), 10)


def test_a_key_bound_to_names_cannot_pose_as_another_client(keyed):
    monitor_key = keyed.path.parent / "keys" / "clients" / "monitor.key_secret"
    with client(keyed, "bias", key=str(monitor_key)) as impostor:
        with pytest.raises(RequestFailed) as refused:
            impostor.connect(5)
        assert refused.value.code == "not_allowed" and "may register only monitor*" in str(refused.value)
    with client(keyed, "monitor-2", key=str(monitor_key)) as allowed:
        allowed.connect(10)
        assert allowed.registered


def test_a_forged_beacon_leads_a_client_to_no_server(keyed, tmp_path):
    """A rogue server announces itself for the experiment; the client goes to look, insists on CURVE, and tells it
    nothing.

    The rogue takes plain connections, so a client that skipped CURVE would hand it its `_hello` in the clear.
    """
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.ROUTER)
    rogue.setsockopt(zmq.LINGER, 0)
    port = rogue.bind_to_random_port("tcp://127.0.0.1")
    monitor = rogue.get_monitor_socket()
    router = f"tcp://127.0.0.1:{port}"
    keyed.stop()
    beacon = discovery.BeaconSender("127.255.255.255", keyed.beacon_port,
                                    protocol.make_beacon("keyed", "rogue", router, router, 1, 0.0))
    seen = set()

    def rogue_saw_a_handshake():
        while monitor.poll(0):
            seen.add(zmq.utils.monitor.recv_monitor_message(monitor)["event"])
        return seen & {zmq.EVENT_HANDSHAKE_SUCCEEDED, *HANDSHAKE_FAILED}

    try:
        with client(keyed, "lta1") as victim:
            wait_until(lambda: beacon.send() or victim.poll(0.1) * 0 or rogue_saw_a_handshake(), 20, 0,
                       what="the client to come to the announced address")
            assert victim.router == router   # it went where the beacon said
            assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen and seen & HANDSHAKE_FAILED
            with pytest.raises((RequestFailed, ServerUnavailable)):
                victim.connect(1)
            assert rogue.poll(200) == 0  # not one message got through to the rogue
    finally:
        beacon.close()
        rogue.disable_monitor()
        monitor.close()
        rogue.close()


def test_the_run_controller_hands_each_program_its_key(keyed):
    controller = ControllerProcess(keyed.path).start()
    try:
        with client(keyed, "op") as op:
            op.connect(10)
            wait_until(lambda: {"run", "lta1", "monitor"} <= {c["name"] for c in op.request(None, "_list")}, 30, 0.2,
                       what="the controller and its programs, each with its own key")
            status = op.request("run", "status", timeout=10)["programs"]
            assert status["lta1"]["registered"] and status["monitor"]["registered"]
    finally:
        assert controller.stop() == 0


@pytest.fixture
def limited(tmp_path):
    server = ServerProcess(write_experiment(tmp_path, "limited", client_rate=2000)).start()
    yield server
    server.stop()


class Flood:
    """A thread sending `data` on `sock` as fast as it goes, until `stop()` (FLOOD_LIMIT_S at most); a full
    queue makes it wait a millisecond, never block."""

    def __init__(self, sock, data):
        self.sent = 0
        self.started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sock, data), daemon=True)
        self._thread.start()
        wait_until(lambda: self.sent > 5000, 10, 0.01, what="the flood to be on")

    def _run(self, sock, data):
        deadline = self.started + FLOOD_LIMIT_S
        while not self._done.is_set() and time.monotonic() < deadline:
            try:
                sock.send(data, zmq.NOBLOCK)
                self.sent += 1
            except zmq.Again:
                self._done.wait(0.001)

    def stop(self):
        """Stop it; the messages it sent."""
        self._done.set()
        self._thread.join(10)
        return self.sent


def requests_during(raw, count):
    """`count` echo requests of `raw`, one after the other, all within SERVED_WITHIN_S: the numbers answered."""
    deadline = time.monotonic() + SERVED_WITHIN_S
    answers = [raw.request({"to": "echo", "cmd": "echo", "n": i}, max(0.1, deadline - time.monotonic()))
               for i in range(count)]
    return [a["result"]["n"] for a in answers if a["ok"]]


def test_a_flooding_client_is_throttled_and_the_others_are_served_during_the_flood(limited, tmp_path):
    echo = start_program("echo_client.py", "echo", "--experiment", limited.path, log=tmp_path / "echo.log")
    watcher = EventWatcher(limited.events, "event.client_throttled")
    quiet, flooder = RawClient(limited.router), RawClient(limited.router)
    try:
        quiet.hello("quiet")
        wait_until(lambda: "echo" in [c["name"] for c in quiet.request({"cmd": "_list"})["result"]], 15, 0.1)
        flooder.hello("flood")
        flood = Flood(flooder.sock, protocol.encode({"to": "echo", "cmd": "note", "seq": 0}))
        try:
            answered = requests_during(quiet, 50)
        finally:
            sent = flood.stop()
        assert answered == list(range(50))  # each answered, in order, while the flood went on
        told = flooder.recv_until(lambda m: m.get("code") == "throttled", 10)
        assert "more than 2000 messages/s" in told["error"]
        event = watcher.wait_for("event.client_throttled", name="flood")
        assert event["dropped"] > 0
        notes = quiet.request({"to": "echo", "cmd": "notes"}, 30)["result"]
        assert 0 < len(notes) < sent  # the excess was dropped, the rest delivered
    finally:
        watcher.close()
        quiet.close()
        flooder.close()
        stop_process(echo)


def run_tool(*args, env=None):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env or env_for_children(),
                          capture_output=True, text=True, timeout=60)


def test_send_and_status_use_the_operator_key_on_a_curve_bus(keyed):
    sent = run_tool("send.py", "--experiment", keyed.path, "server", "_status")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["experiment"] == "keyed"
    snap = run_tool("status.py", "--experiment", keyed.path, "--json")
    assert snap.returncode == 0, snap.stderr
    assert json.loads(snap.stdout)["server"]["experiment"] == "keyed"
    keys = keyed.path.parent / "keys"
    env = {**env_for_children(), "ORBIT_KEY": str(keys / "clients" / "operator.key_secret"),
           "ORBIT_SERVER_KEY": str(keys / "server.key")}
    by_address = run_tool("send.py", "--server", keyed.router, "server", "_status", env=env)
    assert by_address.returncode == 0, by_address.stderr
    keyless = run_tool("send.py", "--server", keyed.router, "--connect-timeout", "2", "server", "_status")
    assert keyless.returncode != 0 and "experiment" not in keyless.stdout  # no key, no answer


def test_a_forged_reply_just_after_a_restart_is_refused(tmp_path):
    server = ServerProcess(write_experiment(tmp_path, "fresh")).start()  # uptime: a fraction of a second
    asker, victim, thief = (RawClient(server.router) for _ in range(3))
    try:
        asker.hello("asker")
        victim.hello("victim")
        thief.hello("thief")
        assert asker.request({"cmd": "_status"})["result"]["settling"]  # still in the window after a start
        asker.send({"to": "victim", "cmd": "balance", "id": "b1"})
        victim.recv_until(lambda m: m.get("id") == "b1")
        thief.send({"to": "asker", "cmd": "_reply", "re": "b1", "ok": True, "result": "forged"})
        refusal = thief.recv_until(lambda m: m.get("cmd") == "_error")
        assert refusal["code"] == "not_allowed"
        victim.send({"to": "asker", "cmd": "_reply", "re": "b1", "ok": True, "result": "real"})
        answers = [m for m in asker.until_pong() if m.get("re") == "b1"]
        if not answers:
            answers = [asker.recv_until(lambda m: m.get("re") == "b1")]
        assert [(a["from"], a["result"]) for a in answers] == [("victim", "real")]
    finally:
        for raw in (asker, victim, thief):
            raw.close()
        assert server.stop() == 0


def errors_before_a_pong(raw, timeout_s=30.0):
    """The errors the server sent `raw` before it answered a ping of now: every message it sent earlier has come
    (pings are sent again until one is answered, as an unregistered connection's budget may drop some)."""
    errors, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw.send({"cmd": "_ping", "id": "after"})
        while raw.sock.poll(200):
            msg = json.loads(raw.sock.recv())
            if msg.get("cmd") == "_pong":
                return errors
            errors.append(msg)
    raise AssertionError(f"no pong within {timeout_s} s")


def anonymous_events(raw):
    return [e for e in raw.request({"cmd": "_logs", "n": 1000}, 10)["result"] if e["kind"] == "anonymous_throttled"]


def test_an_unregistered_flood_is_dropped_unread_while_registered_clients_are_served(server, echo):
    quiet, flooder = RawClient(server.router), RawClient(server.router)
    try:
        quiet.hello("quiet")
        flood = Flood(flooder.sock, b"\xff not json")  # never registers
        try:
            answered = requests_during(quiet, 30)
        finally:
            sent = flood.stop()
        assert answered == list(range(30))
        errors = errors_before_a_pong(flooder)
        told_for_s = time.monotonic() - flood.started
        assert {e["code"] for e in errors} == {"bad_json"}
        assert 0 < len(errors) <= 5 + 3 * told_for_s < sent  # told a few times a second, not once per frame
        event = wait_until(lambda: anonymous_events(quiet), 10, 0.2, what="an anonymous_throttled event")[0]
        assert event["dropped"] > 0
        wait_until(lambda: quiet.request({"cmd": "_stats"}, 10)["result"].get("anonymous_dropped", 0) > 0, 5, 0.3,
                   what="the dropped messages in the server's figures")
    finally:
        quiet.close()
        flooder.close()


def test_unregistered_connections_share_one_budget_and_registered_clients_are_served(server, echo):
    """Two hundred connections that never register send 100 pings each at once: each within its own 100 a
    second, all of them together far over the 1,000 a second they share."""
    quiet = RawClient(server.router)
    crowd = [RawClient(server.router) for _ in range(200)]
    total = 100 * len(crowd)
    try:
        quiet.hello("quiet")
        started = time.monotonic()
        for n in range(100):
            for raw in crowd:
                raw.send({"cmd": "_ping", "id": n})
        assert quiet.request({"to": "echo", "cmd": "echo", "n": 1}, 30)["result"] == {"n": 1}
        pongs = [0]

        def all_accounted_for():   # every ping answered or counted as dropped (the figures come once a second)
            for raw in crowd:
                while raw.sock.poll(0):
                    pongs[0] += json.loads(raw.sock.recv())["cmd"] == "_pong"
            dropped = quiet.request({"cmd": "_stats"}, 10)["result"].get("anonymous_dropped", 0)
            return pongs[0] + dropped == total and [dropped]
        dropped = wait_until(all_accounted_for, 60, 0.2, what="an answer or a drop for every ping")[0]
        answered_for_s = time.monotonic() - started
        assert dropped > 0, "no ping was dropped: the connections were not limited together"
        assert pongs[0] <= 1000 * (1 + answered_for_s)   # a burst of 1,000, then 1,000 a second
        assert wait_until(lambda: anonymous_events(quiet), 10, 0.2)[0]["dropped"] > 0
    finally:
        for raw in [quiet, *crowd]:
            raw.close()


HELLO_BURST = 2000   # more than the 1,000 messages a second that strangers share for all but hellos


def waiting(sock):
    """The messages waiting on `sock`, decoded."""
    found = []
    while sock.poll(0):
        found.append(json.loads(sock.recv()))
    return found


def test_a_burst_of_hellos_from_2000_connections_registers_every_one_at_once(server):
    """After a restart every client says hello at once: hellos have a budget as large as the registry
    (server.max_clients a second, 10,000 here), so none is dropped for the budget the rest shares."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, HELLO_BURST + 100)
    quiet = RawClient(server.router)
    crowd = []
    try:
        for _ in range(HELLO_BURST):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)   # writable once connected: then all the hellos go at once
            sock.connect(server.router)
            crowd.append(sock)
        quiet.hello("quiet")
        wait_until(lambda: all(sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT for sock in crowd), 60, 0.1,
                   what=f"{HELLO_BURST} connections")
        for n, sock in enumerate(crowd):
            sock.send(protocol.encode({"cmd": "_hello", "name": f"crowd-{n}", "id": n}))
        welcomed = [0]

        def all_accounted_for():   # every hello welcomed or counted as dropped (the figures come once a second)
            welcomed[0] += sum(msg.get("ok") is True for sock in crowd for msg in waiting(sock))
            dropped = quiet.request({"cmd": "_stats"}, 10)["result"].get("anonymous_dropped", 0)
            return welcomed[0] + dropped == HELLO_BURST and [dropped]
        dropped = wait_until(all_accounted_for, 60, 0.2, what="a welcome or a drop for every hello")[0]
        assert (welcomed[0], dropped) == (HELLO_BURST, 0)
        names = {c["name"] for c in quiet.request({"cmd": "_list"}, 10)["result"]}
        assert names >= {f"crowd-{n}" for n in range(HELLO_BURST)}
    finally:
        quiet.close()
        for sock in crowd:
            sock.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("frame", [b'{"cmd": "_ping", "x": {"cmd": "_hello"}}', b'{"cmd": "_hello", "name": '],
                         ids=["a ping naming _hello inside", "a hello that is no JSON"])
def test_what_only_looks_like_a_hello_is_throttled_with_the_rest_strangers_send(server, echo, frame):
    """Two hundred connections that never register send 20 frames each at once whose bytes name `_hello`: let in
    on the hellos' budget, read, found to be no hello, then charged to the 1,000 a second the rest shares."""
    quiet = RawClient(server.router)
    crowd = [RawClient(server.router) for _ in range(200)]
    try:
        quiet.hello("quiet")
        started = time.monotonic()
        for _ in range(20):
            for raw in crowd:
                raw.send(frame)
        assert quiet.request({"to": "echo", "cmd": "echo", "n": 1}, 30)["result"] == {"n": 1}
        dropped = wait_until(lambda: quiet.request({"cmd": "_stats"}, 10)["result"].get("anonymous_dropped", 0),
                             30, 0.3, what="the frames beyond the budget dropped")
        pongs = sum(msg["cmd"] == "_pong" for raw in crowd for msg in waiting(raw.sock))
        assert dropped > 0 and pongs <= 1000 * (1 + time.monotonic() - started)
    finally:
        for raw in [quiet, *crowd]:
            raw.close()


def test_a_connection_with_a_listed_key_is_no_stranger_before_it_registers(keyed):
    """Twenty connections with the operator's key, not registered, send 150 pings each at once: over what one
    stranger may send (100 a second) and what all strangers share (1,000): every one is answered."""
    keys = keyed.path.parent / "keys"
    server_public, _ = zmq.auth.load_certificate(keys / "server.key")
    operator = zmq.auth.load_certificate(keys / "clients" / "operator.key_secret")
    socks = [bare_dealer(keyed.router, operator, server_public) for _ in range(20)]
    try:
        for n in range(150):
            for sock in socks:
                sock.send(protocol.encode({"cmd": "_ping", "id": n}))
        pongs = [0]

        def all_answered():
            pongs[0] += sum(msg["cmd"] == "_pong" for sock in socks for msg in waiting(sock))
            return pongs[0] == 150 * len(socks)
        wait_until(all_answered, 30, 0.1, what=f"a pong for each of {150 * len(socks)} pings")
        with client(keyed, "op") as op:
            op.connect(10)
            wait_until(lambda: op.request(None, "_stats").get("updated"), 10, 0.2, what="the server's figures")
            assert op.request(None, "_stats")["anonymous_dropped"] == 0
    finally:
        for sock in socks:
            sock.close()


def test_a_storm_of_forged_beacons_never_takes_a_client_off_its_server_and_is_said_every_10_s(server, echo,
                                                                                               make_client, caplog):
    """Without CURVE, and a rogue that even answers pings: the client stays while its own server answers, and
    says how many beacons led nowhere once every 10 s, not once per beacon."""
    client = make_client("steady")
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.ROUTER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue_router = f"tcp://127.0.0.1:{rogue.bind_to_random_port('tcp://127.0.0.1')}"
    received, stop = [], threading.Event()

    def answer_pings():  # bounded by the test's own end
        while not stop.is_set():
            if rogue.poll(50):
                identity, data = rogue.recv_multipart()
                msg = json.loads(data)
                received.append(msg["cmd"])
                if msg["cmd"] == "_ping":
                    rogue.send_multipart([identity, protocol.encode(protocol.make_pong(msg.get("id")))])
    thread = threading.Thread(target=answer_pings, daemon=True)
    thread.start()
    sender = discovery.BeaconSender("127.255.255.255", server.beacon_port, b"")

    def said():
        return [r for r in caplog.records if "beacon(s) that led nowhere" in r.getMessage()]
    try:
        answers, deadline, n = [], time.monotonic() + 60, 0
        with caplog.at_level(logging.WARNING, logger="runcontrol.client.client"):
            while len(said()) < 2 and time.monotonic() < deadline and n < 1200:  # a forged instance every 50 ms
                sender.payload = protocol.make_beacon(server.name, f"forged{n}", rogue_router, rogue_router, 1, 0.0)
                sender.send()
                answers.append(client.request("echo", "echo", timeout=10, n=n)["n"])
                client.poll(0.05)
                n += 1
        assert answers == list(range(n))  # every request answered, none failed
        assert client.router == server.router and client.instance == server.beacon.instance
        assert "_hello" not in received  # the rogue was pinged at most, never told who we are
        assert len(said()) >= 2, f"{len(said())} line(s) of ignored beacons after {n} beacons"
        first, second = said()[:2]
        assert "ignored 1 beacon(s)" in first.getMessage()   # the first at once
        assert second.created - first.created >= 10   # then every 10 s, with what led nowhere meanwhile
        assert int(second.getMessage().split()[1]) > 1
    finally:
        stop.set()
        thread.join(5)
        sender.close()
        rogue.close()


def test_an_insecure_bus_and_gateway_are_warned_of_at_every_start(tmp_path):
    server = ServerProcess(write_experiment(tmp_path, "open", insecure=True,
                                            legacy={"port": free_port(), "insecure": True}))
    for starts in (1, 2):
        server.start()
        assert server.stop() == 0
        output = server.log.read_text()
        assert output.count("INSECURE: the bus has no keys (server.insecure is set)") == starts, output
        assert output.count("INSECURE: the libABCD gateway") == starts, output
