"""CURVE on the bus: known keys get in, nobody else does, keys bound to names, a forged beacon goes nowhere."""

import json
import subprocess
import sys

import pytest
import zmq
import zmq.auth

from clients.client import Client
from runcontrol import protocol
from runcontrol.bus import discovery
from runcontrol.errors import RequestFailed, ServerUnavailable
from tests.helpers import (ROOT, ControllerProcess, ServerProcess, env_for_children, free_beacon_port, helper,
                           wait_until)


@pytest.fixture
def keyed(tmp_path):
    """A server with CURVE: keys made by runcontrol.keys; the key `monitor` may register only monitor*."""
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
    made = subprocess.run([sys.executable, "-m", "runcontrol.keys", str(path)], cwd=ROOT, env=env_for_children(),
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
    """A rogue server announces itself for the experiment; a client that insists on CURVE tells it nothing.

    The rogue takes plain connections, so a client that skipped CURVE would hand it its `_hello` in the clear.
    """
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.ROUTER)
    rogue.setsockopt(zmq.LINGER, 0)
    port = rogue.bind_to_random_port("tcp://127.0.0.1")
    router = f"tcp://127.0.0.1:{port}"
    keyed.stop()
    beacon = discovery.BeaconSender("127.255.255.255", keyed.beacon_port,
                                    protocol.make_beacon("keyed", "rogue", router, router, 1, 0.0))
    try:
        with client(keyed, "lta1") as victim:
            for _ in range(20):
                beacon.send()
                victim.poll(0.1)
            with pytest.raises((RequestFailed, ServerUnavailable)):
                victim.connect(1)
            assert rogue.poll(200) == 0  # not one message got through to the rogue
    finally:
        beacon.close()
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
    from tests.helpers import write_experiment
    server = ServerProcess(write_experiment(tmp_path, "limited", client_rate=2000)).start()
    yield server
    server.stop()


def test_a_flooding_client_is_throttled_and_the_others_are_served_during_the_flood(limited, tmp_path):
    import threading
    import time
    from tests.helpers import EventWatcher, RawClient, start_program, stop_process
    echo = start_program("echo_client.py", "echo", "--experiment", limited.path, log=tmp_path / "echo.log")
    watcher = EventWatcher(limited.events, "event.client_throttled")
    quiet, flooder = RawClient(limited.router), None
    try:
        quiet.hello("quiet")
        wait_until(lambda: "echo" in [c["name"] for c in quiet.request({"cmd": "_list"})["result"]], 15, 0.1)
        flooder = RawClient(limited.router)
        flooder.hello("flood")
        note = protocol.encode({"to": "echo", "cmd": "note", "seq": 0})
        measured = threading.Event()
        sent = [0]

        def flood():  # until the others' requests are done; bounded in count and time
            deadline = time.monotonic() + 30
            while not measured.is_set() and sent[0] < 400000 and time.monotonic() < deadline:
                flooder.sock.send(note)
                sent[0] += 1
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        wait_until(lambda: sent[0] > 5000, 10, 0.01)  # the flood is on
        answers = [quiet.request({"to": "echo", "cmd": "echo", "n": i}, 10) for i in range(50)]
        still_flooding = thread.is_alive()
        measured.set()
        thread.join(60)
        assert still_flooding, "the flood ended before the other client's requests were answered"
        assert [a["result"]["n"] for a in answers if a["ok"]] == list(range(50))  # each answered, in order
        told = flooder.recv_until(lambda m: m.get("code") == "throttled", 10)
        assert "more than 2000 messages/s" in told["error"]
        event = watcher.wait_for("event.client_throttled", name="flood")
        assert event["dropped"] > 0
        notes = quiet.request({"to": "echo", "cmd": "notes"}, 10)["result"]
        assert 0 < len(notes) < sent[0]  # the excess was dropped, the rest delivered
    finally:
        watcher.close()
        quiet.close()
        if flooder is not None:
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
    from tests.helpers import RawClient, write_experiment
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


def test_an_unregistered_flood_is_dropped_unread_while_registered_clients_are_served(server, echo):
    import threading
    import time
    from tests.helpers import EventWatcher, RawClient
    watcher = EventWatcher(server.events, "event.").sync(server.router)
    quiet, flooder = RawClient(server.router), RawClient(server.router)
    try:
        quiet.hello("quiet")
        done, sent = threading.Event(), [0]

        def flood():  # never registers; bounded in count and time
            deadline = time.monotonic() + 20
            while not done.is_set() and sent[0] < 300000 and time.monotonic() < deadline:
                flooder.sock.send(b"\xff not json")
                sent[0] += 1
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        wait_until(lambda: sent[0] > 5000, 10, 0.01)
        answers = [quiet.request({"to": "echo", "cmd": "echo", "n": i}, 10) for i in range(30)]
        still = thread.is_alive()
        done.set()
        thread.join(30)
        assert still, "the flood ended before the requests were answered"
        assert [a["result"]["n"] for a in answers] == list(range(30))
        event = watcher.wait_for("event.anonymous_throttled")
        assert event["dropped"] > 0
        errors = []
        while flooder.sock.poll(500):
            errors.append(flooder.sock.recv())
        assert 0 < len(errors) < 100 < sent[0]  # told, a few times a second, not once per frame
        wait_until(lambda: quiet.request({"cmd": "_stats"}, 10)["result"]["anonymous_dropped"] > 0, 5, 0.3,
                   what="the dropped messages in the server's figures")
    finally:
        watcher.close()
        quiet.close()
        flooder.close()


def test_a_storm_of_forged_beacons_never_takes_a_client_off_its_server(server, echo, make_client):
    """Without CURVE, and a rogue that even answers pings: the client stays while its own server answers."""
    import threading
    import time
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
    try:
        answers, deadline, n = [], time.monotonic() + 6, 0
        while time.monotonic() < deadline and n < 400:  # a new forged instance every 50 ms, a request each time
            sender.payload = protocol.make_beacon(server.name, f"forged{n}", rogue_router, rogue_router, 1, 0.0)
            sender.send()
            answers.append(client.request("echo", "echo", timeout=10, n=n)["n"])
            n += 1
        assert answers == list(range(n))  # every request answered, none failed
        assert client.router == server.router and client.instance == server.beacon.instance
        assert "_hello" not in received  # the rogue was pinged at most, never told who we are
    finally:
        stop.set()
        thread.join(5)
        sender.close()
        rogue.close()
